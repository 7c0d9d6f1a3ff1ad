use std::{borrow::Borrow, collections::HashSet};

use sqlx::{AssertSqlSafe, types::time::OffsetDateTime};

use super::{Lane, Store, StoreError, StoreResult, on_pool, users::json_array};
use crate::domain::{Message, MessageId, NewMessage, Receipt, User, UserId};

pub(super) const MESSAGE_COLUMNS: &str =
    "id, from_id, to_id, content, timestamp, delivered_at, seen_at, client_id";

/// A message that was just marked seen; `delivered_now` when marking it seen also delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenReceipt {
    pub receipt: Receipt,
    pub delivered_now: bool,
}

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

/// What one group-commit transaction stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The id of each message, in order, or `None` where its `(from_id, client_id)` was stored before.
    pub ids: Vec<Option<MessageId>>,
    /// The messages this transaction marked delivered (those that were not yet).
    pub receipts: Vec<Receipt>,
}

impl Committed {
    /// `ids` were offered for the batch, in order; those not in `inserted` met a stored
    /// `(from_id, client_id)`.
    fn new(ids: Vec<MessageId>, inserted: &HashSet<MessageId>, receipts: Vec<Receipt>) -> Self {
        let ids = ids
            .into_iter()
            .map(|id| inserted.contains(&id).then_some(id))
            .collect();
        Self { ids, receipts }
    }
}

impl Lane {
    /// [`Store::commit`] through the lane's own connection.
    pub async fn commit<M: Borrow<NewMessage>>(
        &mut self,
        batch: &[M],
        delivered: &[MessageId],
        delivered_at: OffsetDateTime,
    ) -> StoreResult<Committed> {
        let Store::Postgres(pool) = &self.store else {
            return self.store.commit(batch, delivered, delivered_at).await;
        };
        if batch.is_empty() && delivered.is_empty() {
            return Ok(Committed::default());
        }
        // Taken out while in use: if the caller gives up halfway, the connection is dropped with
        // the future and goes back to the pool instead of staying held in an unknown state.
        let mut connection = match self.held.take() {
            Some(connection) => connection,
            None => pool.acquire().await?,
        };
        let committed = commit_postgres(&mut connection, batch, delivered, delivered_at).await?;
        self.held = Some(connection);
        Ok(committed)
    }
}

