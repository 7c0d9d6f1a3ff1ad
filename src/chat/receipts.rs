//! Delivery receipts: a message counts as delivered once its frame was written to one of the
//! recipient's sockets (DESIGN §3). Writes are batched like messages; the rows the update changed are
//! exactly the ones whose sender hears `message_delivered`, once per message.

use std::sync::Arc;

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
    pub fn start(
        store: Store,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (written, receiver) = mpsc::channel(QUEUE);
        tasks.spawn(run(store, hub, receiver, shutdown));
        Self { written }
    }

    /// Records that `id` reached a socket of its recipient.
    pub async fn written(&self, id: MessageId) {
        // Only fails during shutdown; the message then stays undelivered and is sent again next time.
        let _ = self.written.send(id).await;
    }
}

async fn run(
    store: Store,
    hub: Arc<Hub>,
    mut receiver: mpsc::Receiver<MessageId>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = next_batch_until(&mut receiver, MAX_BATCH, &shutdown).await;
        let Some(mut ids) = batch else { break };
        ids.sort_unstable();
        ids.dedup();
        let delivered_at = crate::domain::now();
        match store.mark_delivered(&ids, delivered_at).await {
            Ok(receipts) => {
                for receipt in receipts {
                    let event = ServerEvent::MessageDelivered {
                        message_id: receipt.id,
                        delivered_at,
                    };
                    hub.send_to_user(receipt.from_id, &event.to_outbound());
                }
            }
            // Left undelivered: the recipient gets these again on their next connection.
            Err(error) => {
                tracing::error!(%error, messages = ids.len(), "recording deliveries failed")
            }
        }
    }
}
