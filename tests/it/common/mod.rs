//! The harness: a real server on 127.0.0.1 with a random port, a database of its own per test (SQLite
//! file or PostgreSQL database, dropped afterwards), and real HTTP and WebSocket clients.

pub mod binary;
pub mod chromium;
pub mod daemon;
pub mod db;
pub mod google;
pub mod ws;

use std::time::Duration;

use serde_json::{Value, json};
use teachlyd::{
    config::Config,
    server::{self, Listeners, RunningServer},
};

pub use db::{Backend, TestDb};
pub use ws::{RawSocket, WsClient};

/// Runs each listed test once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run($crate::common::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run($crate::common::Backend::Postgres).await
                }

                async fn run($backend: $crate::common::Backend) $body
            }
        )*
    };
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub config: Config,
    pub http: reqwest::Client,
    server: Option<RunningServer>,
    pub db: TestDb,
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server whose config `adjust` may change first.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        // TEST_LOG=debug shows the server's logs next to a failing test's output.
        if let Ok(level) = std::env::var("TEST_LOG") {
            teachlyd::telemetry::init(&teachlyd::config::LogConfig {
                level,
                format: teachlyd::config::LogFormat::Text,
            });
        }
        let db = TestDb::create(backend).await;
        let mut config = Config::default();
        config.database.url = db.url.clone();
        config.server.listen = "127.0.0.1:0".into();
        config.server.shutdown_grace = "5s".parse().unwrap();
        // Every test signs in and calls from 127.0.0.1 faster than a person would; the rate limits
        // have tests of their own (`limits`), which turn them on.
        config.rate_limit.enabled = false;
        adjust(&mut config);
        config.validate().expect("the test config is valid");
        let server = start(config.clone()).await;
        Self {
            addr: server.addr,
            config,
            http: reqwest::Client::new(),
            server: Some(server),
            db,
        }
    }

    /// Stops the server the way SIGTERM does, then starts a new one on the same database and port.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let mut config = self.config.clone();
        config.server.listen = self.addr.to_string();
        let server = start(config).await;
        self.addr = server.addr;
        self.server = Some(server);
    }

    /// The running server's state, for tests that drive the library directly.
    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("the server runs")
    }

    /// How many sockets the server holds for `user`.
    pub fn open_sockets(&self, user: &TestUser) -> usize {
        self.server
            .as_ref()
            .map_or(0, |server| server.app.hub.connections_of(user.id))
    }

    /// The database connections the server holds open, and how many are lent out right now.
    pub fn pool_usage(&self) -> teachlyd::store::PoolUsage {
        let server = self.server.as_ref().expect("the server runs");
        server.app.store.pool_usage()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub async fn dev_login(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post("/auth/dev-login", None, &json!({ "name": name }))
            .await;
        assert_eq!(status, 200, "dev login failed: {body}");
        session_user(&body)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("GET reaches the server")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.post_raw(path, token, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.expect("POST reaches the server")).await
    }

    /// Sends a message over REST and answers (status, body).
    pub async fn send(&self, from: &TestUser, to: i64, text: &str) -> (u16, Value) {
        self.post(
            &format!("/conversations/{to}/messages"),
            Some(&from.access_token),
            &json!({ "message": text }),
        )
        .await
    }

    pub async fn connect(&self, user: &TestUser) -> WsClient {
        WsClient::connect(&self.ws_url("/ws"), Some(&user.access_token))
            .await
            .expect("the socket opens")
    }

    /// Stops the server the way SIGTERM does, keeping its database (and whatever holds it) as it is.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }
}

async fn start(config: Config) -> RunningServer {
    let addr = config.server.listen.parse().expect("a socket address");
    let http = server::bind(addr).expect("bind a port on 127.0.0.1");
    server::start(config, Listeners { http, admin: None })
        .await
        .expect("the server starts")
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub fn session_user(body: &Value) -> TestUser {
    TestUser {
        id: body["user"]["id"].as_i64().expect("user.id"),
        access_token: body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        refresh_token: body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
    }
}

/// Polls `condition` until it holds, for at most five seconds.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(Duration::from_secs(5), what, condition).await;
}

/// Polls `condition` until it holds, for at most `limit`.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