impl Store {
    /// Commits a batch of messages, and marks `delivered` delivered at `delivered_at`, in one
    /// transaction: one commit (one fsync) for both. Answers the id of each message, in order, or
    /// `None` where its `(from_id, client_id)` was already stored (the caller reads that row back),
    /// and exactly the receipts whose row changed. Any other failure fails the whole transaction; the
    /// caller makes sure no key appears twice in one batch.
    pub async fn commit<M: Borrow<NewMessage>>(
        &self,
        batch: &[M],
        delivered: &[MessageId],
        delivered_at: OffsetDateTime,
    ) -> StoreResult<Committed> {
        if batch.is_empty() && delivered.is_empty() {
            return Ok(Committed::default());
        }
        match self {
            Store::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                commit_postgres(&mut connection, batch, delivered, delivered_at).await
            }
            Store::Sqlite { writer, .. } => {
                commit_sqlite(writer, batch, delivered, delivered_at).await
            }
        }
    }

    /// Commits a batch of messages in one transaction (see [`Store::commit`]).
    pub async fn insert_messages<M: Borrow<NewMessage>>(
        &self,
        batch: &[M],
    ) -> StoreResult<Vec<Option<MessageId>>> {
        Ok(self.commit(batch, &[], crate::domain::now()).await?.ids)
    }

    /// Sets `delivered_at` on those of `ids` that had none; answers exactly the rows it changed, so each
    /// message's sender hears of its delivery once.
    pub async fn mark_delivered(
        &self,
        ids: &[MessageId],
        at: OffsetDateTime,
    ) -> StoreResult<Vec<Receipt>> {
        let none: &[NewMessage] = &[];
        Ok(self.commit(none, ids, at).await?.receipts)
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
        // PostgreSQL keeps the queue in a table of its own (migration 0003: no index on `messages`
        // names `delivered_at`); SQLite in a partial index.
        let sql = match self {
            Store::Postgres(_) => "SELECT m.id, m.from_id, m.to_id, m.content, m.timestamp, \
                                          m.delivered_at, m.seen_at, m.client_id \
                                   FROM undelivered u JOIN messages m ON m.id = u.message_id \
                                   WHERE u.to_id = $1 AND u.message_id > $2 AND m.delivered_at IS NULL \
                                   ORDER BY u.message_id LIMIT $3"
                .to_owned(),
            Store::Sqlite { .. } => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE to_id = $1 AND delivered_at IS NULL AND id > $2 ORDER BY id LIMIT $3"
            ),
        };
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

    /// `reader` marks one message sent to them as seen; answers the row if it changed. A message seen
    /// is delivered too: `delivered_at` is set in the same transaction if it was empty.
    pub async fn mark_seen(
        &self,
        reader: UserId,
        id: MessageId,
        at: OffsetDateTime,
    ) -> StoreResult<Option<SeenReceipt>> {
        let receipts = self
            .mark_seen_where("id = $1", reader, id, None, at)
            .await?;
        Ok(receipts.into_iter().next())
    }

    /// `reader` marks every message from `peer` up to `up_to` as seen; answers the rows that changed,
    /// each delivered too if it was not.
    pub async fn mark_seen_up_to(
        &self,
        reader: UserId,
        peer: UserId,
        up_to: MessageId,
        at: OffsetDateTime,
    ) -> StoreResult<Vec<SeenReceipt>> {
        self.mark_seen_where("id <= $1", reader, up_to, Some(peer), at)
            .await
    }

    /// Delivers, then marks seen, the unseen messages to `reader` that `ids` selects (from `peer`
    /// only, when given). Both updates share one transaction, so no receipt batcher delivers a row in
    /// between and the sender hears `message_delivered` once, before `message_seen`.
    async fn mark_seen_where(
        &self,
        ids: &str,
        reader: UserId,
        id: MessageId,
        peer: Option<UserId>,
        at: OffsetDateTime,
    ) -> StoreResult<Vec<SeenReceipt>> {
        let unseen =
            format!("{ids} AND to_id = $2 AND ($3 IS NULL OR from_id = $3) AND seen_at IS NULL");
        let deliver = match self {
            Store::Postgres(_) => format!(
                "WITH delivered AS ( \
                     UPDATE messages SET delivered_at = $4 \
                     WHERE {unseen} AND delivered_at IS NULL RETURNING id, to_id \
                 ), dequeued AS ( \
                     DELETE FROM undelivered u USING delivered d \
                     WHERE u.to_id = d.to_id AND u.message_id = d.id \
                 ) \
                 SELECT id FROM delivered"
            ),
            Store::Sqlite { .. } => format!(
                "UPDATE messages SET delivered_at = $4 WHERE {unseen} AND delivered_at IS NULL RETURNING id"
            ),
        };
        let see =
            format!("UPDATE messages SET seen_at = $4 WHERE {unseen} RETURNING id, from_id, to_id");
        // Both statements take the same parameters, in the same order.
        macro_rules! bound {
            ($query:expr) => {
                $query.bind(id).bind(reader).bind(peer).bind(at)
            };
        }
        let (delivered, seen) = on_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let delivered: Vec<i64> = bound!(sqlx::query_scalar(AssertSqlSafe(deliver.as_str())))
                .fetch_all(&mut *tx)
                .await?;
            let seen: Vec<Receipt> = bound!(sqlx::query_as(AssertSqlSafe(see.as_str())))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (delivered, seen)
        });
        let delivered: HashSet<i64> = delivered.into_iter().collect();
        Ok(seen
            .into_iter()
            .map(|receipt| SeenReceipt {
                delivered_now: delivered.contains(&receipt.id),
                receipt,
            })
            .collect())
    }

    /// Whether `a` and `b` share a conversation: a message from either to the other exists. One probe
    /// of the conversation index.
    pub async fn share_conversation(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (low, high) = (a.min(b), a.max(b));
        let sql = match self {
            Store::Postgres(_) => {
                "SELECT EXISTS (SELECT 1 FROM messages \
                 WHERE LEAST(from_id, to_id) = $1 AND GREATEST(from_id, to_id) = $2)"
            }
            Store::Sqlite { .. } => {
                "SELECT EXISTS (SELECT 1 FROM messages \
                 WHERE min(from_id, to_id) = $1 AND max(from_id, to_id) = $2)"
            }
        };
        let shared = on_pool!(self, read, |pool| {
            sqlx::query_scalar::<_, bool>(sql)
                .bind(low)
                .bind(high)
                .fetch_one(pool)
                .await?
        });
        Ok(shared)
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

/// A row of PostgreSQL's commit statement: a message of the batch (its `position`, its `id`, whether
/// it was `created`) or a receipt (no position; the delivered message's `id`, `from_id`, `to_id`).
#[derive(sqlx::FromRow)]
struct CommitRow {
    position: Option<i64>,
    id: i64,
    created: Option<bool>,
    from_id: Option<i64>,
    to_id: Option<i64>,
}

/// The whole cycle is one statement: ids are drawn from the sequence in batch order (`batch`, so each
/// answer row is matched to its request by position whatever order `RETURNING` uses), the batch is
/// inserted and queued for its recipients (`undelivered`), and the delivered rows are marked and
/// taken off that queue, each a data-modifying `WITH` of its own. With `BEGIN`
/// and `COMMIT` that is three round trips a cycle instead of five.
///
/// The transaction is explicit even for one statement: a caller that gives up (its deadline passed)
/// drops the future, and without a COMMIT sent the rows can never land later, when a lock that held
/// the statement is released.
async fn commit_postgres<M: Borrow<NewMessage>>(
    connection: &mut sqlx::PgConnection,
    batch: &[M],
    delivered: &[MessageId],
    delivered_at: OffsetDateTime,
) -> StoreResult<Committed> {
    let mut tx = sqlx::Connection::begin(connection).await?;
    let from: Vec<i64> = batch.iter().map(|m| m.borrow().from_id).collect();
    let to: Vec<i64> = batch.iter().map(|m| m.borrow().to_id).collect();
    let content: Vec<&str> = batch.iter().map(|m| m.borrow().content.as_str()).collect();
    let timestamps: Vec<OffsetDateTime> = batch.iter().map(|m| m.borrow().timestamp).collect();
    let client_ids: Vec<Option<&str>> = batch
        .iter()
        .map(|m| m.borrow().client_id.as_deref())
        .collect();
    let rows: Vec<CommitRow> = sqlx::query_as(
        "WITH batch AS MATERIALIZED ( \
             SELECT nextval('messages_id_seq') AS id, b.* \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[]) \
                  WITH ORDINALITY AS b(from_id, to_id, content, timestamp, client_id, position) \
         ), stored AS ( \
             INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
             SELECT id, from_id, to_id, content, timestamp, client_id FROM batch ORDER BY position \
             ON CONFLICT (from_id, client_id) DO NOTHING RETURNING id, to_id \
         ), queued AS ( \
             INSERT INTO undelivered (to_id, message_id) SELECT to_id, id FROM stored \
         ), receipts AS ( \
             UPDATE messages SET delivered_at = $7 \
             WHERE id = ANY($6) AND delivered_at IS NULL RETURNING id, from_id, to_id \
         ), dequeued AS ( \
             DELETE FROM undelivered u USING receipts r \
             WHERE u.to_id = r.to_id AND u.message_id = r.id \
         ) \
         SELECT batch.position, batch.id, stored.id IS NOT NULL AS created, \
                NULL::bigint AS from_id, NULL::bigint AS to_id \
         FROM batch LEFT JOIN stored USING (id) \
         UNION ALL SELECT NULL, id, NULL, from_id, to_id FROM receipts \
         ORDER BY 1",
    )
    .bind(&from)
    .bind(&to)
    .bind(&content)
    .bind(&timestamps)
    .bind(&client_ids)
    .bind(delivered)
    .bind(delivered_at)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = Vec::with_capacity(batch.len());
    let mut receipts = Vec::new();
    for row in rows {
        match row {
            CommitRow {
                position: Some(_),
                created: Some(created),
                id,
                ..
            } => ids.push(created.then_some(id)),
            CommitRow {
                position: None,
                id,
                from_id: Some(from_id),
                to_id: Some(to_id),
                ..
            } => receipts.push(Receipt { id, from_id, to_id }),
            _ => {
                let odd = "a commit answered a row that is neither a message nor a receipt";
                return Err(StoreError::Other(sqlx::Error::Protocol(odd.into())));
            }
        }
    }
    tx.commit().await?;
    Ok(Committed { ids, receipts })
}

