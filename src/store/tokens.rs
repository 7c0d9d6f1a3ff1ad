use std::time::Duration;

use sqlx::types::time::OffsetDateTime;

use super::{Store, StoreResult, on_pool};
use crate::domain::{SessionId, UserId};

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

/// A refresh-token family: one session of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub user_id: UserId,
    pub family_id: SessionId,
}

/// What presenting a refresh token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live; it is now spent and its successor is stored in its family.
    Rotated(Family),
    /// The token was spent less than the reuse grace ago, most likely by another tab refreshing at
    /// the same moment: a sibling successor is stored in the same family.
    WithinGrace(Family),
    /// Nothing matches the token.
    Unknown,
    Expired,
    /// The token was already spent or revoked: its whole family (this one) is now revoked.
    Reused(Family),
}

/// What an access token's user and session come to, read in one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    /// The user was deleted.
    UnknownUser,
    /// The session was revoked (logout, reuse, `admin kick --revoke`), or is not the user's.
    Ended,
}

/// What `revoke_user_refresh_tokens` revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSessions {
    pub tokens: u64,
    /// The families that had a token left to revoke, each once.
    pub families: Vec<SessionId>,
}

/// A new token to store: its hash, family and lifetime.
#[derive(Debug, Clone)]
pub struct NewRefreshToken<'a> {
    pub hash: &'a str,
    pub family_id: &'a str,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
}

/// The token that is presented, and whether any token of its family has been revoked.
#[derive(Debug, sqlx::FromRow)]
struct PresentedToken {
    #[sqlx(flatten)]
    record: RefreshTokenRecord,
    family_revoked: bool,
}

/// What a token that could not be spent deserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Expired,
    WithinGrace,
    Theft,
}

impl PresentedToken {
    fn verdict(&self, now: OffsetDateTime, reuse_grace: Duration) -> Verdict {
        let token = &self.record;
        if token.revoked_at.is_some() || self.family_revoked {
            return Verdict::Theft;
        }
        match token.spent_at {
            Some(spent_at) if !reuse_grace.is_zero() && now < spent_at + reuse_grace => {
                Verdict::WithinGrace
            }
            Some(_) => Verdict::Theft,
            // Live, unspent and not revoked, yet the spend did not take it: only expiry refuses that.
            None => Verdict::Expired,
        }
    }
}

const INSERT_TOKEN: &str = "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)";

const REVOKE_FAMILY: &str =
    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL";

