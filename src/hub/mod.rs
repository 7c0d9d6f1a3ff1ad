//! The hub: which sockets are open for which user and session, and fan-out of serialized events to
//! them.
//!
//! Everything that reaches a user's sockets goes through `Hub::send_to_user`, and everything that
//! closes them through `close_user` and `close_session`, so a Redis-backed hub for several instances
//! (SPEC §10) can take its place behind the same methods, which take plain ids: this one only knows
//! the sockets of this process. The registry is sharded by user id and each lock is held for a few
//! instructions; nothing here awaits.
//!
//! A socket takes its place in two steps under the same shard lock: the upgrade check `reserve`s a
//! `Slot` before the server answers 101 (so the per-user cap refuses with 429, however many upgrades
//! race), and the socket's task `register`s it once the connection is a WebSocket. A slot counts
//! against the cap from the first step; dropping it (the upgrade never completed) frees it.

mod connection;

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

pub use connection::{
    Arrival, CloseCode, ConnectionControl, ConnectionHandle, ConnectionId, Outbound,
};

use crate::domain::{SessionId, UserId};

const SHARDS: usize = 32;
/// Ended sessions one shard remembers at most (32 × 1,024 in all, about 150 bytes each). Past it the
/// oldest is forgotten first: by then the database refuses its tokens at `authenticate`, and the
/// memory only matters to an upgrade that read the database just before the session ended.
const ENDED_PER_SHARD: usize = 1024;
/// Remembered past the access tokens' lifetime: their validation allows 5 s of clock skew, and a
/// token can be signed a moment after the rotation that stored its family committed.
const ENDED_SLACK: Duration = Duration::from_secs(60);

pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    max_connections_per_user: usize,
    /// How long an ended session is remembered: as long as an access token of it can be valid.
    remember_ended: Duration,
    connections: AtomicUsize,
    online_users: AtomicUsize,
    next_slot: AtomicU64,
}

#[derive(Default)]
struct Shard {
    users: HashMap<UserId, UserSockets>,
    ended: EndedSessions,
}

/// One user's sockets, and the places held for upgrades still under way.
#[derive(Default)]
struct UserSockets {
    registered: Vec<ConnectionHandle>,
    reserved: Vec<Reservation>,
}

impl UserSockets {
    /// What counts against `limits.max_connections_per_user`.
    fn held(&self) -> usize {
        self.registered.len() + self.reserved.len()
    }

    fn is_empty(&self) -> bool {
        self.held() == 0
    }
}

struct Reservation {
    id: u64,
    session: SessionId,
    /// Its session ended while the upgrade was under way: the socket is refused when it registers.
    ended: bool,
}

/// Why a socket was refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this user already has the most connections allowed ({limit})")]
    TooManyConnections { limit: usize },
    #[error("this session has ended; sign in again")]
    SessionEnded,
}

/// A place for one more socket of a user, held from the upgrade check until the socket registers
/// (`Slot::register`). Dropping it unregistered (the upgrade failed, the task ended) frees the place.
pub struct Slot {
    hub: Arc<Hub>,
    user: UserId,
    session: SessionId,
    id: u64,
    registered: bool,
}

