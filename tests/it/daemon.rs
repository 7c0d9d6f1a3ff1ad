//! `teachlyd serve` as a process: what it writes to its log, and how it stops on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::common::{
    TestDb, WsClient,
    daemon::{Daemon, tempdir},
};
use crate::on_both_backends;

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
            // Requests are named by their route's template, never by a path holding ids or a query.
            assert!(log.contains("route=/conversations/{peer_id}/messages"), "{log}");
            assert!(log.contains("route=/ws ") || log.contains("route=/ws\n"), "{log}");
            assert!(!log.contains(&format!("/conversations/{}/messages", bob.id)), "{log}");
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

on_both_backends! {
    async fn sighup_changes_spam_url_and_cors_rules_without_a_restart(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "cors_origins = [\"https://old.teachly.test\"]\n", "info").await;
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let send = |text: &'static str| {
            let (daemon, alice, bob) = (&daemon, &alice, &bob);
            async move {
                daemon
                    .post(&format!("/conversations/{}/messages", bob.id), Some(&alice.access_token), &json!({"message": text}))
                    .await
            }
        };
        let health_from = |origin: &'static str| {
            let daemon = &daemon;
            async move {
                let response = daemon
                    .http
                    .get(format!("{}/health", daemon.base))
                    .header("origin", origin)
                    .send()
                    .await
                    .unwrap();
                let allowed = response
                    .headers()
                    .get("access-control-allow-origin")
                    .map(|value| value.to_str().unwrap().to_owned());
                (response.status().as_u16(), allowed)
            }
        };
        let open_from = |origin: &'static str| {
            let url = daemon.ws_url("");
            let token = alice.access_token.clone();
            async move { WsClient::connect_with(&url, Some(&token), Some(origin)).await.map_err(|refused| refused.status.as_u16()) }
        };

        assert_eq!(send("bring the cheat sheet").await.0, 201);
        assert_eq!(send("see https://answers.example/x").await.0, 201);
        assert_eq!(health_from("https://old.teachly.test").await, (200, Some("https://old.teachly.test".into())));
        assert_eq!(health_from("https://new.teachly.test").await, (403, None));
        assert!(open_from("https://old.teachly.test").await.is_ok());
        assert_eq!(open_from("https://new.teachly.test").await.err(), Some(403));

        daemon.reload_with(
            "cors_origins = [\"https://new.teachly.test\"]\n[spam]\nblocked_words = [\"cheat\"]\n\
             [urls]\nblocked_domains = [\"answers.example\"]\n",
        );
        let log = daemon.logged("SIGHUP: applied", 1).await;
        assert!(log.contains("server.cors_origins") && log.contains("spam.blocked_words") && log.contains("urls.blocked_domains"), "{log}");
        assert!(!log.contains("next restart"), "every change was live: {log}");

        let (status, body) = send("bring the cheat sheet").await;
        assert_eq!((status, body["code"].as_str()), (422, Some("spam_detected")), "{body}");
        let (status, body) = send("see https://answers.example/x").await;
        assert_eq!((status, body["code"].as_str()), (422, Some("url_blocked")), "{body}");
        let mut socket = open_from("https://new.teachly.test").await.expect("the new origin may open a socket");
        socket.send_json(&json!({"event": "message", "to": bob.id, "message": "a cheat code", "client_id": "s-1"})).await;
        let refused = socket.until("error").await;
        assert_eq!(refused["code"], "spam_detected", "{refused}");
        assert_eq!(health_from("https://new.teachly.test").await, (200, Some("https://new.teachly.test".into())));
        assert_eq!(health_from("https://old.teachly.test").await, (403, None));
        assert_eq!(open_from("https://old.teachly.test").await.err(), Some(403));
        let preflight = daemon
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/conversations/{}/messages", daemon.base, bob.id))
            .header("origin", "https://new.teachly.test")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204);
        assert_eq!(preflight.headers()["access-control-allow-origin"], "https://new.teachly.test");
        assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));

        // A file that does not load changes nothing: the rules of the last good one stay.
        daemon.reload_with("[spam\nblocked_words = []\n");
        daemon.logged("the configuration did not load; keeping the running one", 1).await;
        assert_eq!(send("the cheat sheet, once more").await.0, 422);
        assert_eq!(health_from("https://new.teachly.test").await.0, 200);
        assert_eq!(send("fair and square").await.0, 201);

        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
    }

    async fn sigterm_during_traffic_closes_sockets_with_1001_and_keeps_every_acknowledged_message(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "shutdown_grace = \"5s\"\n", "info").await;
        let bob = daemon.dev_login("bob").await;
        let mut senders = Vec::new();
        for n in 0..4 {
            let user = daemon.dev_login(&format!("sender{n}")).await;
            let socket = WsClient::connect(&daemon.ws_url(""), Some(&user.access_token)).await.unwrap();
            senders.push(socket);
        }
        let mut bob_ws = WsClient::connect(&daemon.ws_url(""), Some(&bob.access_token)).await.unwrap();
        bob_ws.ping_pong().await;
        // Each sender keeps sending, and collects the ids the server acknowledged, until its socket
        // closes; SIGTERM lands in the middle of that.
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(n, mut socket)| {
                let to = bob.id;
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut sent = 0;
                    loop {
                        for _ in 0..4 {
                            sent += 1;
                            let frame = json!({"event": "message", "to": to, "message": format!("note {sent} of {n}"), "client_id": format!("{n}-{sent}")});
                            if !socket.try_send_json(&frame).await {
                                while socket.next_frame().await.is_some() {}
                                return (acknowledged, socket.close_code());
                            }
                        }
                        loop {
                            match socket.next_frame().await {
                                Some(event) if event["event"] == "message_sent" => {
                                    acknowledged.push(event["message"]["id"].as_i64().unwrap());
                                    if acknowledged.len() % 4 == 0 { break; }
                                }
                                Some(_) => {}
                                None => return (acknowledged, socket.close_code()),
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (status, took, log) = daemon.terminate().await;
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(took < Duration::from_secs(5), "stopped in {took:?}: {log}");
        let (_, bob_code) = bob_ws.drain().await;
        assert_eq!(bob_code, Some(1001));
        let mut acknowledged = Vec::new();
        for task in tasks {
            let (ids, code) = task.await.unwrap();
            assert_eq!(code, Some(1001), "every socket hears 1001");
            assert!(!ids.is_empty(), "traffic flowed before the signal");
            acknowledged.extend(ids);
        }
        let stored = db.connect().await.message_ids().await;
        let missing: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
        assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    }
}
