//! `/metrics` (SPEC §9): what a scrape says after known traffic, who may read it, that every metric
//! the dashboards and alerts name is exported, and a real Prometheus scraping a real teachlyd.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};

use crate::common::{TestApp, daemon::tempdir, eventually, eventually_within};
use crate::on_both_backends;

async fn scrape(app: &TestApp) -> String {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "Prometheus' text format"
    );
    response.text().await.unwrap()
}

/// The value of the series written exactly as `series` (name and labels), if exported.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|rest| rest.trim().parse().expect("a number"))
        .next()
}

/// Every metric name the exposition carries a sample of.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

on_both_backends! {
    async fn a_scrape_counts_exactly_the_traffic_it_saw(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut bob_ws = app.connect(&bob).await;
        let mut last = 0;
        for n in 0..5 {
            let (status, body) = app.send(&alice, bob.id, &format!("lesson {n} at noon")).await;
            assert_eq!(status, 201, "{body}");
            last = body["id"].as_i64().unwrap();
        }
        assert_eq!(app.send(&alice, bob.id, "   ").await.0, 422);
        assert_eq!(app.send(&alice, alice.id, "me").await.0, 422);
        for _ in 0..5 {
            bob_ws.until("new_message").await;
        }
        let (status, body) = app
            .post(
                &format!("/conversations/{}/seen", alice.id),
                Some(&bob.access_token),
                &json!({ "up_to": last }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        eventually("five deliveries are recorded", || async {
            value(&scrape(&app).await, "teachly_messages_delivered_total") == Some(5.0)
        })
        .await;

        let text = scrape(&app).await;
        for (series, expected) in [
            ("teachly_messages_sent_total", 5.0),
            ("teachly_messages_seen_total", 5.0),
            ("teachly_message_persist_seconds_count", 5.0),
            ("teachly_message_delivery_seconds_count", 5.0),
            ("teachly_messages_rejected_total{reason=\"empty_message\"}", 1.0),
            ("teachly_messages_rejected_total{reason=\"invalid_recipient\"}", 1.0),
            ("teachly_messages_rejected_total{reason=\"spam_detected\"}", 0.0),
            ("teachly_websocket_connections", 1.0),
            ("teachly_online_users", 1.0),
            ("teachly_websocket_connections_opened_total", 1.0),
            ("teachly_auth_attempts_total{method=\"dev\",result=\"success\"}", 2.0),
            (
                "teachly_http_requests_total{method=\"POST\",route=\"/conversations/{peer_id}/messages\",status=\"201\"}",
                5.0,
            ),
            (
                "teachly_http_requests_total{method=\"POST\",route=\"/conversations/{peer_id}/messages\",status=\"422\"}",
                2.0,
            ),
            (
                "teachly_http_request_duration_seconds_count{method=\"POST\",route=\"/conversations/{peer_id}/messages\"}",
                7.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        assert!(value(&text, "teachly_db_pool_connections{state=\"max\"}").unwrap() >= 1.0);
        assert!(value(&text, "process_resident_memory_bytes").unwrap() > 1e6);
        assert!(
            !text.contains(&format!("/conversations/{}", bob.id)),
            "a raw path is never a label"
        );

        bob_ws.close().await;
        eventually("the closed socket leaves the gauges", || async {
            let text = scrape(&app).await;
            value(&text, "teachly_websocket_connections") == Some(0.0)
                && value(&text, "teachly_online_users") == Some(0.0)
        })
        .await;
        app.stop().await;
    }

    async fn refusals_and_failed_sign_ins_are_counted_by_their_code(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.rate_limit.enabled = true;
            config.rate_limit.health_per_minute = 1;
        })
        .await;
        let (status, _) = app.post("/auth/refresh", None, &json!({ "refresh_token": "forged" })).await;
        assert_eq!(status, 401);
        let (status, _) = app.post("/auth/dev-login", None, &json!({ "name": "" })).await;
        assert_eq!(status, 422, "refused before any credential is checked: not an attempt");
        assert_eq!(app.get("/health", None).await.0, 200);
        assert_eq!(app.get("/health", None).await.0, 429);
        let text = scrape(&app).await;
        for (series, expected) in [
            ("teachly_auth_attempts_total{method=\"refresh\",result=\"invalid_token\"}", 1.0),
            ("teachly_auth_attempts_total{method=\"dev\",result=\"success\"}", 0.0),
            ("teachly_rate_limited_total{scope=\"health\"}", 1.0),
            ("teachly_http_requests_total{method=\"GET\",route=\"/health\",status=\"429\"}", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        assert!(
            text.lines().all(|line| !line.contains("route=\"/metrics\"") || !line.contains("429")),
            "scrapes are not rate limited"
        );
        app.stop().await;
    }

    async fn only_the_allowed_addresses_read_the_metrics(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.metrics.allow = vec!["10.0.0.0/8".into()];
        })
        .await;
        let refused = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(refused.status(), 403);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
        let forged = app
            .http
            .get(app.url("/metrics"))
            .header("x-forwarded-for", "10.1.2.3")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "an untrusted peer cannot name its own address");
        app.stop().await;

        let app = TestApp::spawn_with(backend, |config| {
            config.metrics.allow = vec!["10.0.0.0/8".into()];
            config.server.trusted_proxies = vec!["127.0.0.1".into()];
        })
        .await;
        let proxied = |client: &str| {
            app.http
                .get(app.url("/metrics"))
                .header("x-forwarded-for", client)
                .send()
        };
        assert_eq!(proxied("10.1.2.3").await.unwrap().status(), 200);
        assert_eq!(proxied("203.0.113.9").await.unwrap().status(), 403);
        app.stop().await;
    }

    async fn every_metric_the_dashboards_and_alerts_name_is_exported(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        assert_eq!(app.send(&alice, bob.id, "hello").await.0, 201);
        let exported = exported_names(&scrape(&app).await);
        let mut named = BTreeSet::new();
        for file in monitoring_files() {
            for name in metric_names(&file) {
                named.insert(name.clone());
                assert!(
                    exported.contains(&name),
                    "{} names {name}, which a running teachlyd does not export",
                    file.display()
                );
            }
        }
        for family in ["teachly_messages_sent_total", "teachly_message_delivery_seconds_bucket"] {
            assert!(named.contains(family), "the files were read: {family} is on a dashboard");
        }
        app.stop().await;
    }

    async fn a_real_prometheus_scrapes_the_number_that_was_sent(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let prometheus = Prometheus::start(app.addr).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let sent = 37;
        for n in 0..sent {
            assert_eq!(app.send(&alice, bob.id, &format!("question {n}")).await.0, 201);
        }
        let query = "sum(teachly_messages_sent_total{job=\"teachlyd\"})";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let answered = loop {
            let answer = prometheus.query(query).await;
            if answer["data"]["result"][0]["value"][1] == json!(sent.to_string()) {
                break answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not see {sent} messages within 30 s; it last answered {answer}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!("PromQL {query} answered {answered}");
        assert_eq!(answered["status"], "success");
        app.stop().await;
    }
}

/// The dashboards, alerting rules and their tests shipped in `packaging/`.
fn monitoring_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("grafana/dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    assert_eq!(
        files.len(),
        3,
        "the Chat, System Health and User Activity dashboards"
    );
    files.push(root.join("prometheus/rules.yml"));
    files.push(root.join("prometheus/rules.test.yml"));
    files
}

/// The metric names in a file's PromQL: every `expr` of a dashboard, or the whole text of a rule file
/// (its expressions, and the series its tests feed them).
fn metric_names(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let expressions = if file.extension().is_some_and(|ext| ext == "json") {
        let dashboard: Value = serde_json::from_str(&text).unwrap();
        let mut found = Vec::new();
        collect_exprs(&dashboard, &mut found);
        assert!(!found.is_empty(), "{} has no expr", file.display());
        found.join("\n")
    } else {
        text
    };
    let mut names = BTreeSet::new();
    let mut rest = expressions.as_str();
    while let Some(at) = ["teachly_", "process_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let length = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        if !preceded_by_word {
            names.insert(rest[at..at + length].to_owned());
        }
        rest = &rest[at + length..];
    }
    names
}

fn collect_exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => collect_exprs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, found)),
        _ => {}
    }
}

/// A Prometheus server scraping one teachlyd every second, from Debian's `prometheus` package
/// (`.ci/run` unpacks it into `target/tools/prometheus`; `PROMETHEUS` names another binary).
struct Prometheus {
    url: String,
    http: reqwest::Client,
    _process: tokio::process::Child,
    _dir: tempdir::Dir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let binary = std::env::var_os("PROMETHEUS").map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/tools/prometheus/usr/bin/prometheus")
            },
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "Prometheus is needed for this test: {} is missing; .ci/run unpacks Debian's \
             prometheus package there (packaging/unpack-prometheus), or set PROMETHEUS",
            binary.display()
        );
        let dir = tempdir::Dir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: teachlyd\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = tokio::process::Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", binary.display()));
        let prometheus = Self {
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _process: process,
            _dir: dir,
        };
        eventually_within(Duration::from_secs(30), "Prometheus is ready", || async {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send();
            ready.await.is_ok_and(|response| response.status() == 200)
        })
        .await;
        prometheus
    }

    /// An instant query's answer, or `null` while Prometheus cannot answer.
    async fn query(&self, promql: &str) -> Value {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).unwrap();
        url.query_pairs_mut().append_pair("query", promql);
        match self.http.get(url).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}
