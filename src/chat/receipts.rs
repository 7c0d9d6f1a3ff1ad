//! Delivery receipts: a message counts as delivered once its frame was written to one of the
//! recipient's sockets (DESIGN §3). Writes are batched like messages, on a connection of their own;
//! the rows the update changed are exactly the ones whose sender hears `message_delivered`, once per
//! message.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{batch::next_batch_until, events::ServerEvent};
use crate::{domain::MessageId, hub::Hub, store::Store};

const MAX_BATCH: usize = 1024;
const QUEUE: usize = 16 * 1024;

#[derive(Clone)]
pub struct DeliveryRecorder {
    written: mpsc::Sender<MessageId>,
}

impl DeliveryRecorder {
    /// Starts the batcher on its own `lane`; `timeout` bounds each of its updates.
    pub fn start(
        lane: Store,
        hub: Arc<Hub>,
        timeout: Duration,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (written, receiver) = mpsc::channel(QUEUE);
        tasks.spawn(run(lane, hub, timeout, receiver, shutdown));
        Self { written }
    }

    /// Records that `id` reached a socket of its recipient. Never waits: a socket must not stall
    /// behind a stalled database. When the queue is full (or the server is stopping) the message
    /// stays undelivered and is sent again on the recipient's next connection.
    pub fn written(&self, id: MessageId) {
        if self.written.try_send(id).is_err() {
            tracing::debug!(
                message = id,
                "the delivery queue is full; the message stays undelivered"
            );
        }
    }
}

async fn run(
    lane: Store,
    hub: Arc<Hub>,
    timeout: Duration,
    mut receiver: mpsc::Receiver<MessageId>,
    shutdown: CancellationToken,
) {
    while let Some(mut ids) = next_batch_until(&mut receiver, MAX_BATCH, &shutdown).await {
        ids.sort_unstable();
        ids.dedup();
        let delivered_at = crate::domain::now();
        let update = tokio::time::timeout(timeout, lane.mark_delivered(&ids, delivered_at)).await;
        match update {
            Ok(Ok(receipts)) => {
                for receipt in receipts {
                    let event = ServerEvent::MessageDelivered {
                        message_id: receipt.id,
                        delivered_at,
                    };
                    hub.send_to_user(receipt.from_id, &event.to_outbound());
                }
            }
            // Left undelivered: the recipient gets these again on their next connection.
            Ok(Err(error)) => {
                tracing::error!(%error, messages = ids.len(), "recording deliveries failed")
            }
            Err(_) => {
                tracing::error!(messages = ids.len(), "recording deliveries timed out")
            }
        }
    }
}
