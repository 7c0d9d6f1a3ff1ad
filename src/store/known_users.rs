//! Users known to exist, remembered for a while, so that checking a message's recipient costs no query
//! on the hot path. A user deleted from the database stops being known when their entry expires, or
//! at once when a write about them fails (`forget`); until then a message to them fails alone, on
//! its foreign key, without failing its batch.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Store, StoreResult};
use crate::domain::UserId;

/// How long a positive answer is trusted.
const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Past this many entries, expired ones are swept on the next insert.
const SWEEP_ABOVE: usize = 100_000;

pub struct KnownUsers {
    store: Store,
    known_until: Mutex<HashMap<UserId, Instant>>,
}

impl KnownUsers {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            known_until: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `id` names a user, answered from memory when it was checked within the last minute.
    pub async fn exists(&self, id: UserId) -> StoreResult<bool> {
        let now = Instant::now();
        if self.entries().get(&id).is_some_and(|until| *until > now) {
            return Ok(true);
        }
        if id <= 0 || !self.store.user_exists(id).await? {
            return Ok(false);
        }
        let mut entries = self.entries();
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, until| *until > now);
        }
        entries.insert(id, now + REMEMBER_FOR);
        Ok(true)
    }

    /// Forgets `id`, so that the next check asks the database.
    pub fn forget(&self, id: UserId) {
        self.entries().remove(&id);
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Instant>> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.known_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
