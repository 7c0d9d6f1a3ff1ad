//! What SIGHUP changes while serving (SPEC §8): the CORS origins, the spam and URL rules, the rate
//! limits, and (in `telemetry`) the log level. Request paths read the rules through one handle; a reload swaps the
//! whole set at once, so a request sees either the old rules or the new ones, never a mix.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use crate::{
    config::Config,
    domain::{
        content::{ContentChecker, ContentRules},
        repeat::RepeatGuard,
    },
    rate::RateLimits,
};

/// The dotted config keys a reload applies; every other changed key waits for a restart.
pub const LIVE_KEYS: [&str; 5] = [
    "log.level",
    "server.cors_origins",
    "spam.",
    "urls.",
    "rate_limit.",
];

pub fn is_live_key(key: &str) -> bool {
    LIVE_KEYS
        .iter()
        .any(|live| key == *live || (live.ends_with('.') && key.starts_with(live)))
}

/// What keeps running after a reload: `running`, with the values of `LIVE_KEYS` taken from `newer`.
pub fn with_live_keys(running: Config, newer: Config) -> Config {
    let mut kept = running;
    kept.log.level = newer.log.level;
    kept.server.cors_origins = newer.server.cors_origins;
    kept.spam = newer.spam;
    kept.urls = newer.urls;
    kept.rate_limit = newer.rate_limit;
    kept
}

pub struct Live {
    rules: ArcSwap<Rules>,
}

/// One consistent set of the rules a reload may change.
pub struct Rules {
    pub origins: Origins,
    pub content: ContentChecker,
    /// Rebuilt (its counts forgotten) only when `spam.duplicate_*` change.
    pub repeats: Arc<RepeatGuard>,
    repeat_rule: (usize, Duration),
    /// Rebuilt (its counts forgotten) only when `rate_limit.*` change.
    pub rate: Arc<RateLimits>,
}

impl Live {
    pub fn new(config: &Config) -> Self {
        Self {
            rules: ArcSwap::from_pointee(Rules::from_config(config, None)),
        }
    }

    /// The rules now in force. Hold the `Arc` across an await rather than loading twice, so one
    /// request is judged by one set.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Takes the live keys of `newer`. `limits.max_message_chars` belongs to the content rules but
    /// is not live (the OpenAPI document states it), so it stays as the server started with.
    pub fn apply(&self, newer: &Config, max_message_chars: usize) {
        let current = self.rules.load_full();
        let mut newer = newer.clone();
        newer.limits.max_message_chars = max_message_chars;
        self.rules
            .store(Arc::new(Rules::from_config(&newer, Some(&current))));
    }
}

impl Rules {
    fn from_config(config: &Config, previous: Option<&Rules>) -> Self {
        let repeat_rule = (config.spam.duplicate_limit, config.spam.duplicate_window.0);
        let repeats = match previous {
            Some(previous) if previous.repeat_rule == repeat_rule => Arc::clone(&previous.repeats),
            _ => Arc::new(RepeatGuard::new(repeat_rule.0, repeat_rule.1)),
        };
        let rate = match previous {
            Some(previous) if *previous.rate.config() == config.rate_limit => {
                Arc::clone(&previous.rate)
            }
            _ => Arc::new(RateLimits::new(&config.rate_limit)),
        };
        Self {
            origins: Origins(config.server.cors_origins.clone()),
            content: ContentChecker::new(content_rules(config)),
            repeats,
            repeat_rule,
            rate,
        }
    }
}

pub fn content_rules(config: &Config) -> ContentRules {
    ContentRules {
        max_message_chars: config.limits.max_message_chars,
        blocked_domains: config.urls.blocked_domains.clone(),
        max_repeated_chars: config.spam.max_repeated_chars,
        max_urls: config.spam.max_urls,
        blocked_words: config.spam.blocked_words.clone(),
    }
}

/// `server.cors_origins`: the one origin check of HTTP requests and WebSocket upgrades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins(Vec<String>);

impl Origins {
    /// Whether browsers get CORS headers at all: with no origin listed, none are sent and any
    /// origin may open a socket.
    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }

    /// A request without `Origin` comes from a program, not a page, and is always allowed.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                !self.is_restricted() || self.0.iter().any(|allowed| allowed.as_bytes() == origin)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_the_reloadable_sections() {
        for key in [
            "log.level",
            "server.cors_origins",
            "spam.blocked_words",
            "urls.blocked_domains",
            "rate_limit.enabled",
        ] {
            assert!(is_live_key(key), "{key}");
        }
        for key in [
            "log.format",
            "server.listen",
            "spamx",
            "limits.max_message_chars",
        ] {
            assert!(!is_live_key(key), "{key}");
        }
    }

    #[test]
    fn a_reload_keeps_exactly_the_live_keys() {
        let running = Config::default();
        let mut newer = Config::default();
        newer.log.level = "debug".into();
        newer.server.cors_origins = vec!["https://app.teachly.test".into()];
        newer.spam.max_urls += 1;
        newer.urls.blocked_domains = vec!["spam.test".into()];
        newer.rate_limit.auth_per_minute += 1;
        newer.server.shutdown_grace.0 += Duration::from_secs(1);
        newer.limits.max_message_chars += 1;
        let changed = running.changed_keys(&newer);
        let kept = with_live_keys(running, newer.clone());
        // Whatever still differs is what waits for a restart, and none of it is live.
        assert_eq!(
            kept.changed_keys(&newer),
            ["limits.max_message_chars", "server.shutdown_grace"]
        );
        assert_eq!(
            changed.len(),
            kept.changed_keys(&newer).len() + 5,
            "{changed:?}"
        );
    }

    #[test]
    fn an_origin_matches_exactly() {
        let open = Origins(Vec::new());
        assert!(open.allows(Some(b"https://anything.test")));
        let origins = Origins(vec!["https://app.teachly.test".into()]);
        assert!(origins.allows(None));
        assert!(origins.allows(Some(b"https://app.teachly.test")));
        for other in [
            &b"https://app.teachly.test/"[..],
            b"http://app.teachly.test",
            b"https://APP.teachly.test",
            b"https://app.teachly.test.evil.test",
            b"null",
        ] {
            assert!(!origins.allows(Some(other)));
        }
    }

    #[test]
    fn a_reload_keeps_the_repeat_counts_unless_their_rule_changed() {
        let mut config = Config::default();
        let live = Live::new(&config);
        let before = live.rules();
        config.spam.blocked_words = vec!["cheat".into()];
        live.apply(&config, 1000);
        let after = live.rules();
        assert!(Arc::ptr_eq(&before.repeats, &after.repeats));
        assert!(after.content.check("no cheat sheets").is_err());
        assert!(before.content.check("no cheat sheets").is_ok());
        config.spam.duplicate_limit = 7;
        live.apply(&config, 1000);
        assert!(!Arc::ptr_eq(&after.repeats, &live.rules().repeats));
    }

    #[test]
    fn a_reload_keeps_the_rate_counts_unless_a_limit_changed() {
        let mut config = Config::default();
        let live = Live::new(&config);
        let before = live.rules();
        config.spam.max_urls += 1;
        live.apply(&config, 1000);
        assert!(Arc::ptr_eq(&before.rate, &live.rules().rate));
        config.rate_limit.enabled = false;
        live.apply(&config, 1000);
        let after = live.rules();
        assert!(!Arc::ptr_eq(&before.rate, &after.rate));
        assert!(!after.rate.config().enabled);
    }
}