/// A family is dead once any of its tokens is revoked: every revocation covers the whole family, and
/// a token stored while a revocation ran (PostgreSQL's READ COMMITTED lets one slip past the revoking
/// UPDATE) must not outlive it.
const FAMILY_REVOKED: &str = "EXISTS (SELECT 1 FROM refresh_tokens AS kin WHERE kin.family_id = refresh_tokens.family_id \
     AND kin.revoked_at IS NOT NULL)";

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

    /// Spends the token whose hash is `old_hash` and stores `successor_hash` in the same family, in one
    /// transaction. A token presented again within `reuse_grace` of being spent stores
    /// `successor_hash` as a sibling instead (two tabs refreshing at once); later, or when it was
    /// revoked, it revokes its family (someone else has a copy).
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        successor_hash: &str,
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
        reuse_grace: Duration,
    ) -> StoreResult<Rotation> {
        // Spending comes first and is conditional, so that of two presentations at once exactly one
        // spends the token (PostgreSQL makes the second wait for the first's row lock and then finds
        // it spent; SQLite's single writer runs them one after the other), and the other is judged
        // on what the first committed instead of on a stale read.
        let spend = format!(
            "UPDATE refresh_tokens SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL \
             AND revoked_at IS NULL AND NOT {FAMILY_REVOKED} RETURNING family_id, user_id, expires_at"
        );
        let presented = format!(
            "SELECT id, family_id, user_id, expires_at, spent_at, revoked_at, \
             {FAMILY_REVOKED} AS family_revoked FROM refresh_tokens WHERE token_hash = $1"
        );
        let sibling = format!(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) \
             SELECT $1, family_id, user_id, $3 FROM refresh_tokens WHERE id = $2 AND NOT {FAMILY_REVOKED}"
        );
        on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let spent: Option<(String, UserId, OffsetDateTime)> =
                sqlx::query_as(sqlx::AssertSqlSafe(spend.as_str()))
                    .bind(old_hash)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((family_id, user_id, expires_at)) = spent {
                // Expiry is judged here rather than in SQL: SQLite compares timestamps as text,
                // which misorders instants within the same second.
                if expires_at <= now {
                    tx.rollback().await?;
                    return Ok(Rotation::Expired);
                }
                sqlx::query(INSERT_TOKEN)
                    .bind(successor_hash)
                    .bind(&family_id)
                    .bind(user_id)
                    .bind(successor_expires_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Rotation::Rotated(Family {
                    user_id,
                    family_id: family_id.into(),
                }));
            }

            let token: Option<PresentedToken> =
                sqlx::query_as(sqlx::AssertSqlSafe(presented.as_str()))
                    .bind(old_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(token) = token else {
                return Ok(Rotation::Unknown);
            };
            let family = Family {
                user_id: token.record.user_id,
                family_id: token.record.family_id.as_str().into(),
            };
            let outcome = match token.verdict(now, reuse_grace) {
                Verdict::Expired => Rotation::Expired,
                Verdict::WithinGrace => {
                    let stored = sqlx::query(sqlx::AssertSqlSafe(sibling.as_str()))
                        .bind(successor_hash)
                        .bind(token.record.id)
                        .bind(successor_expires_at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if stored == 1 {
                        Rotation::WithinGrace(family)
                    } else {
                        // The family was revoked since the read above: that revocation stands.
                        Rotation::Reused(family)
                    }
                }
                Verdict::Theft => {
                    sqlx::query(REVOKE_FAMILY)
                        .bind(&token.record.family_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    Rotation::Reused(family)
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Revokes the whole family of the token whose hash is `hash`, spent or not: the session it
    /// belongs to ends. Answers that family, revoked now or before, or `None` for a token it does
    /// not know.
    pub async fn revoke_refresh_family(
        &self,
        hash: &str,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Family>> {
        // A token's family never changes, so reading it first needs no transaction.
        let family_of = "SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1";
        on_pool!(self, write, |pool| {
            let family: Option<(UserId, String)> = sqlx::query_as(family_of)
                .bind(hash)
                .fetch_optional(pool)
                .await?;
            let Some((user_id, family_id)) = family else {
                return Ok(None);
            };
            sqlx::query(REVOKE_FAMILY)
                .bind(&family_id)
                .bind(now)
                .execute(pool)
                .await?;
            Ok(Some(Family {
                user_id,
                family_id: family_id.into(),
            }))
        })
    }

    /// Revokes every refresh token `user` holds, spent ones too (within the reuse grace a spent one
    /// still answers): each of their sessions ends (`teachlyd admin kick --revoke`). Answers how many
    /// tokens it revoked, and their families.
    pub async fn revoke_user_refresh_tokens(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> StoreResult<RevokedSessions> {
        let sql = "UPDATE refresh_tokens SET revoked_at = $2 \
                   WHERE user_id = $1 AND revoked_at IS NULL RETURNING family_id";
        let mut families: Vec<String> = on_pool!(self, write, |pool| {
            sqlx::query_scalar(sql)
                .bind(user)
                .bind(now)
                .fetch_all(pool)
                .await?
        });
        let tokens = families.len() as u64;
        families.sort_unstable();
        families.dedup();
        Ok(RevokedSessions {
            tokens,
            families: families.into_iter().map(SessionId::from).collect(),
        })
    }

    /// Whether an access token of `family` still speaks for `user`: the user exists and the
    /// session is theirs and not revoked. One query, the one `authenticate` already made for the
    /// user, so refusing a signed-out session's tokens costs no extra round trip.
    pub async fn session_state(
        &self,
        user: UserId,
        family: &SessionId,
    ) -> StoreResult<SessionState> {
        let sql = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1), \
                   EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $2 AND user_id = $1) \
                   AND NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $2 \
                   AND revoked_at IS NOT NULL)";
        let (user_exists, live): (bool, bool) = on_pool!(self, read, |pool| {
            sqlx::query_as(sql)
                .bind(user)
                .bind(family.as_str())
                .fetch_one(pool)
                .await?
        });
        Ok(match (user_exists, live) {
            (false, _) => SessionState::UnknownUser,
            (true, false) => SessionState::Ended,
            (true, true) => SessionState::Live,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    fn presented(
        now: OffsetDateTime,
        spent_ago: Option<u64>,
        revoked: bool,
        family_revoked: bool,
    ) -> PresentedToken {
        PresentedToken {
            record: RefreshTokenRecord {
                id: 1,
                family_id: "f".into(),
                user_id: 7,
                expires_at: now - Duration::from_secs(1),
                spent_at: spent_ago.map(|secs| now - Duration::from_secs(secs)),
                revoked_at: revoked.then_some(now),
            },
            family_revoked,
        }
    }

    #[test]
    fn a_spent_token_is_forgiven_only_within_the_grace_of_a_live_family() {
        let now = crate::domain::now();
        let verdict = |token: PresentedToken, grace| token.verdict(now, grace);
        assert_eq!(
            verdict(presented(now, Some(1), false, false), GRACE),
            Verdict::WithinGrace
        );
        assert_eq!(
            verdict(presented(now, Some(6), false, false), GRACE),
            Verdict::Theft
        );
        assert_eq!(
            verdict(presented(now, Some(5), false, false), GRACE),
            Verdict::Theft
        );
        assert_eq!(
            verdict(presented(now, Some(0), false, false), Duration::ZERO),
            Verdict::Theft,
            "0s is no grace at all"
        );
        assert_eq!(
            verdict(presented(now, Some(1), true, true), GRACE),
            Verdict::Theft
        );
        assert_eq!(
            verdict(presented(now, Some(1), false, true), GRACE),
            Verdict::Theft,
            "a revoked session mints nothing"
        );
        assert_eq!(
            verdict(presented(now, None, true, true), GRACE),
            Verdict::Theft
        );
        assert_eq!(
            verdict(presented(now, None, false, false), GRACE),
            Verdict::Expired
        );
    }
}
