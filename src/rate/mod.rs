//! Rate limits (SPEC §7): one keyed GCRA limiter per scope, of bounded memory (`store`), built from
//! `rate_limit.*`. A reload (SIGHUP) that changes those keys builds a new set and forgets the counts.

mod store;

use std::{
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

pub use store::BoundedStore;

use crate::{config::RateLimitConfig, domain::UserId};

/// What a limit counts. The name is the `scope` of `rate_limited_total` and of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Health,
    Ready,
    Auth,
    ChatReads,
    ChatWrites,
    WsUpgrades,
    WsMessages,
    Typing,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Health,
        Scope::Ready,
        Scope::Auth,
        Scope::ChatReads,
        Scope::ChatWrites,
        Scope::WsUpgrades,
        Scope::WsMessages,
        Scope::Typing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Health => "health",
            Scope::Ready => "ready",
            Scope::Auth => "auth",
            Scope::ChatReads => "chat_reads",
            Scope::ChatWrites => "chat_writes",
            Scope::WsUpgrades => "ws_upgrades",
            Scope::WsMessages => "ws_messages",
            Scope::Typing => "typing",
        }
    }

    fn quota(self, config: &RateLimitConfig) -> Quota {
        let count = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self {
            Scope::Health | Scope::Ready => Quota::per_minute(count(config.health_per_minute)),
            Scope::Auth => Quota::per_minute(count(config.auth_per_minute)),
            Scope::ChatReads => Quota::per_minute(count(config.chat_reads_per_minute)),
            Scope::ChatWrites => Quota::per_minute(count(config.chat_writes_per_minute)),
            Scope::WsUpgrades => Quota::per_minute(count(config.ws_upgrades_per_minute)),
            Scope::WsMessages => {
                let every = Duration::from_secs(10) / count(config.ws_messages_per_10s).get();
                Quota::with_period(every)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                    .allow_burst(count(config.ws_messages_burst))
            }
            Scope::Typing => Quota::per_second(count(config.typing_per_second)),
        }
    }
}

/// Whom a limit counts: the client's address, or the signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    User(UserId),
}

/// A refusal: the caller may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds, rounded up, for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }

    /// Milliseconds, rounded up, for the WebSocket `error` event.
    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1000) as u64
    }
}

type Limiter = RateLimiter<Key, BoundedStore<Key>, DefaultClock>;

pub struct RateLimits {
    config: RateLimitConfig,
    /// One per `Scope::ALL`, in that order; none when limits are off.
    limiters: Option<Vec<Limiter>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        let clock = DefaultClock::default();
        let limiters = config.enabled.then(|| {
            Scope::ALL
                .iter()
                .map(|scope| {
                    RateLimiter::new(
                        scope.quota(config),
                        BoundedStore::new(config.max_keys),
                        clock.clone(),
                    )
                })
                .collect()
        });
        Self {
            config: config.clone(),
            limiters,
            clock,
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Counts one event of `scope` for `key`; refused when `key` has used up its quota.
    pub fn check(&self, scope: Scope, key: Key) -> Result<(), Limited> {
        let Some(limiters) = &self.limiters else {
            return Ok(());
        };
        let limiter = &limiters[scope as usize];
        limiter.check_key(&key).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Keys remembered over all scopes, for the memory bound's tests and figures.
    pub fn remembered_keys(&self) -> usize {
        self.limiters
            .iter()
            .flatten()
            .map(|limiter| limiter.len())
            .sum()
    }
}

/// Refusals of one socket in the last `FLOOD_WINDOW`; past `rate_limit.ws_flood_close` of them the
/// socket is closed with 1008. Holds nothing until the socket is first refused.
#[derive(Debug, Default)]
pub struct FloodWatch {
    refused: std::collections::VecDeque<Instant>,
}

pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl FloodWatch {
    /// Records one refusal; answers whether the socket has now gone past `limit` in the window.
    pub fn refused(&mut self, limit: u32, now: Instant) -> bool {
        while self
            .refused
            .front()
            .is_some_and(|at| now.duration_since(*at) >= FLOOD_WINDOW)
        {
            self.refused.pop_front();
        }
        self.refused.push_back(now);
        self.refused.len() > limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RateLimitConfig {
        RateLimitConfig::default()
    }

    #[test]
    fn the_eleventh_health_check_in_a_minute_is_refused_with_a_wait() {
        let limits = RateLimits::new(&config());
        let ip = Key::Ip("192.0.2.1".parse().unwrap());
        for _ in 0..10 {
            assert_eq!(limits.check(Scope::Health, ip), Ok(()));
        }
        let refused = limits.check(Scope::Health, ip).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(5));
        assert!(refused.retry_after <= Duration::from_secs(6));
        assert_eq!(refused.retry_after_secs(), 6);
        let other = Key::Ip("192.0.2.2".parse().unwrap());
        assert_eq!(limits.check(Scope::Health, other), Ok(()));
        assert_eq!(
            limits.check(Scope::Ready, ip),
            Ok(()),
            "each scope counts apart"
        );
    }

    #[test]
    fn socket_messages_allow_a_burst_of_ten_then_one_every_third_of_a_second() {
        let limits = RateLimits::new(&config());
        let user = Key::User(7);
        for _ in 0..10 {
            assert_eq!(limits.check(Scope::WsMessages, user), Ok(()));
        }
        let refused = limits.check(Scope::WsMessages, user).unwrap_err();
        assert!(refused.retry_after <= Duration::from_millis(334));
        assert!(refused.retry_after_ms() > 300);
    }

    #[test]
    fn turned_off_nothing_is_refused_or_remembered() {
        let limits = RateLimits::new(&RateLimitConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..1000 {
            assert_eq!(
                limits.check(Scope::Auth, Key::Ip("192.0.2.1".parse().unwrap())),
                Ok(())
            );
        }
        assert_eq!(limits.remembered_keys(), 0);
    }

    #[test]
    fn a_flood_is_counted_over_a_sliding_window() {
        let mut watch = FloodWatch::default();
        let start = Instant::now();
        for i in 0..100 {
            assert!(!watch.refused(100, start + Duration::from_millis(i)));
        }
        assert!(watch.refused(100, start + Duration::from_millis(100)));
        let mut watch = FloodWatch::default();
        for i in 0..1000 {
            // Ten a second never adds up to more than 100 in ten seconds.
            assert!(!watch.refused(100, start + Duration::from_millis(i * 100)));
        }
        assert!(watch.refused.len() <= 101);
    }
}