impl Slot {
    pub fn user(&self) -> UserId {
        self.user
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Turns the place into the registered socket `handle` (which must be this user's and
    /// session's); answers whether it is the user's first (they just came online). Refused when the
    /// session ended since the place was reserved: the socket must close (4001).
    pub fn register(mut self, handle: ConnectionHandle) -> Result<bool, Refusal> {
        debug_assert!(handle.user_id == self.user && handle.session == self.session);
        self.registered = true;
        self.hub.register(&self, handle)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.registered {
            self.hub.release(self.user, self.id);
        }
    }
}

impl Hub {
    /// A hub that lets each user hold `max_connections_per_user` sockets and remembers an ended
    /// session for as long as an access token (`access_ttl`) of it can be valid.
    pub fn new(max_connections_per_user: usize, access_ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_connections_per_user,
            remember_ended: access_ttl + ENDED_SLACK,
            connections: AtomicUsize::new(0),
            online_users: AtomicUsize::new(0),
            next_slot: AtomicU64::new(1),
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Shard> {
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(user) as usize % SHARDS;
        // A panic while holding a shard lock leaves plain data behind; keep serving with it.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds a place for one more socket of `user` in `session`, checked and taken in one step, so
    /// that of any number of upgrades at once exactly as many as there is room for get one.
    pub fn reserve(self: &Arc<Self>, user: UserId, session: &SessionId) -> Result<Slot, Refusal> {
        let now = Instant::now();
        let mut shard = self.shard(user);
        if shard.ended.contains(user, session, now) {
            return Err(Refusal::SessionEnded);
        }
        if shard.users.get(&user).map_or(0, UserSockets::held) >= self.max_connections_per_user {
            return Err(Refusal::TooManyConnections {
                limit: self.max_connections_per_user,
            });
        }
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        shard
            .users
            .entry(user)
            .or_default()
            .reserved
            .push(Reservation {
                id,
                session: session.clone(),
                ended: false,
            });
        drop(shard);
        Ok(Slot {
            hub: Arc::clone(self),
            user,
            session: session.clone(),
            id,
            registered: false,
        })
    }

    fn register(&self, slot: &Slot, handle: ConnectionHandle) -> Result<bool, Refusal> {
        let now = Instant::now();
        let mut shard = self.shard(slot.user);
        let Shard { users, ended } = &mut *shard;
        let entry = users.entry(slot.user).or_default();
        let reservation = entry.reserved.iter().position(|r| r.id == slot.id);
        let reservation = reservation.map(|index| entry.reserved.swap_remove(index));
        // The session may have ended after the upgrade's check: `close_session` marked the place,
        // or remembers the session if it ended before the place was reserved.
        let session_ended =
            reservation.is_none_or(|r| r.ended) || ended.contains(slot.user, &slot.session, now);
        if session_ended {
            if entry.is_empty() {
                users.remove(&slot.user);
            }
            return Err(Refusal::SessionEnded);
        }
        entry.registered.push(handle);
        let first = entry.registered.len() == 1;
        drop(shard);
        self.connections.fetch_add(1, Ordering::Relaxed);
        if first {
            self.online_users.fetch_add(1, Ordering::Relaxed);
        }
        Ok(first)
    }

    /// Frees a place whose socket never registered.
    fn release(&self, user: UserId, slot: u64) {
        let mut shard = self.shard(user);
        if let Some(entry) = shard.users.get_mut(&user) {
            entry.reserved.retain(|r| r.id != slot);
            if entry.is_empty() {
                shard.users.remove(&user);
            }
        }
    }

    /// Removes a connection; answers whether it was the user's last (they just went offline).
    pub fn unregister(&self, user: UserId, connection: ConnectionId) -> bool {
        let mut shard = self.shard(user);
        let Some(entry) = shard.users.get_mut(&user) else {
            return false;
        };
        let before = entry.registered.len();
        entry.registered.retain(|handle| handle.id != connection);
        let removed = before != entry.registered.len();
        let last = removed && entry.registered.is_empty();
        if entry.is_empty() {
            shard.users.remove(&user);
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
        if let Some(entry) = shard.users.get(&user) {
            for handle in entry.registered.iter().filter(|h| Some(h.id) != except) {
                handle.offer(event.clone());
            }
        }
    }

    /// Whether `user` has a connection other than `except`: an event nobody would get is not worth
    /// serializing.
    pub fn reaches(&self, user: UserId, except: Option<ConnectionId>) -> bool {
        self.shard(user).users.get(&user).is_some_and(|entry| {
            entry
                .registered
                .iter()
                .any(|handle| Some(handle.id) != except)
        })
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.connections_of(user) > 0
    }

    /// The sockets `user` has registered (places reserved for upgrades under way not counted).
    pub fn connections_of(&self, user: UserId) -> usize {
        self.shard(user)
            .users
            .get(&user)
            .map_or(0, |entry| entry.registered.len())
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
            all.extend(
                shard
                    .users
                    .values()
                    .flat_map(|entry| entry.registered.iter().cloned()),
            );
        }
        all
    }

    /// Closes the sockets of one user with `code`; answers how many there were.
    pub fn close_user(&self, user: UserId, code: CloseCode) -> usize {
        let shard = self.shard(user);
        let handles = shard
            .users
            .get(&user)
            .map_or(&[][..], |entry| entry.registered.as_slice());
        for handle in handles {
            handle.control.close(code);
        }
        handles.len()
    }

    /// `session` of `user` has ended (its refresh-token family was revoked): closes its sockets with
    /// `code`, and refuses its upgrades still under way and any it starts later for as long as one
    /// of its access tokens can be valid. The user's other sessions keep their sockets. Answers how
    /// many sockets it closed.
    pub fn close_session(&self, user: UserId, session: &SessionId, code: CloseCode) -> usize {
        let now = Instant::now();
        let mut shard = self.shard(user);
        let Shard { users, ended } = &mut *shard;
        ended.remember(user, session, now + self.remember_ended, now);
        let Some(entry) = users.get_mut(&user) else {
            return 0;
        };
        for reservation in entry.reserved.iter_mut() {
            if reservation.session == *session {
                reservation.ended = true;
            }
        }
        let mut closed = 0;
        for handle in entry.registered.iter().filter(|h| h.session == *session) {
            handle.control.close(code);
            closed += 1;
        }
        closed
    }

    /// Closes every connection (shutdown: 1001).
    pub fn close_all(&self, code: CloseCode) {
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for handle in shard.users.values().flat_map(|entry| &entry.registered) {
                handle.control.close(code);
            }
        }
    }
}

/// Sessions that ended lately, so that a socket whose upgrade checked the database just before its
/// session ended is refused when it registers. Each is kept until no access token of it can be
/// valid; every token of a family is signed before the family is revoked (a revoked family is never
/// refreshed), so that time is the revocation plus the tokens' lifetime. At most `ENDED_PER_SHARD`.
#[derive(Default)]
struct EndedSessions {
    until: HashMap<(UserId, SessionId), Instant>,
    /// The same entries in the order they were added, which is the order they expire in.
    order: VecDeque<(Instant, UserId, SessionId)>,
}

impl EndedSessions {
    fn remember(&mut self, user: UserId, session: &SessionId, until: Instant, now: Instant) {
        self.forget_expired(now);
        let key = (user, session.clone());
        // Ended again (logout twice, a reuse after a logout): no token of it was signed since the
        // first time, so the first deadline stands.
        if self.until.contains_key(&key) {
            return;
        }
        while self.order.len() >= ENDED_PER_SHARD {
            self.forget_oldest();
        }
        self.until.insert(key, until);
        self.order.push_back((until, user, session.clone()));
    }

    fn contains(&self, user: UserId, session: &SessionId, now: Instant) -> bool {
        self.until
            .get(&(user, session.clone()))
            .is_some_and(|until| *until > now)
    }

    fn forget_expired(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, ..)| *until <= now) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, user, session)) = self.order.pop_front() {
            self.until.remove(&(user, session));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(900);

    fn hub(max: usize) -> Arc<Hub> {
        Arc::new(Hub::new(max, TTL))
    }

    fn session(name: &str) -> SessionId {
        SessionId::from(name)
    }

    /// A registered socket of `user` in session `s`, and the receiving end of its queue.
    fn open(
        hub: &Arc<Hub>,
        user: UserId,
        s: &str,
        queue: usize,
    ) -> (ConnectionHandle, tokio::sync::mpsc::Receiver<Outbound>) {
        let slot = hub.reserve(user, &session(s)).expect("room for it");
        let (handle, rx) = ConnectionHandle::new(user, session(s), queue, Arrival::default());
        slot.register(handle.clone()).expect("registered");
        (handle, rx)
    }

    #[test]
    fn tracks_first_and_last_connection() {
        let hub = hub(2);
        let (a, _ra) = open(&hub, 7, "s", 4);
        assert_eq!((hub.connection_count(), hub.online_user_count()), (1, 1));
        let (b, _rb) = open(&hub, 7, "s", 4);
        assert_eq!(
            hub.reserve(7, &session("s")).err(),
            Some(Refusal::TooManyConnections { limit: 2 })
        );
        assert_eq!((hub.connection_count(), hub.online_user_count()), (2, 1));
        assert!(!hub.unregister(7, a.id));
        assert!(
            !hub.unregister(7, a.id),
            "a second unregister changes nothing"
        );
        assert!(hub.unregister(7, b.id));
        assert_eq!((hub.connection_count(), hub.online_user_count()), (0, 0));
        assert!(!hub.is_online(7));
        assert!(hub.shard(7).users.is_empty(), "nothing is left of user 7");
    }

    #[test]
    fn a_reserved_place_counts_against_the_cap_until_it_is_dropped() {
        let hub = hub(2);
        let first = hub.reserve(7, &session("s")).unwrap();
        let second = hub.reserve(7, &session("s")).unwrap();
        assert_eq!(
            hub.reserve(7, &session("t")).err(),
            Some(Refusal::TooManyConnections { limit: 2 }),
            "places are per user, whatever the session"
        );
        assert!(!hub.is_online(7), "a place is not a socket");
        assert_eq!(hub.connections_of(7), 0);
        drop(first);
        let third = hub
            .reserve(7, &session("s"))
            .expect("the dropped place is free again");
        let (handle, _rx) = ConnectionHandle::new(7, session("s"), 4, Arrival::default());
        assert_eq!(second.register(handle.clone()), Ok(true));
        assert_eq!(hub.connections_of(7), 1);
        assert!(
            hub.reserve(7, &session("s")).is_err(),
            "a socket and a place"
        );
        drop(third);
        assert!(hub.unregister(7, handle.id));
        assert!(hub.shard(7).users.is_empty(), "nothing is left of user 7");
        assert!(
            hub.reserve(8, &session("s")).is_ok(),
            "other users are apart"
        );
    }

    #[test]
    fn racing_reservations_get_exactly_the_places_there_are() {
        let hub = hub(5);
        let barrier = Arc::new(std::sync::Barrier::new(10));
        let racers: Vec<_> = (0..10)
            .map(|_| {
                let (hub, barrier) = (Arc::clone(&hub), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    hub.reserve(3, &session("s"))
                })
            })
            .collect();
        let outcomes: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let granted = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(granted, 5);
        assert!(
            outcomes
                .iter()
                .filter_map(|o| o.as_ref().err())
                .all(|e| *e == Refusal::TooManyConnections { limit: 5 })
        );
        drop(outcomes);
        assert!(hub.shard(3).users.is_empty(), "every place was freed");
    }

