use sqlx::types::time::OffsetDateTime;

use super::{Store, StoreResult, on_pool};
use crate::domain::UserId;

/// A refresh token as stored: only its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshTokenRecord {
    pub id: i64,
    pub family_id: String,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
    pub spent_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// What presenting a refresh token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live; it is now spent and its successor is stored.
    Rotated {
        user_id: UserId,
    },
    /// Nothing matches the token.
    Unknown,
    Expired,
    /// The token was already spent or revoked: its whole family is now revoked.
    Reused,
}

/// A new token to store: its hash, family and lifetime.
#[derive(Debug, Clone)]
pub struct NewRefreshToken<'a> {
    pub hash: &'a str,
    pub family_id: &'a str,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
}

const INSERT_TOKEN: &str = "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)";

impl Store {
    pub async fn insert_refresh_token(&self, token: &NewRefreshToken<'_>) -> StoreResult<()> {
        on_pool!(self, write, |pool| {
            sqlx::query(INSERT_TOKEN)
                .bind(token.hash)
                .bind(token.family_id)
                .bind(token.user_id)
                .bind(token.expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Spends the token whose hash is `old_hash` and stores `successor` in the same family, in one
    /// transaction. A token presented twice revokes its family (someone else has a copy).
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        successor_hash: &str,
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Rotation> {
        on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let record: Option<RefreshTokenRecord> = sqlx::query_as(
                "SELECT id, family_id, user_id, expires_at, spent_at, revoked_at \
                 FROM refresh_tokens WHERE token_hash = $1",
            )
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(record) = record else {
                return Ok(Rotation::Unknown);
            };
            let reused = record.spent_at.is_some() || record.revoked_at.is_some();
            let spent_now = !reused
                && record.expires_at > now
                && sqlx::query(
                    "UPDATE refresh_tokens SET spent_at = $2 WHERE id = $1 AND spent_at IS NULL \
                     AND revoked_at IS NULL",
                )
                .bind(record.id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
            let outcome = if spent_now {
                sqlx::query(INSERT_TOKEN)
                    .bind(successor_hash)
                    .bind(&record.family_id)
                    .bind(record.user_id)
                    .bind(successor_expires_at)
                    .execute(&mut *tx)
                    .await?;
                Rotation::Rotated {
                    user_id: record.user_id,
                }
            } else if record.expires_at <= now && !reused {
                Rotation::Expired
            } else {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                )
                .bind(&record.family_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Rotation::Reused
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Revokes one token (logout). Answers whether a live token was revoked.
    pub async fn revoke_refresh_token(&self, hash: &str, now: OffsetDateTime) -> StoreResult<bool> {
        let sql = "UPDATE refresh_tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL";
        let revoked = on_pool!(self, write, |pool| {
            sqlx::query(sql)
                .bind(hash)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(revoked == 1)
    }
}
