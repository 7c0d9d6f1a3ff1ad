//! The hostile client (issue 14): rate limits per address and per user, forged X-Forwarded-For,
//! floods over the socket, connection caps, slow clients, oversize bodies and the protective
//! headers. Every server here runs with its rate limits on, as in production.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use teachlyd::config::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{
    common::{Backend, TestApp, TestDb, WsClient, daemon::Daemon},
    on_both_backends,
};

async fn spawn_limited(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.rate_limit.enabled = true;
        adjust(config);
    })
    .await
}

/// An HTTP client whose connections come from `address` (any of 127.0.0.0/8 is this machine).
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn health(client: &reqwest::Client, app: &TestApp, forwarded: Option<&str>) -> u16 {
    let mut request = client.get(app.url("/health"));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap().status().as_u16()
}

/// A raw TCP connection from `address` to the server.
async fn connect_from(address: &str, app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{address}:0").parse().unwrap())
        .unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// Sends `request` and reads until the server closes or `limit` passes; answers what came back.
async fn exchange(stream: &mut TcpStream, request: &str, limit: Duration) -> Option<String> {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Some(String::new());
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => {
                return (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).into_owned());
            }
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
        }
    }
}

const HEALTH_REQUEST: &str = "GET /health HTTP/1.1\r\nHost: teachly\r\nConnection: close\r\n\r\n";

