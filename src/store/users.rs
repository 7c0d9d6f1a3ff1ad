use sqlx::{AssertSqlSafe, types::time::OffsetDateTime};

use super::{Store, StoreResult, on_pool};
use crate::domain::{User, UserId};

const USER_COLUMNS: &str = "id, google_id, name, avatar_url, email, last_seen_at";

/// Who signs in: the stable id from the identity provider plus what it tells about them.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub google_id: &'a str,
    /// `None` keeps the name already stored; a new user without one is named `User <id>`.
    pub name: Option<&'a str>,
    pub avatar_url: Option<&'a str>,
    pub email: Option<&'a str>,
}

/// The name of a user who gave none: their id is all that is public about them.
fn unnamed_user(id: UserId) -> String {
    format!("User {id}")
}

impl Store {
    /// Creates the user on first sign-in, and refreshes avatar, email and (when given) name on every
    /// later one.
    pub async fn upsert_user(&self, identity: &Identity<'_>) -> StoreResult<User> {
        // Without a name, a new row holds '' (no real name is blank) until its id names it, in the same
        // transaction, so no reader ever sees the placeholder.
        let upsert = format!(
            "INSERT INTO users (google_id, name, avatar_url, email) VALUES ($1, COALESCE($2, ''), $3, $4) \
             ON CONFLICT (google_id) DO UPDATE SET name = COALESCE($2, users.name), \
             avatar_url = excluded.avatar_url, email = excluded.email \
             RETURNING {USER_COLUMNS}"
        );
        let name_by_id =
            format!("UPDATE users SET name = $2 WHERE id = $1 RETURNING {USER_COLUMNS}");
        on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let mut user = sqlx::query_as::<_, User>(AssertSqlSafe(upsert.as_str()))
                .bind(identity.google_id)
                .bind(identity.name)
                .bind(identity.avatar_url)
                .bind(identity.email)
                .fetch_one(&mut *tx)
                .await?;
            if user.name.is_empty() {
                user = sqlx::query_as::<_, User>(AssertSqlSafe(name_by_id.as_str()))
                    .bind(user.id)
                    .bind(unnamed_user(user.id))
                    .fetch_one(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(user)
        })
    }

    pub async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let user = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, User>(AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(user)
    }

    pub async fn users(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let users = match self {
            Store::Postgres(pool) => {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1)");
                sqlx::query_as::<_, User>(AssertSqlSafe(sql.as_str()))
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
            }
            Store::Sqlite { reader, .. } => {
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id IN (SELECT value FROM json_each($1))"
                );
                sqlx::query_as::<_, User>(AssertSqlSafe(sql.as_str()))
                    .bind(json_array(ids))
                    .fetch_all(reader)
                    .await?
            }
        };
        Ok(users)
    }

    pub async fn user_exists(&self, id: UserId) -> StoreResult<bool> {
        let sql = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)";
        let exists = on_pool!(self, read, |pool| {
            sqlx::query_scalar::<_, bool>(sql)
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        Ok(exists)
    }

    /// Users whose name contains `query` (case-insensitive), by name.
    pub async fn search_users(&self, query: &str, limit: u32) -> StoreResult<Vec<User>> {
        let pattern = format!("%{}%", escape_like(&query.to_lowercase()));
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE lower(name) LIKE $1 ESCAPE '\\' \
             ORDER BY lower(name), id LIMIT $2"
        );
        let users = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, User>(AssertSqlSafe(sql.as_str()))
                .bind(&pattern)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(users)
    }

    /// Stores one `last_seen_at` for many users at once.
    pub async fn set_last_seen_many(&self, ids: &[UserId], at: OffsetDateTime) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => {
                sqlx::query("UPDATE users SET last_seen_at = $2 WHERE id = ANY($1)")
                    .bind(ids)
                    .bind(at)
                    .execute(pool)
                    .await?;
            }
            Store::Sqlite { writer, .. } => {
                sqlx::query(
                    "UPDATE users SET last_seen_at = $2 WHERE id IN (SELECT value FROM json_each($1))",
                )
                .bind(json_array(ids))
                .bind(at)
                .execute(writer)
                .await?;
            }
        }
        Ok(())
    }

    /// Everyone `user` has exchanged a message with: the people told when `user` comes and goes.
    pub async fn conversation_peers(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let sql = "SELECT to_id FROM messages WHERE from_id = $1 \
                   UNION SELECT from_id FROM messages WHERE to_id = $1";
        let peers = on_pool!(self, read, |pool| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(user)
                .fetch_all(pool)
                .await?
        });
        Ok(peers)
    }
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// SQLite has no arrays; lists of ids travel as a JSON array read back with `json_each`.
pub(super) fn json_array(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}
