//! Load benchmark of the real `teachlyd` binary over loopback. Prints figures; asserts nothing.
//!
//! cargo bench --bench chat_load -- [--backend sqlite|postgres] [--pairs 100] [--messages 100]
//!     [--window 8] [--idle 1000]
//!
//! Each of `pairs` senders has one socket and sends `messages` messages to its own recipient, keeping
//! up to `window` of them unacknowledged (a client flushing its outbox; `--window 1` is one at a
//! time). Texts are words, about 64 bytes, different for every message. The figures are throughput,
//! the latency from send to `message_sent` (committed) and to the recipient's `new_message`, whether
//! every message arrived exactly once, and the server's resident memory per idle socket.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use tokio::sync::Mutex;
use tokio_tungstenite::{connect_async, tungstenite::Message};

struct Options {
    backend: String,
    pairs: usize,
    messages: usize,
    window: usize,
    idle: usize,
}

fn options() -> Options {
    let mut options = Options {
        backend: "sqlite".into(),
        pairs: 100,
        messages: 100,
        window: 8,
        idle: 1000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--backend" => options.backend = value,
            "--pairs" => options.pairs = value.parse().expect("--pairs N"),
            "--messages" => options.messages = value.parse().expect("--messages N"),
            "--window" => options.window = value.parse().expect("--window N (at least 1)"),
            "--idle" => options.idle = value.parse().expect("--idle N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

struct Server {
    child: Child,
    addr: String,
    cleanup: Option<(String, String)>,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_server(backend: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("teachlyd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (url, cleanup) = if backend == "postgres" {
        let admin = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("teachlyd_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0.to_owned();
        (format!("{base}/{name}"), Some((admin, name)))
    } else {
        (format!("sqlite://{}", dir.join("bench.db").display()), None)
    };
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_teachlyd"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("TEACHLYD_LISTEN", &addr)
        .env("LOG_LEVEL", "warn")
        .env("TEACHLYD_CONFIG", dir.join("none.toml"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start teachlyd");
    std::fs::write(dir.join("none.toml"), "").unwrap();
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        addr,
        cleanup,
        dir,
    }
}

async fn login(client: &reqwest::Client, addr: &str, name: &str) -> (i64, String) {
    let body: Value = client
        .post(format!("http://{addr}/auth/dev-login"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        body["user"]["id"].as_i64().unwrap(),
        body["access_token"].as_str().unwrap().to_owned(),
    )
}

const WORDS: [&str; 48] = [
    "the",
    "lesson",
    "about",
    "fractions",
    "starts",
    "after",
    "lunch",
    "please",
    "bring",
    "your",
    "notebook",
    "and",
    "the",
    "worksheet",
    "from",
    "monday",
    "we",
    "will",
    "review",
    "chapter",
    "three",
    "before",
    "moving",
    "on",
    "to",
    "geometry",
    "if",
    "you",
    "have",
    "questions",
    "send",
    "them",
    "here",
    "thanks",
    "see",
    "tomorrow",
    "great",
    "work",
    "on",
    "the",
    "homework",
    "essay",
    "draft",
    "is",
    "due",
    "friday",
    "morning",
    "ok",
];

/// About 64 bytes of words, different for every (pair, n).
fn chat_text(pair: usize, n: usize) -> String {
    let mut seed = (pair as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (n as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut text = String::with_capacity(80);
    while text.len() < 56 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        text.push_str(WORDS[(seed >> 33) as usize % WORDS.len()]);
        text.push(' ');
    }
    text.push_str(&format!("(note {n} of {pair})"));
    text
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name:<22} p50 {:>7.2} ms   p95 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        percentile(&samples, 0.50),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

#[tokio::main]
async fn main() {
    let options = options();
    let server = start_server(&options.backend).await;
    let addr = server.addr.clone();
    let client = reqwest::Client::new();
    println!(
        "teachlyd chat_load: backend {}, {} sender→recipient pairs, {} messages each, window {}, {} idle sockets",
        options.backend, options.pairs, options.messages, options.window, options.idle
    );

    let mut senders = Vec::new();
    let mut recipients = Vec::new();
    for pair in 0..options.pairs {
        senders.push(login(&client, &addr, &format!("sender{pair}")).await);
        recipients.push(login(&client, &addr, &format!("recipient{pair}")).await);
    }

    let started = Instant::now();
    let delivery = Arc::new(Mutex::new(Vec::new()));
    let mut receiving = Vec::new();
    for (_, token) in &recipients {
        let (mut socket, _) = connect_async(format!("ws://{addr}/ws?access_token={token}"))
            .await
            .unwrap();
        let delivery = Arc::clone(&delivery);
        let expected = options.messages;
        receiving.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::with_capacity(expected);
            let mut duplicates = 0usize;
            let mut local = Vec::with_capacity(expected);
            while seen.len() < expected {
                let Some(Ok(Message::Text(text))) = socket.next().await else {
                    continue;
                };
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["event"] == "new_message" {
                    // The client id is `pair-n-microseconds since start` at the moment of sending.
                    let client_id = event["message"]["client_id"].as_str().unwrap().to_owned();
                    let sent_at: u64 = client_id.rsplit('-').next().unwrap().parse().unwrap();
                    let now = started.elapsed().as_micros() as u64;
                    local.push(Duration::from_micros(now.saturating_sub(sent_at)));
                    if !seen.insert(client_id) {
                        duplicates += 1;
                    }
                }
            }
            delivery.lock().await.extend(local);
            (socket, duplicates)
        }));
    }

    let ack = Arc::new(Mutex::new(Vec::new()));
    let load_started = Instant::now();
    let mut sending = Vec::new();
    for (pair, (_, token)) in senders.iter().enumerate() {
        let (mut socket, _) = connect_async(format!("ws://{addr}/ws?access_token={token}"))
            .await
            .unwrap();
        let to = recipients[pair].0;
        let ack = Arc::clone(&ack);
        let messages = options.messages;
        let window = options.window.max(1);
        sending.push(tokio::spawn(async move {
            let mut local = Vec::with_capacity(messages);
            let mut waiting = std::collections::HashMap::with_capacity(window);
            let mut next = 0;
            while local.len() < messages {
                while next < messages && waiting.len() < window {
                    let client_id = format!("{pair}-{next}-{}", started.elapsed().as_micros());
                    let frame = json!({"event": "message", "to": to, "message": chat_text(pair, next), "client_id": client_id});
                    waiting.insert(client_id, Instant::now());
                    socket.send(Message::text(frame.to_string())).await.unwrap();
                    next += 1;
                }
                let Some(Ok(Message::Text(text))) = socket.next().await else { continue };
                let event: Value = serde_json::from_str(&text).unwrap();
                assert_ne!(event["event"], "error", "{event}");
                if event["event"] == "message_sent"
                    && let Some(sent) = event["message"]["client_id"].as_str().and_then(|id| waiting.remove(id))
                {
                    local.push(sent.elapsed());
                }
            }
            ack.lock().await.extend(local);
            socket
        }));
    }
    let mut sockets = Vec::new();
    for task in sending {
        sockets.push(task.await.unwrap());
    }
    let mut duplicates = 0;
    for task in receiving {
        let (socket, twice) = task.await.unwrap();
        duplicates += twice;
        sockets.push(socket);
    }
    let elapsed = load_started.elapsed();
    let total = options.pairs * options.messages;
    println!(
        "throughput             {total} messages in {:.2} s = {:.0} messages/s (committed, acknowledged and delivered)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!("exactly once           every message delivered, {duplicates} delivered twice");
    report(
        "send → message_sent",
        std::mem::take(&mut *ack.lock().await),
    );
    report(
        "send → new_message",
        std::mem::take(&mut *delivery.lock().await),
    );
    drop(sockets);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut idle = Vec::new();
    for n in 0..options.idle {
        let (_, token) = &senders[n % senders.len().max(1)];
        // Each user may hold a few sockets; spread idle sockets over many users.
        let user = if n < senders.len() * 4 {
            token.clone()
        } else {
            login(&client, &addr, &format!("idle{n}")).await.1
        };
        let (socket, _) = connect_async(format!("ws://{addr}/ws?access_token={user}"))
            .await
            .unwrap();
        idle.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    if let Some((admin, name)) = &server.cleanup {
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        println!(
            "database connections   {held} held by the server with {} sockets open (pool size, not per socket)",
            options.idle
        );
    }
    println!(
        "memory                 server RSS {:.1} MiB → {:.1} MiB with {} idle sockets = {:.1} KiB per socket",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        options.idle,
        (after.saturating_sub(before)) as f64 / options.idle.max(1) as f64
    );
    drop(idle);
    if let Some((admin, name)) = server.cleanup.clone() {
        drop(server);
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
    }
}
