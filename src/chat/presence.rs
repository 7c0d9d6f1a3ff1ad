//! Presence: whether a user has a socket open, announced to the people they share a conversation
//! with (`user_connected`, `user_disconnected`).
//!
//! Sockets open and close concurrently and announcing needs a database read (the peers), so two
//! changes of one user announced by the sockets themselves could overtake each other on the way to
//! a peer: a slow disconnect arriving after the reconnect that followed it shows an online user as
//! offline. Instead a socket only marks its user as changed, and one task, the only sender of
//! presence events, compares what it last announced with what the hub says now and announces the
//! difference. Events about one user go out in order, a quick reconnect announces nothing, and once
//! a user's sockets stop changing the last event each peer got matches the truth.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{StreamExt, stream};
use sqlx::types::time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::events::ServerEvent;
use crate::{
    domain::{UserId, now},
    hub::{Hub, Outbound},
    store::Store,
};

/// Users announced at the same time; each one's changes still go out in order.
const CONCURRENT_ANNOUNCEMENTS: usize = 16;
/// How long a user whose peers could not be read waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    changed: Mutex<HashSet<UserId>>,
    wake: Notify,
}

impl Presence {
    /// Starts the announcing task; `timeout` bounds each of its database calls.
    pub fn start(
        store: Store,
        hub: Arc<Hub>,
        timeout: Duration,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let announcer = Announcer {
            shared: Arc::clone(&shared),
            store,
            hub,
            timeout,
        };
        tasks.spawn(announcer.run(shutdown));
        Self { shared }
    }

    /// `user`'s first socket opened or last one closed. Never waits, so it can run in a `Drop`.
    pub fn changed(&self, user: UserId) {
        self.shared.mark(std::iter::once(user));
    }
}

impl Shared {
    fn mark(&self, users: impl IntoIterator<Item = UserId>) {
        self.changed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(users);
        self.wake.notify_one();
    }

    fn take(&self) -> HashSet<UserId> {
        std::mem::take(
            &mut *self
                .changed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

struct Announcer {
    shared: Arc<Shared>,
    store: Store,
    hub: Arc<Hub>,
    timeout: Duration,
}

/// What announcing one user came to.
enum Announced {
    Online(UserId),
    Offline(UserId),
    Unchanged,
    /// Their peers could not be read: try again shortly.
    Failed(UserId),
}

impl Announcer {
    async fn run(self, shutdown: CancellationToken) {
        let mut shown_online: HashSet<UserId> = HashSet::new();
        let mut retry: HashSet<UserId> = HashSet::new();
        loop {
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep(RETRY_AFTER), if !retry.is_empty() => {
                    self.shared.mark(retry.drain());
                }
                () = shutdown.cancelled() => break,
            }
            loop {
                let users = self.shared.take();
                if users.is_empty() {
                    break;
                }
                let at = now();
                let outcomes: Vec<Announced> = stream::iter(users)
                    .map(|user| self.announce(user, shown_online.contains(&user), at))
                    .buffer_unordered(CONCURRENT_ANNOUNCEMENTS)
                    .collect()
                    .await;
                let mut gone = Vec::new();
                for outcome in outcomes {
                    match outcome {
                        Announced::Online(user) => {
                            shown_online.insert(user);
                        }
                        Announced::Offline(user) => {
                            shown_online.remove(&user);
                            gone.push(user);
                        }
                        Announced::Failed(user) => {
                            retry.insert(user);
                        }
                        Announced::Unchanged => {}
                    }
                }
                // After the events, and off their order: a slow write delays nobody's presence, and
                // a thousand sockets closing at once cost one write, not a thousand.
                let stored =
                    tokio::time::timeout(self.timeout, self.store.set_last_seen_many(&gone, at));
                if !matches!(stored.await, Ok(Ok(()))) {
                    tracing::warn!(users = gone.len(), "storing last_seen_at failed");
                }
            }
        }
        // Every socket is closing: whoever is still shown online was last seen now.
        let users: Vec<UserId> = shown_online.into_iter().collect();
        let stored =
            tokio::time::timeout(self.timeout, self.store.set_last_seen_many(&users, now()));
        if !matches!(stored.await, Ok(Ok(()))) {
            tracing::warn!(
                users = users.len(),
                "storing last_seen_at at shutdown failed"
            );
        }
    }

    /// Tells `user`'s peers what the hub says now, if that is not what they were told last.
    async fn announce(&self, user: UserId, shown_online: bool, at: OffsetDateTime) -> Announced {
        let online = self.hub.is_online(user);
        if online == shown_online {
            return Announced::Unchanged;
        }
        let peers = tokio::time::timeout(self.timeout, self.store.conversation_peers(user)).await;
        let peers = match peers {
            Ok(Ok(peers)) => peers,
            Ok(Err(error)) => {
                tracing::warn!(%error, user, "reading conversation peers failed");
                return Announced::Failed(user);
            }
            Err(_) => {
                tracing::warn!(user, "reading conversation peers timed out");
                return Announced::Failed(user);
            }
        };
        if online {
            let event = ServerEvent::UserConnected { user_id: user }.to_outbound();
            self.tell(user, &peers, &event);
            return Announced::Online(user);
        }
        let event = ServerEvent::UserDisconnected {
            user_id: user,
            last_seen_at: at,
        }
        .to_outbound();
        self.tell(user, &peers, &event);
        Announced::Offline(user)
    }

    fn tell(&self, user: UserId, peers: &[UserId], event: &Outbound) {
        for &peer in peers.iter().filter(|&&peer| peer != user) {
            self.hub.send_to_user(peer, event);
        }
    }
}
