//! Who shares a conversation with whom, remembered for a while, so that a `typing` frame to a peer
//! costs no query: `typing` reaches only a user who shares a conversation with the sender (SPEC §5).
//!
//! Only "they do" is remembered. A conversation starts with its first message, which this instance
//! records as it commits it (`record`), so a remembered answer never needs to be taken back, except
//! after `teachlyd messages purge` deleted every message of a pair: that pair's typing still passes
//! until its entry expires (`REMEMBER_FOR`). "They do not" is asked of the database every time; a
//! socket has at most 16 frames waiting for it, so a client typing to strangers waits on itself.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    domain::UserId,
    store::{Store, StoreResult},
};

/// How long "they share a conversation" is trusted.
const REMEMBER_FOR: Duration = Duration::from_secs(600);
/// At most this many pairs are remembered (a few MiB).
const MAX_PAIRS: usize = 100_000;

pub struct Peers {
    store: Store,
    /// Pairs as (lower id, higher id).
    known_until: Mutex<HashMap<(UserId, UserId), Instant>>,
}

fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}

impl Peers {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            known_until: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `a` and `b` share a conversation, from memory when it was learned lately.
    pub async fn share_conversation(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        if self
            .entries()
            .get(&pair(a, b))
            .is_some_and(|until| *until > Instant::now())
        {
            return Ok(true);
        }
        let shared = self.store.share_conversation(a, b).await?;
        if shared {
            self.record(a, b);
        }
        Ok(shared)
    }

    /// A message between `a` and `b` was stored: they share a conversation from now on.
    pub fn record(&self, a: UserId, b: UserId) {
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= MAX_PAIRS {
            entries.retain(|_, until| *until > now);
            // Mostly live pairs: start afresh rather than sweep again at the next insert (each one
            // comes back with one query when it is next asked about).
            if entries.len() > MAX_PAIRS / 2 {
                entries.clear();
            }
        }
        entries.insert(pair(a, b), now + REMEMBER_FOR);
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(UserId, UserId), Instant>> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.known_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
