//! Configuration: built-in defaults, then the TOML file, then the fixed environment names of SPEC §2,
//! then `validate`. Every error names the key to fix.

mod duration;
mod secret;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use duration::{DurationParseError, HumanDuration};
pub use secret::{Secret, mask_url_password};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/teachlyd/config.toml";
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// Tabs refreshing at once are milliseconds apart; anything near a minute is a replayed copy.
const LONGEST_REFRESH_REUSE_GRACE: HumanDuration = HumanDuration::secs(60);

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub spam: SpamConfig,
    pub urls: UrlsConfig,
    pub admin: AdminConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    pub listen: String,
    pub cors_origins: Vec<String>,
    /// CIDRs of the reverse proxies whose `X-Forwarded-For` names the client; from anyone else the
    /// header is ignored, so a client cannot choose its own rate-limit key.
    pub trusted_proxies: Vec<String>,
    pub shutdown_grace: HumanDuration,
    /// A client that has not sent a whole request head within this is disconnected.
    pub header_timeout: HumanDuration,
    /// A request whose route has not answered within this gets 408 (a body trickled in slowly).
    pub request_timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DatabaseConfig {
    #[serde(serialize_with = "secret::serialize_masked_url")]
    pub url: String,
    pub auto_migrate: bool,
    pub max_connections: u32,
    /// A message not committed within this is refused with `unavailable`; the client retries with
    /// the same `client_id`.
    pub write_timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    pub google_client_ids: Vec<String>,
    pub google_jwks_url: String,
    pub google_issuers: Vec<String>,
    pub access_token_ttl: HumanDuration,
    pub refresh_token_ttl: HumanDuration,
    /// How long a just-spent refresh token still answers a pair of its family, so that two tabs
    /// refreshing at once do not look like a stolen token.
    pub refresh_reuse_grace: HumanDuration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_login: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<Secret<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The journal when started by systemd with its output connected to it (`JOURNAL_STREAM`), else text.
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LimitsConfig {
    pub max_message_chars: usize,
    pub max_frame_bytes: usize,
    pub max_connections_per_user: usize,
    pub outbound_queue: usize,
    /// The server pings every socket this often; one silent for three intervals is dropped.
    pub ping_interval: HumanDuration,
    /// Open TCP connections (HTTP and WebSocket) at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    /// Open TCP connections from one address; a trusted proxy is exempt.
    pub max_connections_per_ip: usize,
}

/// SPEC §7. Counts are per client IP unless the name says otherwise; each limit allows its whole
/// count as a burst and refills evenly over its period.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub health_per_minute: u32,
    pub auth_per_minute: u32,
    /// Per user (per IP for a request without a valid token): GET routes of the chat API.
    pub chat_reads_per_minute: u32,
    /// Per user (per IP without a valid token): the other chat API routes.
    pub chat_writes_per_minute: u32,
    pub ws_upgrades_per_minute: u32,
    /// Per user, over all of their sockets.
    pub ws_messages_per_10s: u32,
    pub ws_messages_burst: u32,
    /// Per user.
    pub typing_per_second: u32,
    /// Refused frames in 10 s after which a socket is closed with 1008.
    pub ws_flood_close: u32,
    /// Keys each limiter remembers at most; beyond, the least limited half is forgotten.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SpamConfig {
    pub max_repeated_chars: usize,
    pub max_urls: usize,
    pub duplicate_limit: usize,
    pub duplicate_window: HumanDuration,
    pub blocked_words: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct UrlsConfig {
    pub blocked_domains: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {
    /// The Unix socket `teachlyd admin` talks to the running daemon over.
    pub socket: PathBuf,
    /// Members of this group may use the admin socket, besides root and the daemon's own user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {
    /// CIDRs (or addresses) of the clients that may read `/metrics`; everyone else gets 403.
    pub allow: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            allow: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/teachlyd/admin.sock";

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            group: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".into(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            shutdown_grace: HumanDuration::secs(10),
            header_timeout: HumanDuration::secs(10),
            request_timeout: HumanDuration::secs(30),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://teachlyd.db".into(),
            auto_migrate: true,
            max_connections: 10,
            write_timeout: HumanDuration::secs(5),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            google_client_ids: Vec::new(),
            google_jwks_url: GOOGLE_JWKS_URL.into(),
            google_issuers: vec![
                "accounts.google.com".into(),
                "https://accounts.google.com".into(),
            ],
            access_token_ttl: HumanDuration::secs(15 * 60),
            refresh_token_ttl: HumanDuration::secs(30 * 86_400),
            refresh_reuse_grace: HumanDuration::secs(5),
            dev_login: None,
            session_secret: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_chars: 1000,
            max_frame_bytes: 16 * 1024,
            max_connections_per_user: 5,
            outbound_queue: 1024,
            ping_interval: HumanDuration::secs(30),
            max_connections: 20_000,
            max_connections_per_ip: 256,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            health_per_minute: 10,
            auth_per_minute: 10,
            chat_reads_per_minute: 60,
            chat_writes_per_minute: 30,
            ws_upgrades_per_minute: 20,
            ws_messages_per_10s: 30,
            ws_messages_burst: 10,
            typing_per_second: 1,
            ws_flood_close: 100,
            max_keys: 100_000,
        }
    }
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            max_repeated_chars: 30,
            max_urls: 5,
            duplicate_limit: 3,
            duplicate_window: HumanDuration::secs(60),
            blocked_words: Vec::new(),
        }
    }
}

