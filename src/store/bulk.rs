//! Many messages at once, for operators (`teachlyd messages purge|export`), while `serve` may be
//! running on the same database: purges delete in short transactions, exports stream.
//!
//! Time bounds compare exactly on both databases. PostgreSQL's `timestamptz` is microseconds, so a
//! bound is rounded up to the next whole microsecond (`t < u` ⇔ `t < ⌈u⌉` for whole-µs `t`). SQLite
//! keeps RFC 3339 text whose fraction has as many digits as the writer gave (`…05Z`, `…05.1Z`,
//! `…05.123456Z`; SQLite's own default writes milliseconds), so text order is wrong at the boundary
//! (`Z` sorts after `.`), and `julianday()` rounds to milliseconds: [`SQLITE_INSTANT`] rewrites the
//! stored text into one fixed form, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC, that compares exactly as
//! text with a bound written the same way.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::BoxStream};
use sqlx::{AssertSqlSafe, types::time::OffsetDateTime};
use time::{format_description::BorrowedFormatItem, macros::format_description};

use super::{
    Store, StoreError, StoreResult, messages::MESSAGE_COLUMNS, on_pool, users::json_array,
};
use crate::domain::{Message, MessageId, in_utc, selection::Selection};

/// How many messages one purge transaction deletes unless told otherwise.
pub const DEFAULT_PURGE_BATCH: u32 = 1000;

/// A stored SQLite `timestamp` as fixed-width UTC text: the seconds through `strftime` (which takes
/// `Z`, `±HH:MM` or no offset, and a space or a `T`, and never sees the fraction it would round to
/// milliseconds), then the fraction's digits padded or cut to nine. Text that is no time at all
/// becomes NULL and so is never selected by a bound.
const SQLITE_INSTANT: &str = "(strftime('%Y-%m-%dT%H:%M:%S', substr(timestamp, 1, 19) || \
         CASE WHEN substr(timestamp, -6, 1) IN ('+', '-') THEN substr(timestamp, -6) ELSE '' END) \
     || '.' || substr(CASE WHEN substr(timestamp, 20, 1) = '.' \
         THEN substr(timestamp, 21, length(timestamp) - 20 \
             - CASE WHEN substr(timestamp, -1) IN ('Z', 'z') THEN 1 \
                    WHEN substr(timestamp, -6, 1) IN ('+', '-') THEN 6 ELSE 0 END) \
         ELSE '' END || '000000000', 1, 9))";

/// [`SQLITE_INSTANT`]'s form, for the bounds it is compared with.
const SQLITE_INSTANT_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]");

/// How often a purge batch on PostgreSQL tries again to lock rows that a writer holds.
const LOCK_ATTEMPTS: u32 = 200;
const LOCK_RETRY: Duration = Duration::from_millis(25);

/// A value bound to a selection's placeholder.
enum Value {
    Int(i64),
    Text(String),
    Time(OffsetDateTime),
}

/// A selection as SQL: a condition (never empty) and the values of its placeholders, in order.
struct Filter {
    condition: String,
    values: Vec<Value>,
}

/// Binds a filter's values, in order, to a query of either backend.
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {{
        let mut query = $query;
        for value in &$filter.values {
            query = match value {
                Value::Int(value) => query.bind(*value),
                Value::Text(value) => query.bind(value.clone()),
                Value::Time(value) => query.bind(*value),
            };
        }
        query
    }};
}

impl Store {
    /// `selection` as a condition on `messages`, its placeholders numbered from `$first`.
    fn filter(&self, selection: &Selection, first: usize) -> StoreResult<Filter> {
        let mut conditions = vec!["TRUE".to_owned()];
        let mut values = Vec::new();
        let mut next = first;
        if let Some(user) = selection.user() {
            conditions.push(format!("(from_id = ${next} OR to_id = ${next})"));
            values.push(Value::Int(user));
            next += 1;
        }
        for (bound, operator) in [(selection.since(), ">="), (selection.until(), "<")] {
            let Some(bound) = bound else { continue };
            match self {
                Store::Postgres(_) => {
                    conditions.push(format!("timestamp {operator} ${next}"));
                    values.push(Value::Time(ceil_to_micros(bound)));
                }
                Store::Sqlite { .. } => {
                    conditions.push(format!("{SQLITE_INSTANT} {operator} ${next}"));
                    values.push(Value::Text(sqlite_instant(bound)?));
                }
            }
            next += 1;
        }
        Ok(Filter {
            condition: conditions.join(" AND "),
            values,
        })
    }

