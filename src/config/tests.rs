use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn invalid_key(result: Result<(), ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn the_example_documents_every_key_with_its_default() {
    let text = include_str!("../../config.toml.example");
    let example = parse(text).expect("config.toml.example parses");
    assert_eq!(example, Config::default());

    let mut documented = std::collections::BTreeMap::new();
    flatten(
        "",
        &text.parse::<toml::Table>().unwrap().into(),
        &mut documented,
    );
    let commented: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key))
        .collect();
    for key in defaults_as_toml_value().keys() {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            documented.contains_key(key) || commented.contains(&leaf),
            "config.toml.example does not document `{key}`"
        );
    }
    for optional in ["dev_login", "session_secret"] {
        assert!(
            commented.contains(&optional),
            "`auth.{optional}` is documented"
        );
    }
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    assert_eq!(
        parse("[limits]\nmax_frame_byte = 10\n"),
        Err(ConfigError::UnknownKey("limits.max_frame_byte".into()))
    );
    assert_eq!(
        parse("[nonsense]\nx = 1\n"),
        Err(ConfigError::UnknownKey("nonsense".into()))
    );
}

#[test]
fn wrong_types_and_syntax_are_errors() {
    assert!(matches!(
        parse("[limits]\nmax_frame_bytes = \"big\"\n"),
        Err(ConfigError::Syntax { .. })
    ));
    assert!(matches!(
        parse("[server\n"),
        Err(ConfigError::Syntax { .. })
    ));
    assert!(matches!(
        parse("[server]\nshutdown_grace = \"ten\"\n"),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn the_environment_overrides_the_file() {
    let mut config = parse("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
    config
        .apply_env(env(&[
            ("DATABASE_URL", "postgres://u:pw@db/chat"),
            ("GOOGLE_CLIENT_ID", "a.apps, b.apps ,"),
            ("LOG_LEVEL", "debug"),
            ("CORS_ORIGINS", "https://a.example,https://b.example"),
            ("TEACHLYD_LISTEN", "127.0.0.1:7000"),
            ("TEACHLYD_SESSION_SECRET", &"k".repeat(40)),
        ]))
        .unwrap();
    assert_eq!(config.database.url, "postgres://u:pw@db/chat");
    assert_eq!(config.auth.google_client_ids, ["a.apps", "b.apps"]);
    assert_eq!(config.log.level, "debug");
    assert_eq!(
        config.server.cors_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(config.server.listen, "127.0.0.1:7000");
    assert_eq!(config.validate(), Ok(()));
    let printed = config.to_masked_toml();
    assert!(printed.contains("postgres://u:***@db/chat"), "{printed}");
    assert!(
        !printed.contains("pw@") && !printed.contains(&"k".repeat(40)),
        "{printed}"
    );
}

#[test]
fn bad_values_name_their_key() {
    let check = |edit: &dyn Fn(&mut Config)| {
        let mut config = Config::default();
        edit(&mut config);
        invalid_key(config.validate())
    };
    assert_eq!(
        check(&|c| c.server.listen = "localhost".into()),
        "server.listen"
    );
    assert_eq!(
        check(&|c| c.server.cors_origins = vec!["app.example".into()]),
        "server.cors_origins"
    );
    assert_eq!(
        check(&|c| c.database.url = "mysql://x".into()),
        "database.url"
    );
    assert_eq!(
        check(&|c| c.database.url = "sqlite::memory:".into()),
        "database.url"
    );
    assert_eq!(
        check(&|c| c.database.max_connections = 0),
        "database.max_connections"
    );
    assert_eq!(check(&|c| c.log.level = "loud".into()), "log.level");
    assert_eq!(
        check(&|c| c.limits.max_frame_bytes = 10),
        "limits.max_frame_bytes"
    );
    assert_eq!(
        check(&|c| c.limits.max_message_chars = 0),
        "limits.max_message_chars"
    );
    assert_eq!(
        check(&|c| c.limits.outbound_queue = 1),
        "limits.outbound_queue"
    );
    assert_eq!(
        check(&|c| c.auth.google_jwks_url = "ftp://x".into()),
        "auth.google_jwks_url"
    );
    assert_eq!(
        check(&|c| c.auth.refresh_token_ttl = HumanDuration::secs(60)),
        "auth.refresh_token_ttl"
    );
    for zero_or_huge in [HumanDuration::secs(0), HumanDuration::secs(u64::MAX / 2)] {
        assert_eq!(
            check(&|c| c.limits.ping_interval = zero_or_huge),
            "limits.ping_interval"
        );
        assert_eq!(
            check(&|c| c.database.write_timeout = zero_or_huge),
            "database.write_timeout"
        );
        assert_eq!(
            check(&|c| c.server.shutdown_grace = zero_or_huge),
            "server.shutdown_grace"
        );
        assert_eq!(
            check(&|c| c.spam.duplicate_window = zero_or_huge),
            "spam.duplicate_window"
        );
    }
    assert_eq!(
        check(&|c| c.auth.refresh_token_ttl = HumanDuration::secs(100 * 365 * 86_400)),
        "auth.refresh_token_ttl"
    );
    assert_eq!(
        check(&|c| c.auth.access_token_ttl = HumanDuration::secs(2 * 86_400)),
        "auth.access_token_ttl"
    );
    assert_eq!(
        check(&|c| c.urls.blocked_domains = vec!["bad domain".into()]),
        "urls.blocked_domains"
    );
    assert_eq!(
        check(&|c| c.auth.session_secret = Some(Secret::new("short".into()))),
        "auth.session_secret"
    );
}

#[test]
fn the_refresh_reuse_grace_is_at_most_a_minute() {
    let mut config = parse("[auth]\nrefresh_reuse_grace = \"61s\"\n").unwrap();
    match config.validate() {
        Err(error @ ConfigError::Invalid { .. }) => {
            let sentence = error.to_string();
            assert!(
                sentence.contains("auth.refresh_reuse_grace") && sentence.contains("60s"),
                "{sentence}"
            );
        }
        other => panic!("61s was accepted: {other:?}"),
    }
    for allowed in ["0s", "5s", "60s"] {
        let mut config = parse(&format!("[auth]\nrefresh_reuse_grace = \"{allowed}\"\n")).unwrap();
        assert_eq!(config.validate(), Ok(()), "{allowed}");
    }
    assert_eq!(
        Config::default().auth.refresh_reuse_grace,
        HumanDuration::secs(5)
    );
}

#[test]
fn login_modes_follow_the_spec() {
    let mut config = Config::default();
    assert_eq!(
        config.login_modes(),
        Ok(LoginModes {
            google: false,
            dev_login: true
        })
    );

    config.server.listen = "0.0.0.0:8000".into();
    assert_eq!(invalid_key(config.validate()), "auth.google_client_ids");
    config.auth.dev_login = Some(true);
    assert_eq!(
        config.login_modes(),
        Ok(LoginModes {
            google: false,
            dev_login: true
        })
    );

    config.auth.dev_login = None;
    config.auth.google_client_ids = vec!["id.apps".into()];
    assert_eq!(invalid_key(config.validate()), "auth.session_secret");
    config.auth.session_secret = Some(Secret::new("x".repeat(32)));
    assert_eq!(
        config.login_modes(),
        Ok(LoginModes {
            google: true,
            dev_login: false
        })
    );

    let mut loopback_off = Config::default();
    loopback_off.auth.dev_login = Some(false);
    assert_eq!(
        invalid_key(loopback_off.validate()),
        "auth.google_client_ids"
    );
}

#[test]
fn blocked_domains_are_normalized() {
    let mut config = Config::default();
    config.urls.blocked_domains = vec!["Evil.Example.".into()];
    config.validate().unwrap();
    assert_eq!(config.urls.blocked_domains, ["evil.example"]);
}

#[test]
fn protection_keys_refuse_what_would_disable_or_break_them() {
    let check = |edit: &dyn Fn(&mut Config)| {
        let mut config = Config::default();
        edit(&mut config);
        invalid_key(config.validate())
    };
    for (bad, key) in [
        ("10.0.0.0/33", "server.trusted_proxies"),
        ("proxy.internal", "server.trusted_proxies"),
        ("", "server.trusted_proxies"),
    ] {
        assert_eq!(
            check(&|c| c.server.trusted_proxies = vec![bad.into()]),
            key,
            "{bad:?}"
        );
        assert_eq!(
            check(&|c| c.metrics.allow = vec!["127.0.0.1".into(), bad.into()]),
            "metrics.allow",
            "{bad:?}"
        );
    }
    assert_eq!(
        check(&|c| c.rate_limit.health_per_minute = 0),
        "rate_limit.health_per_minute"
    );
    assert_eq!(
        check(&|c| c.rate_limit.ws_flood_close = 0),
        "rate_limit.ws_flood_close"
    );
    assert_eq!(
        check(&|c| c.rate_limit.max_keys = 10),
        "rate_limit.max_keys"
    );
    assert_eq!(
        check(&|c| c.limits.max_connections = 0),
        "limits.max_connections"
    );
    assert_eq!(
        check(&|c| c.limits.max_connections_per_ip = c.limits.max_connections + 1),
        "limits.max_connections_per_ip"
    );
    assert_eq!(
        check(&|c| c.server.header_timeout = "0s".parse().unwrap()),
        "server.header_timeout"
    );
    let mut config = Config::default();
    config.server.trusted_proxies = vec!["10.1.2.3/8".into(), " 192.0.2.7 ".into(), "::1".into()];
    let parsed: Vec<String> = config
        .trusted_proxies()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(parsed, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
    let allowed = Config::default().metrics_allow().unwrap();
    let allows = |address: &str| {
        allowed
            .iter()
            .any(|net| net.contains(&address.parse::<std::net::IpAddr>().unwrap()))
    };
    assert!(
        [
            "127.0.0.1",
            "::1",
            "10.9.8.7",
            "172.31.0.1",
            "192.168.1.1",
            "fd00::1"
        ]
        .into_iter()
        .all(allows)
    );
    assert!(
        !["203.0.113.1", "172.32.0.1", "2001:db8::1"]
            .into_iter()
            .any(allows)
    );
}

#[test]
fn rate_limit_enabled_reads_a_boolean_and_refuses_anything_else() {
    for (value, enabled) in [
        ("false", false),
        ("0", false),
        ("TRUE", true),
        (" on ", true),
    ] {
        let mut config = Config::default();
        config
            .apply_env(env(&[("RATE_LIMIT_ENABLED", value)]))
            .unwrap();
        assert_eq!(config.rate_limit.enabled, enabled, "{value:?}");
    }
    let mut config = Config::default();
    let refused = config.apply_env(env(&[("RATE_LIMIT_ENABLED", "maybe")]));
    assert_eq!(invalid_key(refused), "rate_limit.enabled");
    assert!(config.rate_limit.enabled, "a refused value changes nothing");
}
