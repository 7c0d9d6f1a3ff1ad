//! The Prometheus metrics of SPEC §9, kept in one registry per running server and served at
//! `/metrics`. Every label takes values from a closed set (route templates, error codes, scopes),
//! never a raw path or a user id, so a client cannot grow the number of series.
//!
//! Counters on the message path are plain atomics; the gauges that mirror state held elsewhere (the
//! hub's sockets, the database pool) are read when Prometheus scrapes, so they cost nothing between
//! scrapes.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};
use warp::http::{Method, StatusCode};

use crate::{rate::Scope, store::PoolUsage};

/// Commit and delivery times: a group commit takes a fraction of a millisecond on an idle
/// database, and a sender gives up after `database.write_timeout` (5 s by default).
const MESSAGE_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// HTTP answers: from a cached health check to a request that waits out `server.request_timeout`.
const HTTP_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Why a message was refused: the error codes of SPEC §5 a send can answer. Known up front so each
/// series exists (at zero) before the first refusal, and `rate()` over it has something to read.
pub const REJECTION_REASONS: [&str; 11] = [
    "empty_message",
    "message_too_long",
    "url_blocked",
    "spam_detected",
    "invalid_recipient",
    "unknown_recipient",
    "invalid_field",
    "rate_limited",
    "unavailable",
    "internal",
    "forbidden",
];

/// How someone signs in (`auth_attempts_total{method}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    Google,
    Dev,
    Refresh,
}

impl SignIn {
    const ALL: [SignIn; 3] = [SignIn::Google, SignIn::Dev, SignIn::Refresh];

