//! Group commit: many senders' messages share one transaction, and each sender hears back only after
//! that transaction committed (DESIGN §1, §2, §5, §9). The same transaction records the deliveries
//! that sockets reported since the last one (DESIGN §3), so a cycle costs one commit, one fsync: on
//! SQLite's one writer that is what bounds throughput. Only the rows the delivery update changed
//! produce `message_delivered`, so a sender hears it once per message however many devices got it.
//!
//! Faults stay with the message that causes them. A batch whose transaction fails for a reason of
//! its own rows (a constraint, a deleted user) is split in halves and retried, so only the message
//! that cannot be stored is refused; a database that cannot answer at all fails what is left of the
//! batch at once with `Unavailable`. Once COMMIT returned, every created message is acknowledged and
//! fanned out before anything else that could fail (reading back the rows of repeated `client_id`s).

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::types::time::OffsetDateTime;

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::events::ServerEvent;
use crate::{
    domain::{Message, MessageId, NewMessage, Receipt, Stored, UserId, now},
    hub::{ConnectionId, Hub},
    metrics::Metrics,
    store::{Lane, Store, StoreError},
};

/// The most messages committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// The most deliveries recorded in one transaction.
const MAX_DELIVERIES: usize = 1024;
/// Senders waiting for room beyond this wait (their `message_sent` comes later) instead of the
/// process buffering without end.
const QUEUE: usize = 4096;
/// Deliveries reported beyond this are not recorded (see `GroupCommit::delivered`): room for a
/// reconnect storm's whole backlog (5,000 users with 10 messages each wrote 50,000 frames in under
/// three seconds, faster than PostgreSQL records them), at 8 bytes an id and allocated only as
/// it fills.
const DELIVERY_QUEUE: usize = 256 * 1024;
/// The writer gives up on a message this long before its sender does, so that a commit it did finish
/// reaches the sender in time, and a sender that heard `unavailable` can rely on nothing stored.
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error(
        "the database did not store the message in time; send it again with the same client_id"
    )]
    Unavailable,
    #[error("this message could not be stored")]
    Refused,
    #[error("the server is shutting down; send it again with the same client_id in a moment")]
    ShuttingDown,
}

struct WriteRequest {
    message: NewMessage,
    /// The socket that sent it: it hears `message_sent` from its own answer, not from the hub.
    origin: Option<ConnectionId>,
    /// When the sender stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<Stored, WriteError>>,
}

/// A sender waiting for the commit of a row.
struct Waiter {
    origin: Option<ConnectionId>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Stored, WriteError>>,
}

impl Waiter {
    fn waiting(&self, now: Instant, margin: Duration) -> bool {
        !self.reply.is_closed() && now + margin < self.deadline
    }
}

/// The handle of the group-commit task: messages to store, deliveries to record.
#[derive(Clone)]
pub struct GroupCommit {
    requests: mpsc::Sender<WriteRequest>,
    written: mpsc::Sender<MessageId>,
}

impl GroupCommit {
    /// Starts the group-commit task on its own `lane`; it stops when `shutdown` fires, after
    /// committing what was queued. `reads` serves the read-backs of repeated `client_id`s.
    /// `write_timeout` is how long senders wait.
    pub fn start(
        lane: Lane,
        reads: Store,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        write_timeout: Duration,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (requests, request_queue) = mpsc::channel(QUEUE);
        let (written, written_queue) = mpsc::channel(DELIVERY_QUEUE);
        let writer = Writer {
            lane,
            reads,
            hub,
            metrics,
            write_timeout,
            margin: ANSWER_MARGIN.min(write_timeout / 10),
        };
        let inbox = Inbox {
            requests: request_queue,
            written: written_queue,
            closing: false,
        };
        tasks.spawn(writer.run(inbox, shutdown));
        Self { requests, written }
    }

    /// Stores `message` and fans it out; answers once it is committed. The writer gives up on it
    /// shortly before `deadline`, and a message it gave up on is never stored later; the caller stops
    /// waiting at `deadline`.
    /// `queued` hears once the message is in the queue, before it is committed.
    pub async fn write(
        &self,
        message: NewMessage,
        origin: Option<ConnectionId>,
        queued: Option<oneshot::Sender<()>>,
        deadline: Instant,
    ) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            message,
            origin,
            deadline,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        if let Some(queued) = queued {
            let _ = queued.send(());
        }
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Records that `id` reached a socket of its recipient, in the next transaction. Never waits: a
    /// socket must not stall behind a stalled database. When the queue is full (or the server is
    /// stopping) the message stays undelivered and is sent again on the recipient's next connection.
    pub fn delivered(&self, id: MessageId) {
        if self.written.try_send(id).is_err() {
            tracing::debug!(
                message = id,
                "the delivery queue is full; the message stays undelivered"
            );
        }
    }
}

