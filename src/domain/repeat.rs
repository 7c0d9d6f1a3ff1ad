//! The stateful spam rule: the same text from the same user more than `limit` times within `window`.
//! "The same text" is the same visible text ([`visible::chars`]), ignoring case and spacing, so
//! `<b>buy now</b>`, `<i>buy now</i>` and `BUY  now` are one text.
//!
//! Each user's sends within the window are remembered in order, with a count per text, so no number of
//! other texts can push a repeat out of memory. A refused send is not remembered, so a text holds at
//! most `limit` entries; everything older than the window is dropped. Sharded by user; each lock is
//! held for a few instructions, and a user with nothing recent costs nothing.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{BuildHasher, Hasher, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{content::ContentRejection, visible};

const SHARDS: usize = 16;

/// How many sends one user's memory keeps: 8 a second of the window, and never fewer than 4096. SPEC §7
/// lets a user send at most 3.5 a second (30 per 10 s over WebSocket plus 30 a minute over REST: 210 in
/// the default minute), so only a sender with the rate limits turned off reaches it; the oldest sends
/// are then forgotten, to keep memory bounded even so.
const SENDS_KEPT_PER_SECOND: usize = 8;
const MIN_SENDS_KEPT: usize = 4096;

/// One recent send: the text's fingerprint, its idempotency key's, and when.
#[derive(Debug, Clone, Copy)]
struct Send {
    text: u64,
    client_id: Option<u64>,
    at: Instant,
}

/// One user's sends within the window, oldest first.
#[derive(Debug, Default)]
struct Recent {
    sends: VecDeque<Send>,
    /// How many of `sends` carry each text; never more than `limit`.
    per_text: HashMap<u64, usize>,
    client_ids: HashSet<u64>,
}

impl Recent {
    fn record(&mut self, send: Send) {
        *self.per_text.entry(send.text).or_default() += 1;
        if let Some(client_id) = send.client_id {
            self.client_ids.insert(client_id);
        }
        self.sends.push_back(send);
    }

    fn forget_oldest(&mut self) {
        let Some(send) = self.sends.pop_front() else {
            return;
        };
        if let Some(count) = self.per_text.get_mut(&send.text) {
            *count -= 1;
            if *count == 0 {
                self.per_text.remove(&send.text);
            }
        }
        if let Some(client_id) = send.client_id {
            self.client_ids.remove(&client_id);
        }
    }

    fn forget_before(&mut self, now: Instant, window: Duration) {
        while self
            .sends
            .front()
            .is_some_and(|send| now.saturating_duration_since(send.at) >= window)
        {
            self.forget_oldest();
        }
    }
}

pub struct RepeatGuard {
    limit: usize,
    window: Duration,
    sends_kept: usize,
    /// Keyed per process, so no sender can craft two texts (or keys) that collide.
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<i64, Recent>>]>,
}

impl RepeatGuard {
    /// `limit` 0 turns the rule off.
    pub fn new(limit: usize, window: Duration) -> Self {
        let window_secs = usize::try_from(window.as_secs()).unwrap_or(usize::MAX);
        Self {
            limit,
            window,
            sends_kept: window_secs
                .saturating_add(1)
                .saturating_mul(SENDS_KEPT_PER_SECOND)
                .max(MIN_SENDS_KEPT),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Refuses the send if `user_id` already sent the same text `limit` times within the window before
    /// `now`; otherwise records it. `text` is the stored (sanitized) text that `ContentChecker::check`
    /// answered. A send whose `client_id` was already recorded is a retry of that send, never a repeat.
    /// Call after every other check passed.
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
        let fingerprint = self.fingerprint(text);
        let client_id = client_id.map(|id| self.hasher.hash_one(id));
        let shard = &self.shards[self.hasher.hash_one(user_id) as usize % SHARDS];
        let mut users = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let recent = users.entry(user_id).or_default();
        recent.forget_before(now, self.window);
        if client_id.is_some_and(|id| recent.client_ids.contains(&id)) {
            return Ok(());
        }
        if recent.per_text.get(&fingerprint).copied().unwrap_or(0) >= self.limit {
            return Err(ContentRejection::Spam(format!(
                "the same message was sent more than {} times in {} seconds",
                self.limit,
                self.window.as_secs()
            )));
        }
        recent.record(Send {
            text: fingerprint,
            client_id,
            at: now,
        });
        if recent.sends.len() > self.sends_kept {
            recent.forget_oldest();
        }
        Ok(())
    }

    /// Forgets what fell out of the window, and users with nothing left in it (run now and then).
    pub fn prune(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut users = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            users.retain(|_, recent| {
                recent.forget_before(now, self.window);
                !recent.sends.is_empty()
            });
        }
    }