    /// How many stored messages `selection` selects (what a purge would delete right now).
    pub async fn count_messages(&self, selection: &Selection) -> StoreResult<u64> {
        let filter = self.filter(selection, 1)?;
        let sql = format!("SELECT COUNT(*) FROM messages WHERE {}", filter.condition);
        let count: i64 = on_pool!(self, read, |pool| {
            bind_filter!(sqlx::query_scalar(AssertSqlSafe(sql.as_str())), filter)
                .fetch_one(pool)
                .await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes the messages `selection` selects, `batch` at a time, and answers how many it
    /// deleted. Each batch is found by a read that locks nothing (walking the primary key upwards,
    /// so the whole purge reads the table once), then deleted by id in a transaction of its own
    /// that takes milliseconds; between batches the purge rests as long as the last one held its
    /// locks, so a running `serve` keeps committing. On PostgreSQL the rows' places in the
    /// `undelivered` queue go in the same statement.
    pub async fn purge_messages(&self, selection: &Selection, batch: u32) -> StoreResult<u64> {
        let batch = batch.max(1);
        let filter = self.filter(selection, 3)?;
        let find = format!(
            "SELECT id FROM messages WHERE id > $1 AND {} ORDER BY id LIMIT $2",
            filter.condition
        );
        let mut after: MessageId = 0;
        let mut purged = 0;
        loop {
            let ids: Vec<MessageId> = on_pool!(self, read, |pool| {
                bind_filter!(
                    sqlx::query_scalar(AssertSqlSafe(find.as_str()))
                        .bind(after)
                        .bind(i64::from(batch)),
                    filter
                )
                .fetch_all(pool)
                .await?
            });
            let Some(&last) = ids.last() else { break };
            after = last;
            let (deleted, held) = self.delete_batch(&ids, selection).await?;
            purged += deleted;
            if ids.len() < batch as usize {
                break;
            }
            tokio::time::sleep(held).await;
        }
        Ok(purged)
    }

    /// Deletes those of `ids` that `selection` still selects (it always does: a message's time
    /// and users never change), in one short transaction. Answers how many it deleted, and how
    /// long it held its locks (not counting the wait for them).
    async fn delete_batch(
        &self,
        ids: &[MessageId],
        selection: &Selection,
    ) -> StoreResult<(u64, Duration)> {
        let filter = self.filter(selection, 2)?;
        match self {
            Store::Postgres(pool) => {
                // The rows are locked first, all at once and without waiting (NOWAIT): the group
                // commit locks a message, then its queue row, and so does the statement below, so
                // once this holds its messages it never waits for a writer, and a writer that waits
                // for it waits milliseconds. A deadlock would fail a batch of senders' messages.
                let lock = "SELECT id FROM messages WHERE id = ANY($1) FOR UPDATE NOWAIT";
                let delete = format!(
                    "WITH gone AS ( \
                         DELETE FROM messages WHERE id = ANY($1) AND {} RETURNING id, to_id \
                     ), dequeued AS ( \
                         DELETE FROM undelivered u USING gone g \
                         WHERE u.to_id = g.to_id AND u.message_id = g.id \
                     ) \
                     SELECT COUNT(*) FROM gone",
                    filter.condition
                );
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut tx = pool.begin().await?;
                    let locked = Instant::now();
                    match sqlx::query(lock).bind(ids).fetch_all(&mut *tx).await {
                        Ok(_) => {}
                        Err(sqlx::Error::Database(error))
                            if error.code().as_deref() == Some("55P03")
                                && attempt < LOCK_ATTEMPTS =>
                        {
                            tx.rollback().await?;
                            tokio::time::sleep(LOCK_RETRY).await;
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    }
                    let deleted: i64 = bind_filter!(
                        sqlx::query_scalar(AssertSqlSafe(delete.as_str())).bind(ids),
                        filter
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok((u64::try_from(deleted).unwrap_or(0), locked.elapsed()));
                }
            }
            Store::Sqlite { writer, .. } => {
                // SQLite keeps the delivery queue in a partial index of `messages`: deleting the
                // row is enough. `BEGIN IMMEDIATE` waits (busy_timeout) for `serve`'s writer.
                let delete = format!(
                    "DELETE FROM messages WHERE id IN (SELECT value FROM json_each($1)) AND {}",
                    filter.condition
                );
                let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                let locked = Instant::now();
                let done = bind_filter!(
                    sqlx::query(AssertSqlSafe(delete.as_str())).bind(json_array(ids)),
                    filter
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((done.rows_affected(), locked.elapsed()))
            }
        }
    }

    /// The messages `selection` selects, oldest id first, as a stream: rows are read as the caller
    /// takes them, so an export of any size holds a few rows in memory at a time.
    pub fn export_messages(
        &self,
        selection: &Selection,
    ) -> StoreResult<BoxStream<'_, StoreResult<Message>>> {
        let filter = self.filter(selection, 1)?;
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {} ORDER BY id",
            filter.condition
        );
        Ok(on_pool!(self, read, |pool| {
            bind_filter!(sqlx::query_as::<_, Message>(AssertSqlSafe(sql)), filter)
                .fetch(pool)
                .map(|row| row.map_err(StoreError::from))
                .boxed()
        }))
    }
}

/// `at` in [`SQLITE_INSTANT`]'s form.
fn sqlite_instant(at: OffsetDateTime) -> StoreResult<String> {
    in_utc(at)
        .format(SQLITE_INSTANT_FORMAT)
        .map_err(|error| StoreError::Other(sqlx::Error::Encode(Box::new(error))))
}

/// The first whole microsecond at or after `at` (PostgreSQL's precision).
fn ceil_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let below = at.nanosecond() % 1000;
    if below == 0 {
        return at;
    }
    at + time::Duration::nanoseconds(i64::from(1000 - below))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn bounds_round_up_to_whole_microseconds() {
        let at = datetime!(2026-01-01 00:00:00.000001 UTC);
        assert_eq!(ceil_to_micros(at), at);
        assert_eq!(
            ceil_to_micros(datetime!(2026-01-01 00:00:00.0000005 UTC)),
            at
        );
        assert_eq!(
            ceil_to_micros(datetime!(2025-12-31 23:59:59.999999999 UTC)),
            datetime!(2026-01-01 00:00 UTC)
        );
    }

    #[test]
    fn sqlite_bounds_are_fixed_width_utc() {
        assert_eq!(
            sqlite_instant(datetime!(2026-01-01 00:00:05 UTC)).unwrap(),
            "2026-01-01T00:00:05.000000000"
        );
        assert_eq!(
            sqlite_instant(datetime!(2026-01-01 01:00:05.123456 +01:00)).unwrap(),
            "2026-01-01T00:00:05.123456000"
        );
    }
}