/// SQLite's one writer: the batch travels as one JSON array that `json_each` unpacks, so the whole
/// batch is one statement and one hop to the driver's thread (a prepared statement per row costs a
/// hop each). Ids are given explicitly, counting on from `sqlite_sequence`: `BEGIN IMMEDIATE` takes
/// the write lock first, so nobody else can take the same ones, and each answer row can be matched to
/// its request.
async fn commit_sqlite<M: Borrow<NewMessage>>(
    writer: &sqlx::SqlitePool,
    batch: &[M],
    delivered: &[MessageId],
    delivered_at: OffsetDateTime,
) -> StoreResult<Committed> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let mut ids = Vec::new();
    let mut inserted = HashSet::new();
    if !batch.is_empty() {
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        ids = (1..=batch.len() as i64).map(|n| last + n).collect();
        let rows: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
             FROM json_each($1) WHERE true \
             ON CONFLICT (from_id, client_id) DO NOTHING RETURNING id",
        )
        .bind(sqlite_rows(batch, &ids)?)
        .fetch_all(&mut *tx)
        .await?;
        inserted.extend(rows);
    }
    let mut receipts = Vec::new();
    if !delivered.is_empty() {
        receipts = sqlx::query_as::<_, Receipt>(
            "UPDATE messages SET delivered_at = $2 \
             WHERE id IN (SELECT value FROM json_each($1)) AND delivered_at IS NULL \
             RETURNING id, from_id, to_id",
        )
        .bind(json_array(delivered))
        .bind(delivered_at)
        .fetch_all(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Committed::new(ids, &inserted, receipts))
}

/// The batch as a JSON array of `[id, from_id, to_id, content, timestamp, client_id]` rows, the
/// timestamp written as sqlx writes it (RFC 3339) so every row reads back alike.
fn sqlite_rows<M: Borrow<NewMessage>>(batch: &[M], ids: &[i64]) -> StoreResult<String> {
    let rows = batch
        .iter()
        .map(Borrow::borrow)
        .zip(ids)
        .map(|(message, id)| {
            let timestamp = message
                .timestamp
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|error| StoreError::Other(sqlx::Error::Encode(Box::new(error))))?;
            Ok((
                id,
                message.from_id,
                message.to_id,
                message.content.as_str(),
                timestamp,
                message.client_id.as_deref(),
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    serde_json::to_string(&rows)
        .map_err(|error| StoreError::Other(sqlx::Error::Encode(Box::new(error))))
}
