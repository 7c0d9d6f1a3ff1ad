//! `teachlyd serve` as a process: what it writes to its log, and how it stops on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{TestDb, TestUser, WsClient, session_user};
use crate::on_both_backends;

/// A running `teachlyd serve` whose stderr is collected line by line.
struct Daemon {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "teachlyd-daemon-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Daemon {
    /// Starts the binary on a port of its choosing, with `config` as its file; answers once it serves.
    async fn start(database_url: &str, config: &str, log_level: &str) -> Self {
        Self::start_with_env(database_url, config, log_level, &[]).await
    }

    /// `start`, with more environment variables for the process (and no `LOG_LEVEL` when
    /// `log_level` is empty).
    async fn start_with_env(
        database_url: &str,
        config: &str,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempdir::Dir::new("serve");
        let path = dir.0.join("config.toml");
        std::fs::write(
            &path,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_teachlyd"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .envs((!log_level.is_empty()).then_some(("LOG_LEVEL", log_level)))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("teachlyd starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_sender, addr) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = without_colours(&line);
                if line.contains("teachlyd is serving")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ =
                        addr_sender.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || addr.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("teachlyd did not start: {}", log.lock().unwrap()));
        Self {
            child,
            base: format!("http://{addr}"),
            log,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the daemon answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn dev_login(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post("/auth/dev-login", None, &json!({ "name": name }))
            .await;
        assert_eq!(status, 200, "{body}");
        session_user(&body)
    }

    /// Replaces the config file (after the `[server]` section `start` wrote) and sends SIGHUP.
    fn reload_with(&self, config: &str) {
        let path = self._dir.0.join("config.toml");
        std::fs::write(
            &path,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
        )
        .unwrap();
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (at most 10 s) until the log holds `wanted` `times` times; answers the log.
    async fn logged(&self, wanted: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.matches(wanted).count() >= times {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{wanted:?} not logged {times} times: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ws_url(&self, query: &str) -> String {
        format!("{}/ws{query}", self.base.replace("http://", "ws://"))
    }

    /// Sends SIGTERM and waits for the process to end; answers how it ended and how long it took.
    async fn terminate(mut self) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (status, self.log, self._dir)
        })
        .await
        .unwrap();
        let (status, log, _dir) = status;
        // The reader thread may still be copying the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = log.lock().unwrap().clone();
        (status.expect("the daemon ends"), started.elapsed(), log)
    }
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}

on_both_backends! {
    async fn no_log_level_writes_message_text_or_tokens(backend: Backend) {
        let db = TestDb::create(backend).await;
        for level in ["trace", "trace,tungstenite=trace,html5ever=trace,hyper=trace,warp=trace"] {
            let daemon = Daemon::start(&db.url, "", level).await;
            let alice = daemon.dev_login("alice").await;
            let bob = daemon.dev_login("bob").await;
            let secret_text = "quadratic-equations-at-seven-kittens";
            let mut bob_ws = WsClient::connect(&daemon.ws_url(&format!("?access_token={}", bob.access_token)), None)
                .await
                .expect("bob's socket opens");
            let mut alice_ws = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token))
                .await
                .expect("alice's socket opens");
            alice_ws
                .send_json(&json!({"event": "message", "to": bob.id, "message": format!("<b>{secret_text}</b> by socket")}))
                .await;
            alice_ws.until("message_sent").await;
            bob_ws.until("new_message").await;
            let (status, _) = daemon
                .post(
                    &format!("/conversations/{}/messages", bob.id),
                    Some(&alice.access_token),
                    &json!({"message": format!("{secret_text} by REST")}),
                )
                .await;
            assert_eq!(status, 201);
            let (status, _) = daemon
                .post("/auth/refresh", None, &json!({"refresh_token": bob.refresh_token}))
                .await;
            assert_eq!(status, 200);
            alice_ws.close().await;
            bob_ws.close().await;
            let (status, _, log) = daemon.terminate().await;
            assert!(status.success(), "{log}");
            assert!(log.contains("request"), "the daemon logged at {level}: {log}");
            for (what, secret) in [
                ("message text", secret_text),
                ("access token", alice.access_token.as_str()),
                ("access token in a query", bob.access_token.as_str()),
                ("refresh token", bob.refresh_token.as_str()),
            ] {
                assert!(!log.contains(secret), "{what} in the log at LOG_LEVEL={level}");
            }
        }
    }

    async fn sigterm_ends_serve_in_time_while_the_database_is_locked(backend: Backend) {
        let db = TestDb::create(backend).await;
        let config = "shutdown_grace = \"2s\"\n[database]\nwrite_timeout = \"5s\"\n";
        let daemon = Daemon::start(&db.url, config, "info").await;
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let mut alice_ws = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token))
            .await
            .expect("alice's socket opens");
        let frame = |n: usize| json!({"event": "message", "to": bob.id, "message": format!("note {n}"), "client_id": format!("n-{n}")});
        alice_ws.send_json(&frame(0)).await;
        alice_ws.until("message_sent").await;
        let lock = db.lock_writes().await;
        for n in 1..4 {
            alice_ws.send_json(&frame(n)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, took, log) = daemon.terminate().await;
        assert!(took <= Duration::from_secs(2 + 5), "serve took {took:?} to stop: {log}");
        assert_eq!(status.code(), Some(0), "{log}");
        // Whatever the socket heard before it closed, none of the held messages was acknowledged.
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), alice_ws.next_frame()).await {
            assert_ne!(event["event"], "message_sent", "{event}");
        }
        lock.close().await;
    }
}