    #[test]
    fn closing_a_session_closes_only_its_sockets() {
        let hub = hub(5);
        let (ended, _r1) = open(&hub, 4, "ended", 4);
        let (kept, _r2) = open(&hub, 4, "kept", 4);
        let (other_user, _r3) = open(&hub, 5, "ended", 4);
        assert_eq!(
            hub.close_session(4, &session("ended"), CloseCode::SessionEnded),
            1
        );
        assert_eq!(ended.control.close_code(), Some(CloseCode::SessionEnded));
        assert_eq!(kept.control.close_code(), None);
        assert_eq!(
            other_user.control.close_code(),
            None,
            "a session is one user's"
        );
        assert_eq!(
            hub.reserve(4, &session("ended")).err(),
            Some(Refusal::SessionEnded),
            "an ended session opens no socket"
        );
        assert!(hub.reserve(4, &session("kept")).is_ok());
        assert!(hub.reserve(5, &session("ended")).is_ok());
    }

    #[test]
    fn a_session_that_ends_during_the_upgrade_is_refused_at_registration() {
        let hub = hub(5);
        // The place was reserved before the session ended: it is marked.
        let slot = hub.reserve(4, &session("s")).unwrap();
        assert_eq!(
            hub.close_session(4, &session("s"), CloseCode::SessionEnded),
            0
        );
        let (handle, _rx) = ConnectionHandle::new(4, session("s"), 4, Arrival::default());
        assert_eq!(slot.register(handle), Err(Refusal::SessionEnded));
        assert_eq!(hub.connections_of(4), 0);
        assert!(hub.shard(4).users.is_empty(), "the refused place is freed");

        // Marked even when the memory of ended sessions has forgotten it.
        let slot = hub.reserve(4, &session("t")).unwrap();
        hub.close_session(4, &session("t"), CloseCode::SessionEnded);
        hub.shard(4).ended = EndedSessions::default();
        let (handle, _rx) = ConnectionHandle::new(4, session("t"), 4, Arrival::default());
        assert_eq!(slot.register(handle), Err(Refusal::SessionEnded));

        // The session ended after the upgrade read the database but before it reserved: the
        // memory refuses the place.
        hub.close_session(4, &session("u"), CloseCode::SessionEnded);
        assert_eq!(
            hub.reserve(4, &session("u")).err(),
            Some(Refusal::SessionEnded)
        );
    }

