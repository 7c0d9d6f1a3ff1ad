use sqlx::{AssertSqlSafe, types::time::OffsetDateTime};

use super::{Store, StoreResult, on_pool, users::json_array};
use crate::domain::{Message, MessageId, NewMessage, Receipt, Stored, User, UserId};

const MESSAGE_COLUMNS: &str =
    "id, from_id, to_id, content, timestamp, delivered_at, seen_at, client_id";

/// One page of a conversation, newest first; `next_before` continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub next_before: Option<MessageId>,
}

/// One line of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub peer: User,
    pub last_message: Message,
    pub unread: i64,
}

#[derive(sqlx::FromRow)]
struct ConversationRow {
    #[sqlx(flatten)]
    last_message: Message,
    peer_id: i64,
    peer_google_id: String,
    peer_name: String,
    peer_avatar_url: Option<String>,
    peer_email: Option<String>,
    peer_last_seen_at: Option<OffsetDateTime>,
    unread: i64,
}

impl Store {
    /// Commits a batch of messages in one transaction. A `(from_id, client_id)` already stored is not an
    /// error: its slot in the answer carries the stored row with `created: false`. The caller makes sure
    /// every recipient exists and that no key appears twice in one batch.
    pub async fn insert_messages(&self, batch: &[NewMessage]) -> StoreResult<Vec<Stored>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let inserted_ids = match self {
            Store::Postgres(pool) => insert_postgres(pool, batch).await?,
            Store::Sqlite { writer, .. } => insert_sqlite(writer, batch).await?,
        };
        let mut outcome = Vec::with_capacity(batch.len());
        for (new, id) in batch.iter().zip(inserted_ids) {
            let stored = match id {
                Some(id) => Stored {
                    message: Message {
                        id,
                        from_id: new.from_id,
                        to_id: new.to_id,
                        content: new.content.clone(),
                        timestamp: new.timestamp,
                        delivered_at: None,
                        seen_at: None,
                        client_id: new.client_id.clone(),
                    },
                    created: true,
                },
                None => {
                    let client_id = new.client_id.as_deref().unwrap_or_default();
                    let message = self
                        .message_by_client_id(new.from_id, client_id)
                        .await?
                        .ok_or(super::StoreError::NotFound)?;
                    Stored {
                        message,
                        created: false,
                    }
                }
            };
            outcome.push(stored);
        }
        Ok(outcome)
    }

    pub async fn message_by_client_id(
        &self,
        from_id: UserId,
        client_id: &str,
    ) -> StoreResult<Option<Message>> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE from_id = $1 AND client_id = $2");
        // WAL readers see every committed row, so the read pool serves retries without queueing behind
        // the writer's batches.
        let message = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, Message>(AssertSqlSafe(sql.as_str()))
                .bind(from_id)
                .bind(client_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(message)
    }

    pub async fn message(&self, id: MessageId) -> StoreResult<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        let message = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, Message>(AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(message)
    }

    /// Messages to `to_id` not yet delivered, oldest first, after `after_id`.
    pub async fn undelivered(
        &self,
        to_id: UserId,
        after_id: MessageId,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE to_id = $1 AND delivered_at IS NULL AND id > $2 ORDER BY id LIMIT $3"
        );
        let messages = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, Message>(AssertSqlSafe(sql.as_str()))
                .bind(to_id)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(messages)
    }

    /// Sets `delivered_at` on those of `ids` that had none; answers exactly the rows it changed, so each
    /// message's sender hears of its delivery once.
    pub async fn mark_delivered(
        &self,
        ids: &[MessageId],
        at: OffsetDateTime,
    ) -> StoreResult<Vec<Receipt>> {
        let receipts = match self {
            Store::Postgres(pool) => {
                sqlx::query_as::<_, Receipt>(
                    "UPDATE messages SET delivered_at = $2 \
                     WHERE id = ANY($1) AND delivered_at IS NULL RETURNING id, from_id, to_id",
                )
                .bind(ids)
                .bind(at)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite { writer, .. } => {
                sqlx::query_as::<_, Receipt>(
                    "UPDATE messages SET delivered_at = $2 \
                     WHERE id IN (SELECT value FROM json_each($1)) AND delivered_at IS NULL \
                     RETURNING id, from_id, to_id",
                )
                .bind(json_array(ids))
                .bind(at)
                .fetch_all(writer)
                .await?
            }
        };
        Ok(receipts)
    }

    /// `reader` marks one message sent to them as seen; answers the row if it changed.
    pub async fn mark_seen(
        &self,
        reader: UserId,
        id: MessageId,
        at: OffsetDateTime,
    ) -> StoreResult<Option<Receipt>> {
        let sql = "UPDATE messages SET seen_at = $3 \
                   WHERE id = $1 AND to_id = $2 AND seen_at IS NULL RETURNING id, from_id, to_id";
        let receipt = on_pool!(self, write, |pool| {
            sqlx::query_as::<_, Receipt>(sql)
                .bind(id)
                .bind(reader)
                .bind(at)
                .fetch_optional(pool)
                .await?
        });
        Ok(receipt)
    }

    /// `reader` marks every message from `peer` up to `up_to` as seen; answers the rows that changed.
    pub async fn mark_seen_up_to(
        &self,
        reader: UserId,
        peer: UserId,
        up_to: MessageId,
        at: OffsetDateTime,
    ) -> StoreResult<Vec<Receipt>> {
        let sql = "UPDATE messages SET seen_at = $4 \
                   WHERE to_id = $1 AND from_id = $2 AND id <= $3 AND seen_at IS NULL \
                   RETURNING id, from_id, to_id";
        let receipts = on_pool!(self, write, |pool| {
            sqlx::query_as::<_, Receipt>(sql)
                .bind(reader)
                .bind(peer)
                .bind(up_to)
                .bind(at)
                .fetch_all(pool)
                .await?
        });
        Ok(receipts)
    }

    /// The conversation between `a` and `b`, newest first, strictly before `before` when given.
    pub async fn history(
        &self,
        a: UserId,
        b: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<HistoryPage> {
        let (low, high) = (a.min(b), a.max(b));
        let pair = match self {
            Store::Postgres(_) => "LEAST(from_id, to_id) = $1 AND GREATEST(from_id, to_id) = $2",
            Store::Sqlite { .. } => "min(from_id, to_id) = $1 AND max(from_id, to_id) = $2",
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {pair} AND id < $3 ORDER BY id DESC LIMIT $4"
        );
        let fetch = i64::from(limit) + 1;
        let mut messages = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, Message>(AssertSqlSafe(sql.as_str()))
                .bind(low)
                .bind(high)
                .bind(before.unwrap_or(i64::MAX))
                .bind(fetch)
                .fetch_all(pool)
                .await?
        });
        let more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        let next_before = more.then(|| messages.last().map(|m| m.id)).flatten();
        Ok(HistoryPage {
            messages,
            next_before,
        })
    }

    /// Every conversation of `user`, the most recent first, with the last message and the unread count.
    pub async fn conversations(&self, user: UserId) -> StoreResult<Vec<ConversationSummary>> {
        let sql = "WITH latest AS ( \
                 SELECT CASE WHEN from_id = $1 THEN to_id ELSE from_id END AS peer_id, MAX(id) AS last_id \
                 FROM messages WHERE from_id = $1 OR to_id = $1 GROUP BY 1) \
             SELECT m.id, m.from_id, m.to_id, m.content, m.timestamp, m.delivered_at, m.seen_at, \
                 m.client_id, p.id AS peer_id, p.google_id AS peer_google_id, p.name AS peer_name, \
                 p.avatar_url AS peer_avatar_url, p.email AS peer_email, \
                 p.last_seen_at AS peer_last_seen_at, \
                 (SELECT COUNT(*) FROM messages u \
                  WHERE u.to_id = $1 AND u.from_id = latest.peer_id AND u.seen_at IS NULL) AS unread \
             FROM latest JOIN messages m ON m.id = latest.last_id JOIN users p ON p.id = latest.peer_id \
             ORDER BY m.id DESC";
        let rows = on_pool!(self, read, |pool| {
            sqlx::query_as::<_, ConversationRow>(sql)
                .bind(user)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|row| ConversationSummary {
                peer: User {
                    id: row.peer_id,
                    google_id: row.peer_google_id,
                    name: row.peer_name,
                    avatar_url: row.peer_avatar_url,
                    email: row.peer_email,
                    last_seen_at: row.peer_last_seen_at,
                },
                last_message: row.last_message,
                unread: row.unread,
            })
            .collect())
    }
}