on_both_backends! {
    async fn the_eleventh_health_check_in_a_minute_waits_and_another_address_does_not(backend: Backend) {
        let app = spawn_limited(backend, |_| {}).await;
        let first = client_from("127.0.0.1");
        for _ in 0..10 {
            assert_eq!(health(&first, &app, None).await, 200);
        }
        let refused = first.get(app.url("/health")).send().await.unwrap();
        assert_eq!(refused.status(), 429);
        let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=6).contains(&wait), "Retry-After: {wait}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(health(&client_from("127.0.0.2"), &app, None).await, 200);
        app.stop().await;
    }

    async fn a_forged_forwarded_for_counts_only_from_a_trusted_proxy(backend: Backend) {
        let app = spawn_limited(backend, |_| {}).await;
        let client = client_from("127.0.0.1");
        for i in 0..10 {
            assert_eq!(health(&client, &app, Some(&format!("203.0.113.{i}"))).await, 200);
        }
        assert_eq!(
            health(&client, &app, Some("198.51.100.1")).await,
            429,
            "an untrusted peer cannot pick its key"
        );
        app.stop().await;

        let app = spawn_limited(backend, |config| {
            config.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        })
        .await;
        for _ in 0..10 {
            assert_eq!(health(&client, &app, Some("203.0.113.7")).await, 200);
        }
        assert_eq!(health(&client, &app, Some("203.0.113.7")).await, 429);
        assert_eq!(
            health(&client, &app, Some("6.6.6.6, 203.0.113.7")).await,
            429,
            "what the client wrote left of the proxy's entry is ignored"
        );
        assert_eq!(health(&client, &app, Some("203.0.113.8")).await, 200);
        assert_eq!(health(&client, &app, None).await, 200, "the proxy itself is its own key");
        app.stop().await;
    }

    async fn sign_ins_are_limited_per_address_and_chat_reads_per_user(backend: Backend) {
        let app = spawn_limited(backend, |config| {
            config.rate_limit.chat_reads_per_minute = 5;
        })
        .await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        for _ in 0..5 {
            assert_eq!(app.get("/users/me", Some(&alice.access_token)).await.0, 200);
        }
        let (status, body) = app.get("/users/me", Some(&alice.access_token)).await;
        assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
        assert_eq!(
            app.get("/users/me", Some(&bob.access_token)).await.0,
            200,
            "another user on the same address has a count of their own"
        );
        // Without a valid token the count is the address's, so forged tokens cannot dodge it.
        for _ in 0..5 {
            assert_eq!(app.get("/users/me", Some("forged.token.value")).await.0, 401);
        }
        assert_eq!(app.get("/users/me", Some("forged.token.value")).await.0, 429);
        for i in 0..8 {
            let (status, _) = app.post("/auth/dev-login", None, &json!({ "name": format!("u{i}") })).await;
            assert_eq!(status, 200);
        }
        let (status, body) = app.post("/auth/dev-login", None, &json!({ "name": "u9" })).await;
        assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
        app.stop().await;
    }

    async fn a_message_flood_is_refused_then_closed_while_others_keep_talking(backend: Backend) {
        let app = spawn_limited(backend, |_| {}).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let carol = app.dev_login("carol").await;
        let dave = app.dev_login("dave").await;
        let mut flooder = app.connect(&alice).await;
        let mut carol_ws = app.connect(&carol).await;
        let mut dave_ws = app.connect(&dave).await;
        let to_bob = bob.id;
        let flood = tokio::spawn(async move {
            let mut sent = 0;
            for i in 0..400 {
                let frame = json!({"event": "message", "to": to_bob, "message": format!("spam {i}"), "client_id": format!("f{i}")});
                if !flooder.try_send_json(&frame).await {
                    break;
                }
                sent += 1;
            }
            let (mut accepted, mut limited) = (0, 0);
            while let Some(event) = flooder.next_frame().await {
                match event["event"].as_str() {
                    Some("message_sent") => accepted += 1,
                    Some("error") => {
                        assert_eq!(event["code"], "rate_limited", "{event}");
                        let wait = event["retry_after_ms"].as_u64().unwrap();
                        assert!((1..=334).contains(&wait), "{event}");
                        assert!(event["client_id"].as_str().unwrap().starts_with('f'));
                        limited += 1;
                    }
                    _ => {}
                }
            }
            (sent, accepted, limited, flooder.close_code())
        });
        let mut slowest = Duration::ZERO;
        for i in 0..10 {
            let started = Instant::now();
            carol_ws.send_json(&json!({"event": "message", "to": dave.id, "message": format!("hello {i}")})).await;
            let sent = carol_ws.until_any(&["message_sent", "error"]).await;
            assert_eq!(sent["event"], "message_sent", "{sent}");
            slowest = slowest.max(started.elapsed());
            assert_eq!(dave_ws.until("new_message").await["message"]["content"], format!("hello {i}"));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let (sent, accepted, limited, code) = flood.await.unwrap();
        assert_eq!(code, Some(1008), "sent {sent}, accepted {accepted}, refused {limited}");
        assert!((10..=14).contains(&accepted), "a burst of 10 and the refill: {accepted}");
        assert!(limited > 100, "refused {limited} before the close");
        assert!(slowest < Duration::from_secs(1), "carol waited {slowest:?} for a message_sent");
        app.stop().await;
    }

    async fn typing_is_limited_to_once_a_second(backend: Backend) {
        let app = spawn_limited(backend, |_| {}).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        assert_eq!(app.send(&alice, bob.id, "hi").await.0, 201);
        let mut alice_ws = app.connect(&alice).await;
        let mut bob_ws = app.connect(&bob).await;
        // A typing notice reaches only sockets already registered; the backlog proves bob's is.
        bob_ws.until("new_message").await;
        alice_ws.send_json(&json!({"event": "typing", "to": bob.id})).await;
        assert_eq!(bob_ws.until("typing").await["from"], alice.id);
        alice_ws.send_json(&json!({"event": "typing", "to": bob.id})).await;
        let refused = alice_ws.until("error").await;
        assert_eq!(refused["code"], "rate_limited");
        assert!((1..=1000).contains(&refused["retry_after_ms"].as_u64().unwrap()), "{refused}");
        bob_ws.expect_silence(Duration::from_millis(300)).await;
        app.stop().await;
    }

    async fn a_socket_that_keeps_sending_garbage_is_closed_with_1008(backend: Backend) {
        let app = spawn_limited(backend, |config| config.rate_limit.ws_flood_close = 20).await;
        let alice = app.dev_login("alice").await;
        let mut socket = app.connect(&alice).await;
        for _ in 0..40 {
            if !socket.try_send_json(&json!({"event": "no_such_event"})).await {
                break;
            }
        }
        let mut refused = 0;
        while let Some(event) = socket.next_frame().await {
            if event["event"] == "error" {
                assert_eq!(event["code"], "unknown_event");
                refused += 1;
            }
        }
        assert_eq!(socket.close_code(), Some(1008));
        assert_eq!(refused, 21, "closed on the 21st refusal in 10 s");
        app.stop().await;
    }

    async fn an_address_holds_at_most_its_share_of_connections(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| config.limits.max_connections_per_ip = 3).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from("127.0.0.1", &app).await);
        }
        let mut refused = connect_from("127.0.0.1", &app).await;
        let answer = exchange(&mut refused, HEALTH_REQUEST, Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Some(""), "the fourth connection is closed unanswered");
        let mut other = connect_from("127.0.0.2", &app).await;
        let answer = exchange(&mut other, HEALTH_REQUEST, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.pop();
        crate::common::eventually("a closed connection gives its place back", || async {
            let mut again = connect_from("127.0.0.1", &app).await;
            exchange(&mut again, HEALTH_REQUEST, Duration::from_secs(5))
                .await
                .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
        })
        .await;
        app.stop().await;
    }

    async fn past_the_global_cap_a_connection_waits_for_a_free_place(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.max_connections = 2;
            config.limits.max_connections_per_ip = 2;
        })
        .await;
        let first = connect_from("127.0.0.1", &app).await;
        let _second = connect_from("127.0.0.1", &app).await;
        let mut waiting = connect_from("127.0.0.2", &app).await;
        waiting.write_all(HEALTH_REQUEST.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 1024];
        let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buffer)).await;
        assert!(early.is_err(), "answered while two connections held every place");
        drop(first);
        let read = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buffer))
            .await
            .expect("answered once a place is free")
            .unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        app.stop().await;
    }

    async fn slow_headers_are_cut_off_and_a_slow_body_gets_408(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.server.header_timeout = "1s".parse().unwrap();
            config.server.request_timeout = "1s".parse().unwrap();
        })
        .await;
        let started = Instant::now();
        let mut trickle = connect_from("127.0.0.1", &app).await;
        let answer = exchange(&mut trickle, "GET /health HTTP/1.1\r\nHost: tea", Duration::from_secs(5)).await;
        assert!(answer.is_some(), "the connection was not cut off");
        assert!(!answer.unwrap().contains("200 OK"));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "{waited:?}");

        let mut slow_body = connect_from("127.0.0.1", &app).await;
        let head = "POST /auth/dev-login HTTP/1.1\r\nHost: teachly\r\nContent-Type: application/json\r\n\
                    Content-Length: 100\r\n\r\n{\"name\":";
        let answer = exchange(&mut slow_body, head, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        app.stop().await;
    }

    async fn oversize_bodies_get_413_and_json_routes_carry_protective_headers(backend: Backend) {
        let app = spawn_limited(backend, |_| {}).await;
        let alice = app.dev_login("alice").await;
        let (status, body) = app
            .post_raw("/conversations/2/messages", Some(&alice.access_token), "x".repeat(65 * 1024))
            .await;
        assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));
        let answer = app.http.get(app.url("/health")).send().await.unwrap();
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
        let policy = answer.headers()["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
        let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
        assert_eq!(docs.status(), 200);
        assert_eq!(docs.headers()["x-content-type-options"], "nosniff");
        assert!(!docs.headers().contains_key("content-security-policy"), "the docs run scripts");
        app.stop().await;
    }

    async fn a_flood_of_distinct_addresses_costs_bounded_memory(backend: Backend) {
        let app = spawn_limited(backend, |config| {
            config.server.trusted_proxies = vec!["127.0.0.1".into()];
            config.rate_limit.max_keys = 1000;
        })
        .await;
        let client = client_from("127.0.0.1");
        for _ in 0..10 {
            assert_eq!(health(&client, &app, Some("203.0.113.250")).await, 200);
        }
        let addresses = 20_000u32;
        let statuses = futures_util::future::join_all((0..16u32).map(|lane| {
            let (client, url) = (client.clone(), app.url("/health"));
            async move {
                let mut refused = 0;
                for n in (lane..addresses).step_by(16) {
                    let forwarded = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                    let status = client.get(&url).header("x-forwarded-for", forwarded).send().await.unwrap().status();
                    refused += usize::from(status != 200);
                }
                refused
            }
        }))
        .await;
        assert_eq!(statuses.iter().sum::<usize>(), 0, "every new address gets its first request");
        let rate = app.server().app.live.rules().rate.clone();
        let kept = rate.remembered_keys();
        assert!(kept <= 1008, "{kept} keys kept for {addresses} addresses");
        assert_eq!(
            health(&client, &app, Some("203.0.113.250")).await,
            429,
            "the one address at its limit is the last one forgotten"
        );
        app.stop().await;
    }
}