    pub fn name(self) -> &'static str {
        match self {
            SignIn::Google => "google",
            SignIn::Dev => "dev",
            SignIn::Refresh => "refresh",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    websocket_connections: IntGauge,
    online_users: IntGauge,
    websocket_connections_opened: IntCounter,
    messages_sent: IntCounter,
    messages_delivered: IntCounter,
    messages_seen: IntCounter,
    messages_rejected: IntCounterVec,
    message_persist: Histogram,
    message_delivery: Histogram,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    rate_limited: IntCounterVec,
    auth_attempts: IntCounterVec,
    db_pool: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Every name and label set below is fixed, so a failure here is a bug caught by any test.
        let register = |metric: Box<dyn Collector>| {
            registry
                .register(metric)
                .expect("a valid metric, registered once");
        };
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("a valid gauge");
            register(Box::new(gauge.clone()));
            gauge
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("a valid counter");
            register(Box::new(counter.clone()));
            counter
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let counters = IntCounterVec::new(Opts::new(name, help), labels).expect("valid labels");
            register(Box::new(counters.clone()));
            counters
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let gauges = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid labels");
            register(Box::new(gauges.clone()));
            gauges
        };
        let histograms = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let histograms = HistogramVec::new(opts, labels).expect("valid buckets and labels");
            register(Box::new(histograms.clone()));
            histograms
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let histogram = Histogram::with_opts(opts).expect("valid buckets");
            register(Box::new(histogram.clone()));
            histogram
        };
        gauges(
            "teachly_build_info",
            "Always 1; the version of the running binary",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        let metrics = Self {
            websocket_connections: gauge("teachly_websocket_connections", "WebSockets open now"),
            online_users: gauge(
                "teachly_online_users",
                "Users with at least one WebSocket open now",
            ),
            websocket_connections_opened: counter(
                "teachly_websocket_connections_opened_total",
                "WebSockets registered since start",
            ),
            messages_sent: counter(
                "teachly_messages_sent_total",
                "Messages stored since start; a retry answered with a stored message does not count",
            ),
            messages_delivered: counter(
                "teachly_messages_delivered_total",
                "Messages recorded as delivered to their recipient (once per message)",
            ),
            messages_seen: counter(
                "teachly_messages_seen_total",
                "Messages marked seen by their recipient (once per message)",
            ),
            messages_rejected: counters(
                "teachly_messages_rejected_total",
                "Messages refused, by the error code the sender got",
                &["reason"],
            ),
            message_persist: histogram(
                "teachly_message_persist_seconds",
                "Time from a message's acceptance to its commit",
                &MESSAGE_BUCKETS,
            ),
            message_delivery: histogram(
                "teachly_message_delivery_seconds",
                "Time from a message's commit to its frame reaching a socket of the recipient \
                 that was online; the backlog of a reconnecting recipient is not counted",
                &MESSAGE_BUCKETS,
            ),
            http_requests: counters(
                "teachly_http_requests_total",
                "HTTP requests answered, by method, route template and status",
                &["method", "route", "status"],
            ),
            http_duration: histograms(
                "teachly_http_request_duration_seconds",
                "Time from a request's arrival to its answer, by route template",
                &HTTP_BUCKETS,
                &["method", "route"],
            ),
            rate_limited: counters(
                "teachly_rate_limited_total",
                "Requests and WebSocket events refused by a rate limit (SPEC §7), by scope",
                &["scope"],
            ),
            auth_attempts: counters(
                "teachly_auth_attempts_total",
                "Sign-ins and refreshes, by method and result (success or the error code)",
                &["method", "result"],
            ),
            db_pool: gauges(
                "teachly_db_pool_connections",
                "Database connections of the request pool: idle, in_use, and max (its size limit)",
                &["state"],
            ),
            registry,
        };
        for reason in REJECTION_REASONS {
            metrics.messages_rejected.with_label_values(&[reason]);
        }
        for scope in Scope::ALL {
            metrics.rate_limited.with_label_values(&[scope.name()]);
        }
        for method in SignIn::ALL {
            metrics
                .auth_attempts
                .with_label_values(&[method.name(), "success"]);
        }
        metrics
    }

    pub fn websocket_opened(&self) {
        self.websocket_connections_opened.inc();
    }

    /// One message committed, `waited` after it was accepted.
    pub fn message_stored(&self, waited: Duration) {
        self.messages_sent.inc();
        self.message_persist.observe(waited.as_secs_f64());
    }

    /// Messages stored since start (what `teachlyd admin stats` shows).
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.get()
    }

    pub fn messages_delivered(&self, count: usize) {
        self.messages_delivered.inc_by(count as u64);
    }

    /// A live message reached a socket of its recipient, `after` its commit.
    pub fn delivery_took(&self, after: Duration) {
        self.message_delivery.observe(after.as_secs_f64());
    }

    pub fn messages_seen(&self, count: usize) {
        self.messages_seen.inc_by(count as u64);
    }

    pub fn message_rejected(&self, reason: &'static str) {
        self.messages_rejected.with_label_values(&[reason]).inc();
    }

    pub fn rate_limited(&self, scope: Scope) {
        self.rate_limited.with_label_values(&[scope.name()]).inc();
    }

    pub fn auth_attempt(&self, method: SignIn, result: &'static str) {
        self.auth_attempts
            .with_label_values(&[method.name(), result])
            .inc();
    }

    /// One HTTP request answered; `route` is its template, never its path.
    pub fn http_request(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let method = method_label(method);
        self.http_requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(took.as_secs_f64());
    }

    /// The text Prometheus reads, with the gauges set from what they mirror now.
    pub fn render(&self, sockets: usize, online: usize, pool: PoolUsage) -> String {
        self.websocket_connections.set(saturating_i64(sockets));
        self.online_users.set(saturating_i64(online));
        for (state, count) in [
            ("idle", pool.open.saturating_sub(pool.in_use)),
            ("in_use", pool.in_use),
            ("max", pool.max),
        ] {
            self.db_pool
                .with_label_values(&[state])
                .set(saturating_i64(count));
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("the text encoder writes to a Vec");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A method outside HTTP's own set is one label, not one series per invented method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn saturating_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolUsage {
        PoolUsage {
            open: 3,
            in_use: 1,
            max: 10,
        }
    }

    #[test]
    fn every_metric_of_the_spec_is_exported_before_any_traffic() {
        let text = Metrics::new().render(0, 0, pool());
        for name in [
            "teachly_websocket_connections",
            "teachly_online_users",
            "teachly_websocket_connections_opened_total",
            "teachly_messages_sent_total",
            "teachly_messages_delivered_total",
            "teachly_messages_seen_total",
            "teachly_messages_rejected_total{reason=\"spam_detected\"}",
            "teachly_message_persist_seconds_bucket",
            "teachly_message_delivery_seconds_count",
            "teachly_rate_limited_total{scope=\"ws_messages\"}",
            "teachly_auth_attempts_total{method=\"google\",result=\"success\"}",
            "teachly_db_pool_connections{state=\"in_use\"} 1",
            "teachly_db_pool_connections{state=\"idle\"} 2",
            "teachly_db_pool_connections{state=\"max\"} 10",
            "teachly_build_info{version=\"",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(name), "{name} is missing from\n{text}");
        }
    }

    #[test]
    fn an_invented_method_is_one_series() {
        let metrics = Metrics::new();
        for method in ["BREW", "WHEN", "FOO"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            metrics.http_request(
                &method,
                "unmatched",
                StatusCode::METHOD_NOT_ALLOWED,
                Duration::from_millis(1),
            );
        }
        let text = metrics.render(0, 0, pool());
        assert!(
            text.contains(
                "teachly_http_requests_total{method=\"other\",route=\"unmatched\",status=\"405\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn observations_land_in_their_buckets() {
        let metrics = Metrics::new();
        metrics.message_stored(Duration::from_micros(300));
        metrics.message_stored(Duration::from_millis(30));
        let text = metrics.render(0, 0, pool());
        assert!(text.contains("teachly_messages_sent_total 2"), "{text}");
        assert!(
            text.contains("teachly_message_persist_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("teachly_message_persist_seconds_bucket{le=\"0.05\"} 2"),
            "{text}"
        );
    }
}