    #[test]
    fn ended_sessions_are_forgotten_once_their_tokens_expired() {
        let mut ended = EndedSessions::default();
        let start = Instant::now();
        ended.remember(1, &session("a"), start + TTL, start);
        assert!(ended.contains(1, &session("a"), start + TTL - Duration::from_secs(1)));
        assert!(!ended.contains(1, &session("a"), start + TTL));
        assert!(!ended.contains(2, &session("a"), start), "per user");
        ended.remember(1, &session("b"), start + TTL * 2, start + TTL);
        // Ending it again keeps the first deadline: no token was signed for it since.
        ended.remember(1, &session("b"), start + TTL * 3, start + TTL);
        ended.remember(1, &session("c"), start + TTL * 3, start + TTL + TTL / 2);
        assert_eq!(
            ended.len(),
            2,
            "the expired one is gone, the repeated one counted once"
        );
        assert!(!ended.contains(1, &session("b"), start + TTL * 2));
        assert!(ended.contains(1, &session("c"), start + TTL * 2));
    }

    #[test]
    fn ended_sessions_are_bounded_and_forget_the_oldest_first() {
        let mut ended = EndedSessions::default();
        let now = Instant::now();
        for n in 0..ENDED_PER_SHARD * 3 {
            ended.remember(n as UserId, &session("s"), now + TTL, now);
        }
        assert_eq!(ended.len(), ENDED_PER_SHARD);
        assert_eq!(ended.order.len(), ENDED_PER_SHARD);
        assert!(
            !ended.contains(0, &session("s"), now),
            "the oldest went first"
        );
        let newest = (ENDED_PER_SHARD * 3 - 1) as UserId;
        assert!(ended.contains(newest, &session("s"), now));

        // Through the hub too: a flood of logouts keeps each shard at its bound.
        let hub = hub(5);
        for n in 0..ENDED_PER_SHARD * 4 {
            hub.close_session(1, &session(&n.to_string()), CloseCode::SessionEnded);
        }
        assert_eq!(hub.shard(1).ended.len(), ENDED_PER_SHARD);
    }