/// A configuration problem, always tied to the key that has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the config file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("unknown config key `{0}`; see config.toml.example for the keys that exist")]
    UnknownKey(String),
    #[error("invalid value for `{key}`{from}: {reason}")]
    Invalid {
        key: String,
        from: String,
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        from: String::new(),
        reason: reason.into(),
    }
}

/// How people sign in, decided once from the config (SPEC §2 "Login modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginModes {
    pub google: bool,
    pub dev_login: bool,
}

/// Where the configuration came from, for `config check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl Config {
    /// The dotted keys (`limits.max_message_chars`) whose values differ in `newer`. Names only: a
    /// value may be a secret.
    pub fn changed_keys(&self, newer: &Config) -> Vec<String> {
        fn diff(
            path: &str,
            old: &serde_json::Value,
            new: &serde_json::Value,
            keys: &mut Vec<String>,
        ) {
            match (old, new) {
                (serde_json::Value::Object(old), serde_json::Value::Object(new)) => {
                    let names: std::collections::BTreeSet<&String> =
                        old.keys().chain(new.keys()).collect();
                    for name in names {
                        let null = serde_json::Value::Null;
                        let path = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}.{name}")
                        };
                        diff(
                            &path,
                            old.get(name).unwrap_or(&null),
                            new.get(name).unwrap_or(&null),
                            keys,
                        );
                    }
                }
                (old, new) if old != new => keys.push(path.to_owned()),
                _ => {}
            }
        }
        let mut keys = Vec::new();
        let as_value = |config: &Config| serde_json::to_value(config).unwrap_or_default();
        diff("", &as_value(self), &as_value(newer), &mut keys);
        // Serialized, the secret is masked the same whatever it is.
        if self.auth.session_secret != newer.auth.session_secret {
            keys.push("auth.session_secret".to_owned());
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Finds the file the way SPEC §2 says (`--config`, `TEACHLYD_CONFIG`, the system path if it exists,
    /// else defaults), applies the environment and validates.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, ConfigSource), ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let path = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => env("TEACHLYD_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    let system = PathBuf::from(DEFAULT_CONFIG_PATH);
                    system.exists().then_some(system)
                }),
        };
        let (mut config, source) = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|error| ConfigError::Unreadable {
                        path: path.clone(),
                        reason: error.to_string(),
                    })?;
                (Self::from_toml(&text, &path)?, ConfigSource::File(path))
            }
            None => (Self::default(), ConfigSource::Defaults),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok((config, source))
    }

    /// Parses a config file's text; unknown keys are errors naming their dotted path.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|error| ConfigError::Syntax {
                path: path.to_path_buf(),
                reason: one_line(&error.to_string()),
            })?;
        let mut unknown = Vec::new();
        let config: Config =
            serde_ignored::deserialize(deserializer, |ignored| unknown.push(ignored.to_string()))
                .map_err(|error| {
                let reason = one_line(&error.to_string());
                ConfigError::Syntax {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        match unknown.into_iter().next() {
            Some(key) => Err(ConfigError::UnknownKey(key)),
            None => Ok(config),
        }
    }

    /// Applies the environment variables whose names SPEC §2 fixes.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let list = |value: String| -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(url) = env("DATABASE_URL") {
            self.database.url = url;
        }
        if let Some(ids) = env("GOOGLE_CLIENT_ID") {
            self.auth.google_client_ids = list(ids);
        }
        if let Some(level) = env("LOG_LEVEL") {
            self.log.level = level;
        }
        if let Some(origins) = env("CORS_ORIGINS") {
            self.server.cors_origins = list(origins);
        }
        if let Some(listen) = env("TEACHLYD_LISTEN") {
            self.server.listen = listen;
        }
        if let Some(secret) = env("TEACHLYD_SESSION_SECRET") {
            self.auth.session_secret = Some(Secret::new(secret));
        }
        if let Some(enabled) = env("RATE_LIMIT_ENABLED") {
            self.rate_limit.enabled = match enabled.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(invalid(
                        "rate_limit.enabled",
                        format!("RATE_LIMIT_ENABLED=`{enabled}` is neither true nor false"),
                    ));
                }
            };
        }
        Ok(())
    }

    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        for origin in &self.server.cors_origins {
            validate_origin(origin)?;
        }
        self.trusted_proxies()?;
        self.metrics_allow()?;
        validate_database_url(&self.database.url)?;
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        self.validate_auth()?;
        validate_log_level(&self.log.level)?;
        self.validate_limits()?;
        self.validate_rate_limits()?;
        self.validate_durations()?;
        for domain in &mut self.urls.blocked_domains {
            *domain = normalize_domain(domain)?;
        }
        if self.spam.blocked_words.iter().any(|w| w.trim().is_empty()) {
            return Err(invalid("spam.blocked_words", "an entry is empty"));
        }
        self.login_modes()?;
        self.validate_admin()?;
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let socket = &self.admin.socket;
        if socket.as_os_str().is_empty() || socket.file_name().is_none() {
            return Err(invalid(
                "admin.socket",
                "must name a socket file, like /run/teachlyd/admin.sock",
            ));
        }
        // sockaddr_un holds 108 bytes including the terminating NUL.
        if socket.as_os_str().len() > 107 {
            return Err(invalid(
                "admin.socket",
                "is longer than the 107 bytes a Unix socket path may have",
            ));
        }
        if let Some(group) = &self.admin.group
            && group.trim().is_empty()
        {
            return Err(invalid(
                "admin.group",
                "is empty; name a group or leave it out",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.google_client_ids.iter().any(|id| id.trim().is_empty()) {
            return Err(invalid("auth.google_client_ids", "an entry is empty"));
        }
        let jwks = url::Url::parse(&auth.google_jwks_url)
            .map_err(|error| invalid("auth.google_jwks_url", format!("not a URL: {error}")))?;
        if !matches!(jwks.scheme(), "http" | "https") {
            return Err(invalid(
                "auth.google_jwks_url",
                "must be an http or https URL",
            ));
        }
        if auth.google_issuers.is_empty() {
            return Err(invalid(
                "auth.google_issuers",
                "must list at least one issuer",
            ));
        }
        if auth.access_token_ttl.0.as_secs() < 10 {
            return Err(invalid("auth.access_token_ttl", "must be at least 10s"));
        }
        if auth.refresh_token_ttl <= auth.access_token_ttl {
            return Err(invalid(
                "auth.refresh_token_ttl",
                "must be longer than auth.access_token_ttl",
            ));
        }
        if auth.refresh_reuse_grace > LONGEST_REFRESH_REUSE_GRACE {
            return Err(invalid(
                "auth.refresh_reuse_grace",
                format!(
                    "must be at most {}s: a longer grace lets a stolen refresh token mint sessions \
                     unnoticed (\"0s\" turns the grace off)",
                    LONGEST_REFRESH_REUSE_GRACE.0.as_secs()
                ),
            ));
        }
        if let Some(secret) = &auth.session_secret
            && secret.expose().len() < 32
        {
            return Err(invalid(
                "auth.session_secret",
                "must be at least 32 bytes long (TEACHLYD_SESSION_SECRET)",
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if !(1..=100_000).contains(&limits.max_message_chars) {
            return Err(invalid(
                "limits.max_message_chars",
                "must be between 1 and 100000",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&limits.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=1000).contains(&limits.max_connections_per_user) {
            return Err(invalid(
                "limits.max_connections_per_user",
                "must be between 1 and 1000",
            ));
        }
        if !(16..=1_000_000).contains(&limits.outbound_queue) {
            return Err(invalid(
                "limits.outbound_queue",
                "must be between 16 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&limits.max_connections) {
            return Err(invalid(
                "limits.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=limits.max_connections).contains(&limits.max_connections_per_ip) {
            return Err(invalid(
                "limits.max_connections_per_ip",
                "must be between 1 and limits.max_connections",
            ));
        }
        Ok(())
    }

    /// A zero count would refuse everything: turning limits off is `rate_limit.enabled = false`.
    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let rate = &self.rate_limit;
        let counts = [
            ("rate_limit.health_per_minute", rate.health_per_minute),
            ("rate_limit.auth_per_minute", rate.auth_per_minute),
            (
                "rate_limit.chat_reads_per_minute",
                rate.chat_reads_per_minute,
            ),
            (
                "rate_limit.chat_writes_per_minute",
                rate.chat_writes_per_minute,
            ),
            (
                "rate_limit.ws_upgrades_per_minute",
                rate.ws_upgrades_per_minute,
            ),
            ("rate_limit.ws_messages_per_10s", rate.ws_messages_per_10s),
            ("rate_limit.ws_messages_burst", rate.ws_messages_burst),
            ("rate_limit.typing_per_second", rate.typing_per_second),
            ("rate_limit.ws_flood_close", rate.ws_flood_close),
        ];
        for (key, count) in counts {
            if !(1..=1_000_000).contains(&count) {
                return Err(invalid(
                    key,
                    "must be between 1 and 1000000 (rate_limit.enabled = false turns limits off)",
                ));
            }
        }
        if !(1_000..=100_000_000).contains(&rate.max_keys) {
            return Err(invalid(
                "rate_limit.max_keys",
                "must be between 1000 and 100000000",
            ));
        }
        Ok(())
    }

    /// Every duration a timer or a token lifetime is built from: zero would make a timer spin (tokio
    /// panics on a zero interval) and a huge value overflows the clock arithmetic.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        let bounded = [
            ("server.shutdown_grace", self.server.shutdown_grace, HOUR),
            ("server.header_timeout", self.server.header_timeout, HOUR),
            ("server.request_timeout", self.server.request_timeout, HOUR),
            ("database.write_timeout", self.database.write_timeout, HOUR),
            ("limits.ping_interval", self.limits.ping_interval, HOUR),
            ("auth.access_token_ttl", self.auth.access_token_ttl, DAY),
            (
                "auth.refresh_token_ttl",
                self.auth.refresh_token_ttl,
                3650 * DAY,
            ),
            ("spam.duplicate_window", self.spam.duplicate_window, DAY),
        ];
        for (key, HumanDuration(value), max_secs) in bounded {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
            if value > std::time::Duration::from_secs(max_secs) {
                let max = HumanDuration::secs(max_secs);
                return Err(invalid(key, format!("must be at most {max}")));
            }
        }
        Ok(())
    }

    /// `server.trusted_proxies` parsed: CIDRs, or single addresses.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        networks("server.trusted_proxies", &self.server.trusted_proxies)
    }

    /// `metrics.allow` parsed: CIDRs, or single addresses.
    pub fn metrics_allow(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        networks("metrics.allow", &self.metrics.allow)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8000 (TEACHLYD_LISTEN)",
                    self.server.listen
                ),
            )
        })
    }

    /// Google sign-in when client ids are set; dev login on loopback, or when `auth.dev_login` says so.
    pub fn login_modes(&self) -> Result<LoginModes, ConfigError> {
        let google = !self.auth.google_client_ids.is_empty();
        if google && self.auth.session_secret.is_none() {
            return Err(invalid(
                "auth.session_secret",
                "Google sign-in needs a session secret of at least 32 bytes (TEACHLYD_SESSION_SECRET)",
            ));
        }
        let loopback = self.listen_addr()?.ip().is_loopback();
        let dev_login = match self.auth.dev_login {
            Some(explicit) => explicit,
            None => !google && loopback,
        };
        if !google && !dev_login {
            let why = if self.auth.dev_login == Some(false) {
                "dev login is turned off and no Google client id is set"
            } else {
                "dev login is only allowed on a loopback address"
            };
            return Err(invalid(
                "auth.google_client_ids",
                format!(
                    "{why}; set auth.google_client_ids (GOOGLE_CLIENT_ID) and auth.session_secret, \
                     or set auth.dev_login = true to allow dev login on {}",
                    self.server.listen
                ),
            ));
        }
        Ok(LoginModes { google, dev_login })
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot print config: {error}\n"))
    }
}

fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint = "use a level (error, warn, info, debug, trace) or a filter like `teachlyd=debug,info` (LOG_LEVEL)";
    // A bare word would parse as a target name and silently log nothing useful.
    let is_filter = level.contains('=') || level.contains(',');
    if !is_filter && !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
        return Err(invalid(
            "log.level",
            format!("`{level}` is not a level; {hint}"),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|error| invalid("log.level", format!("{error}; {hint}")))
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
        return Err(invalid(
            "database.url",
            "an in-memory SQLite database loses every message when teachlyd stops; name a file \
             like sqlite://teachlyd.db (DATABASE_URL)",
        ));
    }
    let supported = ["sqlite:", "postgres://", "postgresql://"];
    if supported.iter().any(|prefix| url.starts_with(prefix)) {
        return Ok(());
    }
    Err(invalid(
        "database.url",
        format!(
            "`{}` is neither a sqlite: nor a postgres:// URL (DATABASE_URL)",
            mask_url_password(url)
        ),
    ))
}

fn validate_origin(origin: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(origin).ok();
    let is_origin = parsed.as_ref().is_some_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.path() == "/"
            && url.query().is_none()
            && !origin.ends_with('/')
    });
    if is_origin {
        Ok(())
    } else {
        Err(invalid(
            "server.cors_origins",
            format!("`{origin}` is not an origin like https://app.teachly.example (CORS_ORIGINS)"),
        ))
    }
}

fn normalize_domain(domain: &str) -> Result<String, ConfigError> {
    let lowered = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !lowered.is_empty()
        && lowered.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(lowered)
    } else {
        Err(invalid(
            "urls.blocked_domains",
            format!("`{domain}` is not a domain name like example.com"),
        ))
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The default values, as a flat map of dotted keys, for comparison with `config.toml.example`.
pub fn defaults_as_toml_value() -> BTreeMap<String, toml::Value> {
    let value = toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Boolean(false));
    let mut flat = BTreeMap::new();
    flatten("", &value, &mut flat);
    flat
}

pub(crate) fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests;

/// A list of CIDRs or single addresses, as `key` holds it.
fn networks(key: &str, entries: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    invalid(
                        key,
                        format!("`{entry}` is neither a CIDR like 10.0.0.0/8 nor an address"),
                    )
                })
        })
        .collect()
}