/// One statement for the whole batch. Ids are taken from the sequence first so that each row of the
/// answer can be matched to its request, whatever order `RETURNING` uses.
async fn insert_postgres(
    pool: &sqlx::PgPool,
    batch: &[NewMessage],
) -> StoreResult<Vec<Option<MessageId>>> {
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('messages_id_seq') FROM generate_series(1, $1)")
            .bind(batch.len() as i64)
            .fetch_all(pool)
            .await?;
    let from: Vec<i64> = batch.iter().map(|m| m.from_id).collect();
    let to: Vec<i64> = batch.iter().map(|m| m.to_id).collect();
    let content: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
    let timestamps: Vec<OffsetDateTime> = batch.iter().map(|m| m.timestamp).collect();
    let client_ids: Vec<Option<&str>> = batch.iter().map(|m| m.client_id.as_deref()).collect();
    let inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
                              $5::timestamptz[], $6::text[]) \
         ON CONFLICT (from_id, client_id) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&content)
    .bind(&timestamps)
    .bind(&client_ids)
    .fetch_all(pool)
    .await?;
    let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
    Ok(ids
        .into_iter()
        .map(|id| inserted.contains(&id).then_some(id))
        .collect())
}

/// SQLite's one writer runs one prepared statement per row inside a single transaction: the commit
/// (and its fsync) is what the batch shares.
async fn insert_sqlite(
    writer: &sqlx::SqlitePool,
    batch: &[NewMessage],
) -> StoreResult<Vec<Option<MessageId>>> {
    let mut tx = writer.begin().await?;
    let mut ids = Vec::with_capacity(batch.len());
    for message in batch {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO messages (from_id, to_id, content, timestamp, client_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (from_id, client_id) DO NOTHING RETURNING id",
        )
        .bind(message.from_id)
        .bind(message.to_id)
        .bind(&message.content)
        .bind(message.timestamp)
        .bind(message.client_id.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        ids.push(id);
    }
    tx.commit().await?;
    Ok(ids)
}
