//! The stateful spam rule: the same text from the same user more than `limit` times within `window`.
//! Sharded by user; each lock is held for a few instructions, and a user with nothing recent costs
//! nothing.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::content::ContentRejection;

const SHARDS: usize = 16;

/// One recent send: the text's fingerprint, its idempotency key's, and when.
#[derive(Debug, Clone, Copy)]
struct Send {
    text: u64,
    client_id: Option<u64>,
    at: Instant,
}

type Recent = VecDeque<Send>;

pub struct RepeatGuard {
    limit: usize,
    window: Duration,
    shards: Box<[Mutex<HashMap<i64, Recent>>]>,
}

impl RepeatGuard {
    /// `limit` 0 turns the rule off.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Refuses the send if `user_id` already sent the same text `limit` times within the window before
    /// `now`; otherwise records it. A send whose `client_id` was already recorded is a retry of that
    /// send, never a repeat. Call after every other check passed.
    pub fn check_and_record(
        &self,
        user_id: i64,
        text: &str,
        client_id: Option<&str>,
        now: Instant,
    ) -> Result<(), ContentRejection> {
        if self.limit == 0 {
            return Ok(());
        }
        let fingerprint = fingerprint(text);
        let client_id =
            client_id.map(|id| BuildHasherDefault::<DefaultHasher>::default().hash_one(id));
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let shard = &self.shards[hasher.hash_one(user_id) as usize % SHARDS];
        let mut users = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let recent = users.entry(user_id).or_default();
        while recent
            .front()
            .is_some_and(|send| now.saturating_duration_since(send.at) >= self.window)
        {
            recent.pop_front();
        }
        if client_id.is_some() && recent.iter().any(|send| send.client_id == client_id) {
            return Ok(());
        }
        let repeats = recent
            .iter()
            .filter(|send| send.text == fingerprint)
            .count();
        if repeats >= self.limit {
            return Err(ContentRejection::Spam(format!(
                "the same message was sent more than {} times in {} seconds",
                self.limit,
                self.window.as_secs()
            )));
        }
        recent.push_back(Send {
            text: fingerprint,
            client_id,
            at: now,
        });
        // Only what can still matter is kept: `limit` entries per text at most, and none past the window.
        let cap = self.limit * 16;
        while recent.len() > cap {
            recent.pop_front();
        }
        Ok(())
    }

    /// Forgets users with nothing inside the window (run now and then).
    pub fn prune(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut users = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            users.retain(|_, recent| {
                recent
                    .back()
                    .is_some_and(|send| now.saturating_duration_since(send.at) < self.window)
            });
        }
    }
}

/// Texts that differ only in case or spacing count as the same.
fn fingerprint(text: &str) -> u64 {
    let normalized: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    BuildHasherDefault::<DefaultHasher>::default().hash_one(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fourth_identical_send_in_a_minute_is_spam() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let start = Instant::now();
        for n in 0..3 {
            assert!(
                guard
                    .check_and_record(1, "buy now", None, start + Duration::from_secs(n))
                    .is_ok()
            );
        }
        let fourth =
            guard.check_and_record(1, "  BUY   now ", None, start + Duration::from_secs(10));
        assert_eq!(fourth.unwrap_err().code(), "spam_detected");
        assert!(
            guard.check_and_record(2, "buy now", None, start).is_ok(),
            "another user is not affected"
        );
        assert!(
            guard
                .check_and_record(1, "something else", None, start)
                .is_ok()
        );
        assert!(
            guard
                .check_and_record(1, "buy now", None, start + Duration::from_secs(61))
                .is_ok(),
            "the window moved on"
        );
    }

    #[test]
    fn retries_of_one_client_id_are_one_send() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..20 {
            assert!(guard.check_and_record(1, "burst", Some("c-1"), now).is_ok());
        }
        for key in ["c-2", "c-3"] {
            assert!(guard.check_and_record(1, "burst", Some(key), now).is_ok());
        }
        let fourth = guard.check_and_record(1, "burst", Some("c-4"), now);
        assert_eq!(fourth.unwrap_err().code(), "spam_detected");
    }

    #[test]
    fn off_when_the_limit_is_zero() {
        let guard = RepeatGuard::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..10 {
            assert!(guard.check_and_record(1, "same", None, now).is_ok());
        }
    }

    #[test]
    fn idle_users_are_forgotten() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let start = Instant::now();
        guard.check_and_record(1, "hello", None, start).unwrap();
        guard.prune(start + Duration::from_secs(120));
        let users: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(users, 0);
    }
}