/// What one transaction carries.
#[derive(Default)]
struct Cycle {
    requests: Vec<WriteRequest>,
    written: Vec<MessageId>,
}

/// Both queues of the group-commit task.
struct Inbox {
    requests: mpsc::Receiver<WriteRequest>,
    written: mpsc::Receiver<MessageId>,
    closing: bool,
}

impl Inbox {
    /// Waits for a message or a delivery, then takes whatever else is queued of both: under load a
    /// cycle grows by itself while the previous one is being committed. Once `shutdown` fired, the
    /// queues are closed and what they hold still comes out, cycle by cycle, until `None`.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Cycle> {
        let mut cycle = Cycle::default();
        if !self.closing {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => self.close(),
                Some(request) = self.requests.recv() => cycle.requests.push(request),
                Some(id) = self.written.recv() => cycle.written.push(id),
                else => self.close(),
            }
        }
        while cycle.requests.len() < MAX_BATCH {
            match self.requests.try_recv() {
                Ok(request) => cycle.requests.push(request),
                Err(_) => break,
            }
        }
        while cycle.written.len() < MAX_DELIVERIES {
            match self.written.try_recv() {
                Ok(id) => cycle.written.push(id),
                Err(_) => break,
            }
        }
        let done = self.closing && cycle.requests.is_empty() && cycle.written.is_empty();
        (!done).then_some(cycle)
    }

    fn close(&mut self) {
        self.requests.close();
        self.written.close();
        self.closing = true;
    }
}

/// One row to insert and everyone waiting for it: the first sender owns its creation, later ones in
/// the same batch sent the same `(from_id, client_id)` again.
struct Row {
    message: NewMessage,
    waiting: Vec<Waiter>,
}

impl Row {
    /// Until when committing the row is worth it: its most patient sender's deadline, less the margin.
    fn commit_by(&self, now: Instant, margin: Duration) -> Option<Instant> {
        self.waiting
            .iter()
            .filter(|waiter| waiter.waiting(now, margin))
            .map(|waiter| waiter.deadline - margin)
            .max()
    }

    /// Answers everyone still waiting with `outcome`: a row stored earlier, or why it was not stored.
    fn answer(&mut self, outcome: Result<&Message, WriteError>) {
        for waiter in self.waiting.drain(..) {
            let answer = outcome.map(|message| Stored {
                message: message.clone(),
                created: false,
            });
            let _ = waiter.reply.send(answer);
        }
    }
}

struct Writer {
    lane: Lane,
    reads: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
    margin: Duration,
}

impl Writer {
    async fn run(mut self, mut inbox: Inbox, shutdown: CancellationToken) {
        while let Some(cycle) = inbox.next(&shutdown).await {
            self.commit(cycle).await;
        }
    }

