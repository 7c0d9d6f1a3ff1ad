//! Group commit: many senders' messages share one transaction, and each sender hears back only after
//! that transaction committed (DESIGN §1, §2, §5).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{batch::next_batch_until, events::ServerEvent};
use crate::{
    domain::{NewMessage, Stored, UserId},
    hub::Hub,
    store::Store,
};

/// The most messages committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Senders waiting for room beyond this wait (their `message_sent` comes later) instead of the
/// process buffering without end.
const QUEUE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the message could not be stored; try again")]
    Failed,
    #[error("the server is shutting down; try again in a moment")]
    ShuttingDown,
}

struct WriteRequest {
    message: NewMessage,
    reply: oneshot::Sender<Result<Stored, WriteError>>,
}

/// Figures of the write path, for benchmarks and (later) metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    pub commit_micros: AtomicU64,
}

#[derive(Clone)]
pub struct MessageWriter {
    requests: mpsc::Sender<WriteRequest>,
    pub stats: Arc<WriterStats>,
}

impl MessageWriter {
    /// Starts the writer task; it stops when `shutdown` fires, after committing what was queued.
    pub fn start(
        store: Store,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        tasks.spawn(run(store, hub, receiver, shutdown, Arc::clone(&stats)));
        Self { requests, stats }
    }

    /// Stores `message` and fans it out; answers once it is committed.
    pub async fn write(&self, message: NewMessage) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(WriteRequest { message, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }
}

async fn run(
    store: Store,
    hub: Arc<Hub>,
    mut receiver: mpsc::Receiver<WriteRequest>,
    shutdown: CancellationToken,
    stats: Arc<WriterStats>,
) {
    loop {
        let batch = next_batch_until(&mut receiver, MAX_BATCH, &shutdown).await;
        let Some(batch) = batch else { break };
        commit(&store, &hub, batch, &stats).await;
    }
}

async fn commit(store: &Store, hub: &Hub, batch: Vec<WriteRequest>, stats: &WriterStats) {
    // Two sends with the same (from_id, client_id) in one batch become one row: the first owns it.
    let mut unique: Vec<NewMessage> = Vec::with_capacity(batch.len());
    let mut owner_of: HashMap<(UserId, &str), usize> = HashMap::new();
    let mut slots = Vec::with_capacity(batch.len());
    for request in &batch {
        let key = request
            .message
            .client_id
            .as_deref()
            .map(|client_id| (request.message.from_id, client_id));
        match key.and_then(|key| owner_of.get(&key).copied()) {
            Some(index) => slots.push((index, false)),
            None => {
                let index = unique.len();
                if let Some(key) = key {
                    owner_of.insert(key, index);
                }
                unique.push(request.message.clone());
                slots.push((index, true));
            }
        }
    }
    drop(owner_of);

    let started = Instant::now();
    let result = store.insert_messages(&unique).await;
    let elapsed = started.elapsed();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .messages
        .fetch_add(unique.len() as u64, Ordering::Relaxed);
    stats
        .commit_micros
        .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    tracing::debug!(
        messages = unique.len(),
        micros = elapsed.as_micros() as u64,
        "committed a batch"
    );

    let stored = match result {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, messages = unique.len(), "storing a batch of messages failed");
            for request in batch {
                let _ = request.reply.send(Err(WriteError::Failed));
            }
            return;
        }
    };
    // Committed: now, and only now, the sender and the recipient may hear of it.
    for outcome in stored.iter().filter(|outcome| outcome.created) {
        let message = &outcome.message;
        hub.send_to_user(
            message.from_id,
            &ServerEvent::MessageSent { message }.to_outbound(),
        );
        hub.send_to_user(
            message.to_id,
            &ServerEvent::NewMessage { message }.to_outbound(),
        );
    }
    for (request, (index, owner)) in batch.into_iter().zip(slots) {
        let mut answer = stored[index].clone();
        answer.created &= owner;
        let _ = request.reply.send(Ok(answer));
    }
}
