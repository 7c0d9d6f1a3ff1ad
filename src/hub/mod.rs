//! The hub: which sockets are open for which user, and fan-out of serialized events to them.
//!
//! Everything that reaches a user's sockets goes through `Hub::send_to_user`, so a Redis-backed hub for
//! several instances (SPEC §10) can take its place behind the same methods: this one only knows the
//! sockets of this process. The registry is sharded by user id and each lock is held for a few
//! instructions; nothing here awaits.

mod connection;

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

pub use connection::{
    Arrival, CloseCode, ConnectionControl, ConnectionHandle, ConnectionId, Outbound,
};

use crate::domain::UserId;

const SHARDS: usize = 32;

type Shard = HashMap<UserId, Vec<ConnectionHandle>>;

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    max_connections_per_user: usize,
    connections: AtomicUsize,
    online_users: AtomicUsize,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this user already has the most connections allowed ({limit})")]
pub struct TooManyConnections {
    pub limit: usize,
}

impl Hub {
    pub fn new(max_connections_per_user: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_connections_per_user,
            connections: AtomicUsize::new(0),
            online_users: AtomicUsize::new(0),
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Shard> {
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(user) as usize % SHARDS;
        // A panic while holding a shard lock leaves plain data behind; keep serving with it.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection; answers whether it is the user's first (they just came online).
    pub fn register(&self, handle: ConnectionHandle) -> Result<bool, TooManyConnections> {
        let mut shard = self.shard(handle.user_id);
        let entry = shard.entry(handle.user_id).or_default();
        if entry.len() >= self.max_connections_per_user {
            return Err(TooManyConnections {
                limit: self.max_connections_per_user,
            });
        }
        entry.push(handle);
        let first = entry.len() == 1;
        drop(shard);
        self.connections.fetch_add(1, Ordering::Relaxed);
        if first {
            self.online_users.fetch_add(1, Ordering::Relaxed);
        }
        Ok(first)
    }

    /// Removes a connection; answers whether it was the user's last (they just went offline).
    pub fn unregister(&self, user: UserId, connection: ConnectionId) -> bool {
        let mut shard = self.shard(user);
        let Some(entry) = shard.get_mut(&user) else {
            return false;
        };
        let before = entry.len();
        entry.retain(|handle| handle.id != connection);
        let removed = before != entry.len();
        let last = removed && entry.is_empty();
        if entry.is_empty() {
            shard.remove(&user);
        }
        drop(shard);
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if last {
            self.online_users.fetch_sub(1, Ordering::Relaxed);
        }
        last
    }

    /// Queues `event` on every connection of `user`. Never waits: a connection whose queue is full is
    /// closed with 1013, and what it missed stays undelivered in the database.
    pub fn send_to_user(&self, user: UserId, event: &Outbound) {
        self.send_to_user_except(user, None, event);
    }

    pub fn send_to_user_except(
        &self,
        user: UserId,
        except: Option<ConnectionId>,
        event: &Outbound,
    ) {
        let shard = self.shard(user);
        if let Some(handles) = shard.get(&user) {
            for handle in handles.iter().filter(|h| Some(h.id) != except) {
                handle.offer(event.clone());
            }
        }
    }

    /// Whether `user` has a connection other than `except`: an event nobody would get is not worth
    /// serializing.
    pub fn reaches(&self, user: UserId, except: Option<ConnectionId>) -> bool {
        self.shard(user)
            .get(&user)
            .is_some_and(|handles| handles.iter().any(|h| Some(h.id) != except))
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.shard(user).contains_key(&user)
    }

    pub fn connections_of(&self, user: UserId) -> usize {
        self.shard(user).get(&user).map_or(0, Vec::len)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn online_user_count(&self) -> usize {
        self.online_users.load(Ordering::Relaxed)
    }

    /// Every socket of this process, for `teachlyd admin connections`.
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        let mut all = Vec::with_capacity(self.connection_count());
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            all.extend(shard.values().flatten().cloned());
        }
        all
    }

    /// Closes the sockets of one user with `code`; answers how many there were.
    pub fn close_user(&self, user: UserId, code: CloseCode) -> usize {
        let shard = self.shard(user);
        let handles = shard.get(&user).map_or(&[][..], Vec::as_slice);
        for handle in handles {
            handle.control.close(code);
        }
        handles.len()
    }

    /// Closes every connection (shutdown: 1001).
    pub fn close_all(&self, code: CloseCode) {
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for handle in shard.values().flatten() {
                handle.control.close(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(
        user: UserId,
        queue: usize,
    ) -> (ConnectionHandle, tokio::sync::mpsc::Receiver<Outbound>) {
        ConnectionHandle::new(user, queue, Arrival::default())
    }

    #[test]
    fn tracks_first_and_last_connection() {
        let hub = Hub::new(2);
        let (a, _ra) = handle(7, 4);
        let (b, _rb) = handle(7, 4);
        let (c, _rc) = handle(7, 4);
        assert_eq!(hub.register(a.clone()), Ok(true));
        assert_eq!(hub.register(b.clone()), Ok(false));
        assert_eq!(hub.register(c), Err(TooManyConnections { limit: 2 }));
        assert_eq!((hub.connection_count(), hub.online_user_count()), (2, 1));
        assert!(!hub.unregister(7, a.id));
        assert!(
            !hub.unregister(7, a.id),
            "a second unregister changes nothing"
        );
        assert!(hub.unregister(7, b.id));
        assert_eq!((hub.connection_count(), hub.online_user_count()), (0, 0));
        assert!(!hub.is_online(7));
    }

    #[test]
    fn a_full_queue_closes_only_that_connection() {
        let hub = Hub::new(5);
        let (slow, _slow_rx) = handle(1, 1);
        let (fast, mut fast_rx) = handle(1, 8);
        hub.register(slow.clone()).unwrap();
        hub.register(fast.clone()).unwrap();
        let event = Outbound::event("{\"event\":\"pong\"}".into());
        hub.send_to_user(1, &event);
        hub.send_to_user(1, &event);
        assert_eq!(slow.control.close_code(), Some(CloseCode::Overflow));
        assert_eq!(fast.control.close_code(), None);
        assert!(fast_rx.try_recv().is_ok() && fast_rx.try_recv().is_ok());
    }

    #[test]
    fn close_user_closes_only_that_users_sockets() {
        let hub = Hub::new(5);
        let (first, _r1) = handle(4, 4);
        let (second, _r2) = handle(4, 4);
        let (other, _r3) = handle(5, 4);
        for h in [&first, &second, &other] {
            hub.register(h.clone()).unwrap();
        }
        assert_eq!(hub.close_user(4, CloseCode::Kicked), 2);
        assert_eq!(first.control.close_code(), Some(CloseCode::Kicked));
        assert_eq!(second.control.close_code(), Some(CloseCode::Kicked));
        assert_eq!(other.control.close_code(), None);
        assert_eq!(hub.close_user(99, CloseCode::Kicked), 0);
        assert_eq!(
            hub.connections().len(),
            3,
            "closing is the socket's job, not the hub's"
        );
    }

    #[test]
    fn queue_depth_counts_what_waits() {
        let (h, mut rx) = handle(1, 8);
        assert_eq!(h.queue_depth(), 0);
        h.offer(Outbound::event("{}".into()));
        h.offer(Outbound::event("{}".into()));
        assert_eq!(h.queue_depth(), 2);
        rx.try_recv().unwrap();
        assert_eq!(h.queue_depth(), 1);
    }

    #[test]
    fn except_skips_the_origin_connection() {
        let hub = Hub::new(5);
        let (origin, mut origin_rx) = handle(3, 4);
        let (other, mut other_rx) = handle(3, 4);
        hub.register(origin.clone()).unwrap();
        hub.register(other).unwrap();
        hub.send_to_user_except(3, Some(origin.id), &Outbound::event("{}".into()));
        assert!(origin_rx.try_recv().is_err());
        assert!(other_rx.try_recv().is_ok());
    }
}