    async fn commit(&mut self, cycle: Cycle) {
        let mut rows = fold(cycle.requests);
        let mut written = cycle.written;
        written.sort_unstable();
        written.dedup();
        let delivered_at = now();
        // The first attempt carries the deliveries; a retry of messages never does.
        let mut deliveries = (!written.is_empty()).then_some(written.as_slice());
        let mut conflicts = Vec::new();
        // Ranges still to insert, the next one last; a failed range is pushed back as two halves.
        let mut pending = Vec::with_capacity(8);
        pending.push(0..rows.len());
        while let Some(range) = pending.pop() {
            let now = Instant::now();
            let mut live = Vec::with_capacity(range.len());
            let mut commit_by = None;
            for index in range.clone() {
                match rows[index].commit_by(now, self.margin) {
                    Some(by) => {
                        live.push(index);
                        commit_by =
                            Some(commit_by.map_or(by, |earliest: Instant| earliest.min(by)));
                    }
                    // Every sender of it gave up or is about to: never store it.
                    None => rows[index].answer(Err(WriteError::Unavailable)),
                }
            }
            if live.is_empty() && deliveries.is_none() {
                continue;
            }
            let commit_by = commit_by.unwrap_or(now + self.write_timeout);
            let messages: Vec<&NewMessage> = live.iter().map(|&i| &rows[i].message).collect();
            let ids = deliveries.unwrap_or_default();
            let attempt =
                tokio::time::timeout_at(commit_by, self.lane.commit(&messages, ids, delivered_at))
                    .await
                    .unwrap_or(Err(StoreError::TimedOut));
            match attempt {
                Ok(committed) => {
                    let committed_at = crate::domain::now();
                    for (&index, id) in live.iter().zip(committed.ids) {
                        match id {
                            Some(id) => self.created(&mut rows[index], id, committed_at),
                            None => conflicts.push(index),
                        }
                    }
                    self.announce_delivered(&committed.receipts, delivered_at);
                    deliveries = None;
                }
                Err(error) if live.is_empty() => {
                    // Left undelivered: the recipients get these again on their next connection.
                    tracing::error!(%error, messages = ids.len(), "recording deliveries failed");
                    deliveries = None;
                }
                // The most hurried senders of the batch gave up now; the others may still make it.
                Err(StoreError::TimedOut) => {
                    tracing::warn!(
                        messages = live.len(),
                        "a batch of messages did not commit in time"
                    );
                    pending.push(range);
                }
                Err(error) if error.is_unavailable() => {
                    tracing::error!(%error, messages = live.len(), "the database did not store a batch of messages");
                    for row in &mut rows[range.start..] {
                        row.answer(Err(WriteError::Unavailable));
                    }
                    pending.clear();
                    if deliveries.take().is_some() {
                        tracing::error!(messages = ids.len(), "recording deliveries failed");
                    }
                }
                // A row failed, maybe one of the deliveries' (a message deleted meanwhile): record
                // them alone, then the messages.
                Err(error) if deliveries.is_some() => {
                    tracing::debug!(%error, "a batch with deliveries failed; recording them apart");
                    pending.push(range.start..range.end);
                    pending.push(range.start..range.start);
                }
                Err(error) if live.len() == 1 => {
                    tracing::warn!(%error, "a message could not be stored");
                    rows[live[0]].answer(Err(WriteError::Refused));
                }
                Err(error) => {
                    tracing::debug!(%error, messages = live.len(), "a batch failed; retrying it in halves");
                    let middle = live[live.len() / 2];
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
        }
        for index in conflicts {
            self.stored_before(&mut rows[index]).await;
        }
    }

    /// Each sender hears `message_delivered` once: only for the rows this transaction changed.
    fn announce_delivered(&self, receipts: &[Receipt], delivered_at: OffsetDateTime) {
        self.metrics.messages_delivered(receipts.len());
        for receipt in receipts {
            let event = ServerEvent::MessageDelivered {
                message_id: receipt.id,
                delivered_at,
            };
            if self.hub.reaches(receipt.from_id, None) {
                self.hub.send_to_user(receipt.from_id, &event.to_outbound());
            }
        }
    }

    /// A new row: the sender's other sockets and the recipient hear of it now, and every request
    /// waiting for it is answered.
    fn created(&self, row: &mut Row, id: MessageId, committed_at: OffsetDateTime) {
        // The row is done with once created: its message moves on instead of being copied.
        let taken = NewMessage {
            content: std::mem::take(&mut row.message.content),
            client_id: row.message.client_id.take(),
            ..row.message
        };
        let message = taken.stored_as(id);
        // Accepted when its timestamp was taken; a clock stepped back counts as no wait.
        let waited = (committed_at - message.timestamp)
            .try_into()
            .unwrap_or_default();
        self.metrics.message_stored(waited);
        let owner = row.waiting.first().and_then(|waiter| waiter.origin);
        // Serialized only for someone to get it: most senders have no other socket open.
        if self.hub.reaches(message.from_id, owner) {
            self.hub.send_to_user_except(
                message.from_id,
                owner,
                &ServerEvent::MessageSent { message: &message }.to_outbound(),
            );
        }
        if self.hub.reaches(message.to_id, None) {
            self.hub.send_to_user(
                message.to_id,
                &ServerEvent::NewMessage { message: &message }.to_outbound(),
            );
        }
        let mut waiting = row.waiting.drain(..);
        let first = waiting.next();
        for waiter in waiting {
            let stored = Stored {
                message: message.clone(),
                created: false,
            };
            let _ = waiter.reply.send(Ok(stored));
        }
        if let Some(waiter) = first {
            let _ = waiter.reply.send(Ok(Stored {
                message,
                created: true,
            }));
        }
    }

    /// A `(from_id, client_id)` committed by an earlier batch: answered with that row.
    async fn stored_before(&self, row: &mut Row) {
        let Some(deadline) = row.waiting.iter().map(|waiter| waiter.deadline).max() else {
            return;
        };
        let message = &row.message;
        let client_id = message.client_id.as_deref().unwrap_or_default();
        let read = tokio::time::timeout_at(
            deadline,
            self.reads.message_by_client_id(message.from_id, client_id),
        )
        .await;
        let stored = match read {
            Ok(Ok(Some(stored))) => Ok(stored),
            Ok(Ok(None)) => Err(WriteError::Refused),
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading back a repeated client_id failed");
                Err(WriteError::Unavailable)
            }
            Err(_) => Err(WriteError::Unavailable),
        };
        row.answer(stored.as_ref().map_err(|error| *error));
    }
}

/// Drops the requests whose sender stopped waiting (they are never stored), and folds two sends with
/// the same `(from_id, client_id)` into one row: the first owns it.
fn fold(batch: Vec<WriteRequest>) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::with_capacity(batch.len());
    let mut row_of: HashMap<(UserId, String), usize> = HashMap::new();
    for request in batch {
        if request.reply.is_closed() {
            continue;
        }
        let WriteRequest {
            message,
            origin,
            deadline,
            reply,
        } = request;
        let waiter = Waiter {
            origin,
            deadline,
            reply,
        };
        let key = message
            .client_id
            .as_ref()
            .map(|client_id| (message.from_id, client_id.clone()));
        match key.as_ref().and_then(|key| row_of.get(key)) {
            Some(&index) => rows[index].waiting.push(waiter),
            None => {
                if let Some(key) = key {
                    row_of.insert(key, rows.len());
                }
                rows.push(Row {
                    message,
                    waiting: vec![waiter],
                });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        from: UserId,
        client_id: Option<&str>,
    ) -> (WriteRequest, oneshot::Receiver<Result<Stored, WriteError>>) {
        let (reply, answer) = oneshot::channel();
        let message = NewMessage {
            from_id: from,
            to_id: 2,
            content: "hi".into(),
            client_id: client_id.map(str::to_owned),
            timestamp: now(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let request = WriteRequest {
            message,
            origin: None,
            deadline,
            reply,
        };
        (request, answer)
    }

    #[tokio::test]
    async fn a_cycle_takes_both_queues_and_drains_them_on_shutdown() {
        let (requests, request_queue) = mpsc::channel(16);
        let (written, written_queue) = mpsc::channel(16);
        let mut inbox = Inbox {
            requests: request_queue,
            written: written_queue,
            closing: false,
        };
        let shutdown = CancellationToken::new();
        let (first, _first_answer) = request(1, None);
        requests.send(first).await.unwrap();
        written.send(7).await.unwrap();
        written.send(8).await.unwrap();
        let cycle = inbox.next(&shutdown).await.unwrap();
        assert_eq!((cycle.requests.len(), cycle.written), (1, vec![7, 8]));

        written.send(9).await.unwrap();
        shutdown.cancel();
        let cycle = inbox.next(&shutdown).await.unwrap();
        assert_eq!(cycle.written, vec![9], "accepted work is still done");
        assert!(inbox.next(&shutdown).await.is_none());
        assert!(written.try_send(10).is_err(), "nothing new once closed");
        let (late, _late_answer) = request(1, None);
        assert!(requests.send(late).await.is_err());
    }

    #[test]
    fn one_row_per_client_id_and_none_for_those_who_left() {
        let (a, _a) = request(1, Some("k"));
        let (b, _b) = request(1, Some("k"));
        let (c, _c) = request(2, Some("k"));
        let (d, d_answer) = request(1, None);
        drop(d_answer);
        let rows = fold(vec![a, b, c, d]);
        let waiting: Vec<usize> = rows.iter().map(|row| row.waiting.len()).collect();
        assert_eq!(
            waiting,
            vec![2, 1],
            "the same key of another sender is another row"
        );
    }
}
