//! A keyed rate-limit state of bounded size. Governor's own keyed stores keep every key until a
//! housekeeping pass finds it stale, so a client cycling through a million addresses within one
//! refill period would cost memory for a million keys. This store forgets instead: a full shard drops
//! the half of its keys with the earliest theoretical arrival time, which are the keys closest to a
//! fresh, unlimited state, so forgetting them gives back the least.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::{Mutex, MutexGuard},
};

use governor::{
    nanos::Nanos,
    state::{StateStore, keyed::ShrinkableKeyedStateStore},
};

const SHARDS: usize = 16;

pub struct BoundedStore<K> {
    shards: Box<[Mutex<HashMap<K, Nanos>>]>,
    per_shard: usize,
    /// Randomly seeded, so that a client cannot pick keys that all land in one shard.
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// A store of at most `max_keys` keys (rounded up to a multiple of its shard count).
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(2),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, Nanos>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        // The map holds plain numbers: one left behind by a panic is still sound.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remembered(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }
}

/// Keeps the later half of the arrival times; ties at the median go too, so at least half leave.
fn forget_least_limited<K>(shard: &mut HashMap<K, Nanos>) {
    let mut times: Vec<Nanos> = shard.values().copied().collect();
    let middle = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(middle);
    let median = *median;
    // The capacity stays: the shard fills up to the same bound again.
    shard.retain(|_, at| *at > median);
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(key);
        let previous = shard.get(key).copied();
        // A refusal changes nothing, so a refused key that was not known is not stored either.
        let (outcome, arrival) = f(previous)?;
        if previous.is_none() && shard.len() >= self.per_shard {
            forget_least_limited(&mut shard);
        }
        shard.insert(key.clone(), arrival);
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|_, at| *at >= drop_below);
        }
    }

    fn len(&self) -> usize {
        self.remembered()
    }

    fn is_empty(&self) -> bool {
        self.remembered() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroU32, time::Duration};

    use governor::{Quota, RateLimiter, clock::FakeRelativeClock, middleware::NoOpMiddleware};

    use super::*;

    fn limiter(
        per_minute: u32,
        max_keys: usize,
    ) -> (
        RateLimiter<u32, BoundedStore<u32>, FakeRelativeClock, NoOpMiddleware<Nanos>>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap());
        (
            RateLimiter::new(quota, BoundedStore::new(max_keys), clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_the_refill() {
        let (limiter, clock) = limiter(10, 1000);
        for _ in 0..10 {
            assert!(limiter.check_key(&1).is_ok());
        }
        assert!(limiter.check_key(&1).is_err());
        assert!(limiter.check_key(&2).is_ok(), "another key is unaffected");
        clock.advance(Duration::from_secs(6));
        assert!(limiter.check_key(&1).is_ok(), "one cell back after 6 s");
        assert!(limiter.check_key(&1).is_err());
    }

    #[test]
    fn a_million_keys_stay_within_the_bound() {
        let (limiter, _clock) = limiter(10, 10_000);
        for key in 0..1_000_000 {
            assert!(limiter.check_key(&key).is_ok());
        }
        let store_len = limiter.len();
        assert!(store_len <= 10_000, "{store_len} keys kept");
        assert!(store_len >= 4_000, "only a full shard forgets: {store_len}");
    }

    #[test]
    fn a_full_shard_forgets_the_least_limited_keys_first() {
        let (limiter, _clock) = limiter(10, 64);
        // Key 0 is exhausted: its arrival time lies furthest ahead, so it is remembered longest.
        for _ in 0..10 {
            limiter.check_key(&0).unwrap();
        }
        for key in 1..10_000 {
            let _ = limiter.check_key(&key);
        }
        assert!(
            limiter.check_key(&0).is_err(),
            "the limited key was not forgotten"
        );
    }
}