/// Reads what `serve` tells systemd, one datagram at a time, as systemd's notify socket would.
struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempdir::Dir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempdir::Dir::new("notify");
        let path = dir.0.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("the notify socket binds");
        Self {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next datagram that holds `wanted` (datagrams before it are skipped), as its lines.
    async fn until(&self, wanted: &str) -> Vec<String> {
        let mut buffer = vec![0; 4096];
        loop {
            let length =
                tokio::time::timeout(Duration::from_secs(10), self.socket.recv(&mut buffer))
                    .await
                    .unwrap_or_else(|_| panic!("no {wanted} within 10 s"))
                    .unwrap();
            let text =
                String::from_utf8(buffer[..length].to_vec()).expect("notifications are text");
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.iter().any(|line| line.contains(wanted)) {
                return lines;
            }
        }
    }
}

on_both_backends! {
    async fn serve_tells_systemd_it_is_ready_alive_and_stopping(backend: Backend) {
        let db = TestDb::create(backend).await;
        let notify = NotifySocket::bind();
        let env = [("NOTIFY_SOCKET", notify.path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")];
        let daemon = Daemon::start_with_env(&db.url, "", "info", &env).await;
        let ready = notify.until("READY=1").await;
        let health = daemon.http.get(format!("{}/health", daemon.base)).send().await.expect("it serves once ready");
        assert_eq!(health.status(), 200);
        assert!(ready.iter().any(|line| line == "STATUS=serving 0 connections of 0 users"), "{ready:?}");

        let alice = daemon.dev_login("alice").await;
        let _socket = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token)).await.expect("a socket opens");
        let started = Instant::now();
        let alive = notify.until("STATUS=serving 1 connections of 1 users").await;
        assert!(alive.iter().any(|line| line == "WATCHDOG=1"), "{alive:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "pets come at half the watchdog interval");

        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
        let stopping = notify.until("STOPPING=1").await;
        assert!(stopping.iter().any(|line| line.starts_with("STATUS=stopping")), "{stopping:?}");
        let mut buffer = [0; 4096];
        let later = tokio::time::timeout(Duration::from_millis(300), notify.socket.recv(&mut buffer)).await;
        assert!(later.is_err(), "nothing after STOPPING=1");
    }
}

on_both_backends! {
    // Started by systemd with its output connected to the journal (`JOURNAL_STREAM`), `serve` logs
    // to the journal's socket. The process runs in a mount namespace of its own in which a socket
    // of this test stands at `/run/systemd/journal/socket`.
    async fn under_systemd_the_log_goes_to_the_journal(backend: Backend) {
        let db = TestDb::create(backend).await;
        let dir = tempdir::Dir::new("journal");
        let socket_path = dir.0.join("socket");
        let journal = tokio::net::UnixDatagram::bind(&socket_path).expect("the journal socket binds");
        let config = dir.0.join("config.toml");
        std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
                      touch /run/systemd/journal/socket && mount --bind \"$0\" /run/systemd/journal/socket && exec \"$@\"";
        let mut child = Command::new("unshare")
            .args(["--mount", "sh", "-c", script, socket_path.to_str().unwrap()])
            .args([env!("CARGO_BIN_EXE_teachlyd"), "serve", "--config", config.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("JOURNAL_STREAM", "8:12345")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let mut buffer = vec![0; 64 * 1024];
        let entry = loop {
            let length = tokio::time::timeout(Duration::from_secs(30), journal.recv(&mut buffer))
                .await
                .expect("a journal entry within 30 s")
                .unwrap();
            let entry = buffer[..length].to_vec();
            if String::from_utf8_lossy(&entry).contains("teachlyd is serving") {
                break entry;
            }
        };
        let fields = journal_fields(&entry);
        assert_eq!(fields.get("PRIORITY").map(String::as_str), Some("6"), "info is syslog's info: {fields:?}");
        assert_eq!(fields.get("SYSLOG_IDENTIFIER").map(String::as_str), Some("teachlyd"), "{fields:?}");
        let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let output = tokio::task::spawn_blocking(move || {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            (child.wait().unwrap(), stderr)
        })
        .await
        .unwrap();
        assert!(output.0.success(), "{}", output.1);
        assert!(!output.1.contains("teachlyd is serving"), "nothing went to stderr as well: {}", output.1);
    }

    async fn a_journal_that_cannot_be_reached_leaves_the_log_on_stderr(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start_with_env(&db.url, "[log]\nformat = \"journald\"\n", "info", &[]).await;
        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
        assert!(log.contains("cannot write to the journal; logging to stderr instead"), "{log}");
    }
}

/// The fields of one entry in the journal's native protocol: `NAME=value\n`, or, for a value that
/// may hold a newline, `NAME\n`, its length as 8 little-endian bytes, the value and `\n`.
fn journal_fields(mut entry: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    while let Some(end) = entry.iter().position(|&b| b == b'=' || b == b'\n') {
        let name = String::from_utf8_lossy(&entry[..end]).into_owned();
        let value;
        if entry[end] == b'=' {
            let rest = &entry[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            value = &rest[..stop];
            entry = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let rest = &entry[end + 1..];
            let length = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            value = &rest[8..8 + length];
            entry = rest.get(8 + length + 1..).unwrap_or_default();
        }
        fields.insert(name, String::from_utf8_lossy(value).into_owned());
    }
    fields
}

on_both_backends! {
    async fn sighup_changes_the_log_level_live_and_a_bad_file_changes_nothing(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start_with_env(&db.url, "[log]\nlevel = \"info\"\n", "", &[]).await;
        let alice = daemon.dev_login("alice").await;
        let open_and_close = || async {
            let mut socket = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token)).await.expect("a socket opens");
            socket.until("user_connected").await;
            socket.close().await;
        };
        open_and_close().await;

        daemon.reload_with("[log]\nlevel = \"debug\"\n[limits]\nmax_message_chars = 500\n");
        let log = daemon.logged("these changes take effect at the next restart", 1).await;
        assert!(log.contains("keys=limits.max_message_chars"), "{log}");
        assert!(!log.contains("socket opened"), "a debug line at info: {log}");
        open_and_close().await;
        daemon.logged("socket opened", 1).await;

        daemon.reload_with("[log\nlevel = \"error\"\n");
        daemon.logged("the configuration did not load; keeping the running one", 1).await;
        let health = daemon.http.get(format!("{}/health", daemon.base)).send().await.expect("it still serves");
        assert_eq!(health.status(), 200);
        open_and_close().await;
        daemon.logged("socket opened", 2).await;

        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
    }
}