    /// The visible text, lowercased, with each stretch of spaces read as one and none at either end.
    fn fingerprint(&self, stored: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        let mut started = false;
        let mut space = false;
        for c in visible::chars(stored) {
            if c.is_whitespace() {
                space = started;
                continue;
            }
            if space {
                hasher.write_u32(u32::from(' '));
                space = false;
            }
            started = true;
            for lower in c.to_lowercase() {
                hasher.write_u32(u32::from(lower));
            }
        }
        hasher.finish()
    }
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
    fn fillers_do_not_push_out_a_repeat() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |second: u64| start + Duration::from_millis(second * 500);
        for n in 0..3 {
            assert!(guard.check_and_record(1, "buy now", None, at(n)).is_ok());
        }
        for n in 0..46 {
            let filler = format!("filler {n}");
            assert!(guard.check_and_record(1, &filler, None, at(3 + n)).is_ok());
        }
        for copy in ["fourth", "fifth"] {
            let repeat = guard.check_and_record(1, "buy now", None, at(50));
            assert_eq!(
                repeat.map_err(|rejection| rejection.code()),
                Err("spam_detected"),
                "the {copy} copy"
            );
        }
    }

    #[test]
    fn markup_case_and_spacing_do_not_make_a_new_text() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for text in ["<b>buy now</b>", "<b>BUY now</b>", "<b>buy  now</b>"] {
            assert!(guard.check_and_record(1, text, None, now).is_ok(), "{text}");
        }
        for text in [
            "<b>buy now</b>",
            "<i>buy now</i>",
            "BUY  now",
            "<em>buy&nbsp;now</em>",
            "buy\u{200B} now",
            "b<u></u>uy now",
        ] {
            let repeat = guard.check_and_record(1, text, None, now);
            assert_eq!(
                repeat.map_err(|rejection| rejection.code()),
                Err("spam_detected"),
                "{text:?}"
            );
        }
        assert!(
            guard
                .check_and_record(1, "buy now later", None, now)
                .is_ok()
        );
    }

    #[test]
    fn a_retry_is_known_after_many_other_sends() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for key in ["c-1", "c-2", "c-3"] {
            assert!(guard.check_and_record(1, "burst", Some(key), now).is_ok());
        }
        for n in 0..100 {
            let filler = format!("filler {n}");
            assert!(guard.check_and_record(1, &filler, None, now).is_ok());
        }
        assert!(
            guard.check_and_record(1, "burst", Some("c-2"), now).is_ok(),
            "a retry"
        );
        let fourth = guard.check_and_record(1, "burst", Some("c-4"), now);
        assert_eq!(fourth.unwrap_err().code(), "spam_detected");
    }

    #[test]
    fn the_window_slides() {
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |second: u64| start + Duration::from_secs(second);
        for second in [0, 30, 40] {
            assert!(guard.check_and_record(1, "hi", None, at(second)).is_ok());
        }
        assert!(guard.check_and_record(1, "hi", None, at(59)).is_err());
        assert!(
            guard.check_and_record(1, "hi", None, at(60)).is_ok(),
            "the first fell out"
        );
        assert!(guard.check_and_record(1, "hi", None, at(61)).is_err());
    }

    #[test]
    fn memory_is_bounded_by_the_window_and_a_cap_far_above_the_rate_limits() {
        let kept = |guard: &RepeatGuard| -> usize {
            let shards = guard.shards.iter();
            shards
                .map(|s| {
                    s.lock()
                        .unwrap()
                        .values()
                        .map(|r| r.sends.len())
                        .sum::<usize>()
                })
                .sum()
        };
        let guard = RepeatGuard::new(3, Duration::from_secs(60));
        // SPEC §7 allows 210 sends a minute (WebSocket and REST together).
        assert!(guard.sends_kept >= 10 * 210);
        let now = Instant::now();
        for _ in 0..100 {
            let _ = guard.check_and_record(1, "same", None, now);
        }
        assert_eq!(kept(&guard), 3, "a refused send is not remembered");
        for n in 0..guard.sends_kept + 100 {
            assert!(
                guard
                    .check_and_record(1, &format!("text {n}"), None, now)
                    .is_ok()
            );
        }
        assert_eq!(kept(&guard), guard.sends_kept);
        let sizes = guard.shards.iter().find_map(|s| {
            s.lock()
                .unwrap()
                .get(&1)
                .map(|r| (r.per_text.len(), r.client_ids.len()))
        });
        assert_eq!(
            sizes,
            Some((guard.sends_kept, 0)),
            "counts follow the sends"
        );
        guard.prune(now + Duration::from_secs(60));
        assert_eq!(kept(&guard), 0);
        let hour = RepeatGuard::new(3, Duration::from_secs(3600));
        assert!(
            hour.sends_kept >= 2 * 3600 * 7 / 2,
            "a longer window keeps more"
        );
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