on_both_backends! {
    async fn no_error_answer_or_log_line_holds_a_token(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "[auth]\nrefresh_reuse_grace = \"0s\"\n", "debug").await;
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let forged = format!("{}x", alice.access_token);
        let mut answers = Vec::new();
        let http = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", daemon.base);
        for token in [forged.as_str(), bob.refresh_token.as_str()] {
            let answer = http.get(url("/users/me")).bearer_auth(token).send().await.unwrap();
            assert_eq!(answer.status(), 401);
            answers.push(answer.text().await.unwrap());
        }
        // A token in the query of a request that is not a WebSocket handshake, and of one that is
        // refused for another user's path.
        let answer = http.get(url(&format!("/ws?access_token={}", alice.access_token))).send().await.unwrap();
        answers.push(answer.text().await.unwrap());
        let refused = WsClient::connect(
            &daemon.ws_url(&format!("/chat/{}?access_token={}", bob.id, alice.access_token)),
            None,
        )
        .await
        .err()
        .expect("another user's path is refused");
        answers.push(refused.body.to_string());
        let (status, _) = daemon.post("/auth/refresh", None, &json!({"refresh_token": alice.refresh_token})).await;
        assert_eq!(status, 200);
        for _ in 0..3 {
            for (path, body) in [
                ("/auth/refresh", json!({"refresh_token": alice.refresh_token})),
                ("/auth/refresh", json!({"refresh_token": forged})),
                ("/auth/login", json!({"id_token": forged})),
                ("/auth/logout", json!({"refresh_token": forged})),
            ] {
                let (status, answer) = daemon.post(path, None, &body).await;
                if status != 204 {
                    assert!(status >= 400, "{path}: {status} {answer}");
                    answers.push(answer.to_string());
                }
            }
        }
        assert!(
            answers.iter().any(|answer| answer.contains("rate_limited")),
            "the sign-in limit was reached too: {answers:?}"
        );
        let (_, _, log) = daemon.terminate().await;
        assert!(log.contains("a spent refresh token was presented again"), "{log}");
        for secret in [&alice.access_token, &alice.refresh_token, &bob.refresh_token, &forged] {
            for answer in &answers {
                assert!(!answer.contains(secret.as_str()), "an answer holds a token: {answer}");
            }
            // A token's signature part is enough to replay it.
            let signature = secret.rsplit('.').next().unwrap();
            assert!(!log.contains(signature), "the log holds a token: {log}");
        }
    }

    async fn rate_limit_enabled_false_turns_every_limit_off(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start_with_env(&db.url, "", "info", &[("RATE_LIMIT_ENABLED", "false")]).await;
        let http = reqwest::Client::new();
        for _ in 0..15 {
            let answer = http.get(format!("{}/health", daemon.base)).send().await.unwrap();
            assert_eq!(answer.status(), 200);
        }
        for i in 0..12 {
            daemon.dev_login(&format!("user{i}")).await;
        }
        daemon.terminate().await;
        let daemon = Daemon::start(&db.url, "", "info").await;
        for _ in 0..10 {
            let answer = http.get(format!("{}/health", daemon.base)).send().await.unwrap();
            assert_eq!(answer.status(), 200);
        }
        let answer = http.get(format!("{}/health", daemon.base)).send().await.unwrap();
        assert_eq!(answer.status(), 429, "on by default");
        daemon.terminate().await;
    }
}
