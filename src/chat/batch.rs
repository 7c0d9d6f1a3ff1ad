use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Waits for one item, then takes whatever else is already queued, up to `max`: under load a batch
/// grows by itself while the previous one is being committed.
async fn next_batch<T>(receiver: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// `next_batch` until `shutdown` fires; then what is queued still comes out, batch by batch, and once
/// the queue runs empty it is closed and `None` ends the loop.
pub async fn next_batch_until<T>(
    receiver: &mut mpsc::Receiver<T>,
    max: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<T>> {
    tokio::select! {
        biased;
        batch = next_batch(receiver, max) => batch,
        () = shutdown.cancelled() => {
            receiver.close();
            next_batch(receiver, max).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_what_is_queued_and_drains_it_on_shutdown() {
        let (sender, mut receiver) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        for n in 0..5 {
            sender.send(n).await.unwrap();
        }
        let mut next = async || next_batch_until(&mut receiver, 3, &shutdown).await;
        assert_eq!(next().await, Some(vec![0, 1, 2]));
        shutdown.cancel();
        assert_eq!(
            next().await,
            Some(vec![3, 4]),
            "accepted work is still done"
        );
        assert_eq!(next().await, None);
        assert!(
            sender.send(99).await.is_err(),
            "nothing new once the queue is drained"
        );
    }
}
