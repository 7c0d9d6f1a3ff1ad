//! Group commit: many senders' messages share one transaction, and each sender hears back only after
//! that transaction committed (DESIGN §1, §2, §5, §9).
//!
//! Faults stay with the message that causes them. A batch whose transaction fails for a reason of
//! its own rows (a constraint, a deleted user) is split in halves and retried, so only the message
//! that cannot be stored is refused; a database that cannot answer at all fails what is left of the
//! batch at once with `Unavailable`. Once COMMIT returned, every created message is acknowledged and
//! fanned out before anything else that could fail (reading back the rows of repeated `client_id`s).

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{batch::next_batch_until, events::ServerEvent};
use crate::{
    domain::{Message, MessageId, NewMessage, Stored, UserId},
    hub::{ConnectionId, Hub},
    store::{Store, StoreError},
};

/// The most messages committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Senders waiting for room beyond this wait (their `message_sent` comes later) instead of the
/// process buffering without end.
const QUEUE: usize = 4096;
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

#[derive(Clone)]
pub struct MessageWriter {
    requests: mpsc::Sender<WriteRequest>,
}

impl MessageWriter {
    /// Starts the writer task on its own `lane`; it stops when `shutdown` fires, after committing
    /// what was queued. `reads` serves the read-backs of repeated `client_id`s. `write_timeout` is
    /// how long senders wait.
    pub fn start(
        lane: Store,
        reads: Store,
        hub: Arc<Hub>,
        write_timeout: Duration,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            lane,
            reads,
            hub,
            margin: ANSWER_MARGIN.min(write_timeout / 10),
        };
        tasks.spawn(writer.run(receiver, shutdown));
        Self { requests }
    }

    /// Stores `message` and fans it out; answers once it is committed. The writer gives up on it
    /// shortly before `deadline`, and a message it gave up on is never stored later; the caller stops
    /// waiting at `deadline`.
    pub async fn write(
        &self,
        message: NewMessage,
        origin: Option<ConnectionId>,
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
        answer.await.map_err(|_| WriteError::ShuttingDown)?
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
    lane: Store,
    reads: Store,
    hub: Arc<Hub>,
    margin: Duration,
}

impl Writer {
    async fn run(self, mut receiver: mpsc::Receiver<WriteRequest>, shutdown: CancellationToken) {
        while let Some(batch) = next_batch_until(&mut receiver, MAX_BATCH, &shutdown).await {
            self.commit(batch).await;
        }
    }

    async fn commit(&self, batch: Vec<WriteRequest>) {
        let mut rows = fold(batch);
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
            let Some(commit_by) = commit_by else { continue };
            let messages: Vec<&NewMessage> = live.iter().map(|&i| &rows[i].message).collect();
            let attempt = tokio::time::timeout_at(commit_by, self.lane.insert_messages(&messages))
                .await
                .unwrap_or(Err(StoreError::TimedOut));
            match attempt {
                Ok(ids) => {
                    for (&index, id) in live.iter().zip(ids) {
                        match id {
                            Some(id) => self.created(&mut rows[index], id),
                            None => conflicts.push(index),
                        }
                    }
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

    /// A new row: the sender's other sockets and the recipient hear of it now, and every request
    /// waiting for it is answered.
    fn created(&self, row: &mut Row, id: MessageId) {
        let message = row.message.clone().stored_as(id);
        let owner = row.waiting.first().and_then(|waiter| waiter.origin);
        self.hub.send_to_user_except(
            message.from_id,
            owner,
            &ServerEvent::MessageSent { message: &message }.to_outbound(),
        );
        self.hub.send_to_user(
            message.to_id,
            &ServerEvent::NewMessage { message: &message }.to_outbound(),
        );
        for (n, waiter) in row.waiting.drain(..).enumerate() {
            let _ = waiter.reply.send(Ok(Stored {
                message: message.clone(),
                created: n == 0,
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