    #[test]
    fn a_full_queue_closes_only_that_connection() {
        let hub = hub(5);
        let (slow, _slow_rx) = open(&hub, 1, "s", 1);
        let (fast, mut fast_rx) = open(&hub, 1, "s", 8);
        let event = Outbound::event("{\"event\":\"pong\"}".into());
        hub.send_to_user(1, &event);
        hub.send_to_user(1, &event);
        assert_eq!(slow.control.close_code(), Some(CloseCode::Overflow));
        assert_eq!(fast.control.close_code(), None);
        assert!(fast_rx.try_recv().is_ok() && fast_rx.try_recv().is_ok());
    }

    #[test]
    fn close_user_closes_only_that_users_sockets() {
        let hub = hub(5);
        let (first, _r1) = open(&hub, 4, "a", 4);
        let (second, _r2) = open(&hub, 4, "b", 4);
        let (other, _r3) = open(&hub, 5, "a", 4);
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
    fn the_first_close_code_wins_and_4001_has_two_reasons() {
        let (h, _rx) = ConnectionHandle::new(1, session("s"), 4, Arrival::default());
        h.control.close(CloseCode::SessionEnded);
        h.control.close(CloseCode::GoingAway);
        assert_eq!(h.control.close_code(), Some(CloseCode::SessionEnded));
        assert_eq!(CloseCode::SessionEnded.wire(), 4001);
        assert_eq!(CloseCode::Kicked.wire(), 4001);
        assert_ne!(CloseCode::SessionEnded.reason(), CloseCode::Kicked.reason());
    }

    #[test]
    fn queue_depth_counts_what_waits() {
        let (h, mut rx) = ConnectionHandle::new(1, session("s"), 8, Arrival::default());
        assert_eq!(h.queue_depth(), 0);
        h.offer(Outbound::event("{}".into()));
        h.offer(Outbound::event("{}".into()));
        assert_eq!(h.queue_depth(), 2);
        rx.try_recv().unwrap();
        assert_eq!(h.queue_depth(), 1);
    }

    #[test]
    fn except_skips_the_origin_connection() {
        let hub = hub(5);
        let (origin, mut origin_rx) = open(&hub, 3, "s", 4);
        let (_other, mut other_rx) = open(&hub, 3, "s", 4);
        hub.send_to_user_except(3, Some(origin.id), &Outbound::event("{}".into()));
        assert!(origin_rx.try_recv().is_err());
        assert!(other_rx.try_recv().is_ok());
    }
}
