//! The WebSocket's edges: who may open one, hostile frames, size limits, shutdown.

use std::time::Duration;

use futures_util::FutureExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{RawSocket, TestApp, WsClient};
use crate::on_both_backends;

on_both_backends! {
    async fn the_upgrade_checks_token_user_and_origin(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.server.cors_origins = vec!["https://app.teachly.test".into()];
        })
        .await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;

        let refused = WsClient::connect(&app.ws_url("/ws"), None).await.err().unwrap();
        assert_eq!(refused.status, 401);
        assert_eq!(refused.body["code"], "not_authenticated");
        let refused = WsClient::connect(&app.ws_url("/ws"), Some("garbage.token.here")).await.err().unwrap();
        assert_eq!(refused.status, 401);
        let path = format!("/ws/chat/{}", bob.id);
        let refused = WsClient::connect(&app.ws_url(&path), Some(&alice.access_token)).await.err().unwrap();
        assert_eq!(refused.status, 403);
        let refused = WsClient::connect(&app.ws_url("/ws/chat/not-a-number"), Some(&alice.access_token))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status, 403);
        let refused = WsClient::connect_with(&app.ws_url("/ws"), Some(&alice.access_token), Some("https://evil.test"))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status, 403);
        assert_eq!(refused.body["code"], "forbidden_origin");

        // A plain request, or a handshake this server does not speak, is told what is wrong.
        let (status, body) = app.get("/ws", Some(&alice.access_token)).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("not_a_websocket")), "{body}");
        let old_version = app
            .http
            .get(app.url("/ws"))
            .bearer_auth(&alice.access_token)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "8")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(old_version.status(), 400);
        let body: serde_json::Value = old_version.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("version 13"), "{body}");

        // The seed's path with the caller's own id, an allowed origin, and the token in the query.
        let own = format!("/ws/chat/{}", alice.id);
        let mut ws = WsClient::connect_with(&app.ws_url(&own), Some(&alice.access_token), Some("https://app.teachly.test"))
            .await
            .expect("own path opens");
        ws.ping_pong().await;
        let query = format!("/ws?access_token={}", alice.access_token);
        let mut ws = WsClient::connect(&app.ws_url(&query), None).await.expect("query token opens");
        ws.ping_pong().await;
        app.stop().await;
    }

    async fn hostile_frames_get_an_error_and_the_socket_stays_usable(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut ws = app.connect(&alice).await;
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "invalid_json"),
            ("{\"event\":".into(), "invalid_json"),
            ("[]".into(), "invalid_json"),
            ("42".into(), "invalid_json"),
            (json!({"event": "teleport"}).to_string(), "unknown_event"),
            (json!({"no_event": true}).to_string(), "invalid_field"),
            (json!({"event": ["message"]}).to_string(), "invalid_field"),
            (json!({"event": "message", "message": "x"}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": bob.id}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": "bob", "message": "x"}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": {"id": 1}, "message": "x"}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": bob.id, "message": 12}).to_string(), "invalid_field"),
            (r#"{"event":"message","to":123456789012345678901234567890,"message":"x"}"#.into(), "invalid_field"),
            (json!({"event": "message", "to": bob.id, "message": "x", "client_id": 5}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": bob.id, "message": "x", "client_id": "c".repeat(65)}).to_string(), "invalid_field"),
            (json!({"event": "message", "to": alice.id, "message": "me"}).to_string(), "invalid_recipient"),
            (json!({"event": "message", "to": 987_654, "message": "who"}).to_string(), "unknown_recipient"),
            (json!({"event": "message", "to": bob.id, "message": "   "}).to_string(), "empty_message"),
            (json!({"event": "message_seen"}).to_string(), "invalid_field"),
            (json!({"event": "message_seen", "message_id": "x"}).to_string(), "invalid_field"),
            (json!({"event": "typing", "to": 0}).to_string(), "invalid_field"),
        ];
        for (frame, code) in cases {
            ws.send_text(&frame).await;
            let error = ws.expect("error").await;
            assert_eq!(error["code"], code, "frame {frame} answered {error}");
            assert!(error["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        ws.send_raw(Message::binary(vec![1, 2, 3])).await;
        assert_eq!(ws.expect("error").await["code"], "invalid_json");
        // A refusal of a message carries its client id back.
        ws.send_json(&json!({"event": "message", "to": alice.id, "message": "me", "client_id": "c-9"})).await;
        assert_eq!(ws.expect("error").await["client_id"], "c-9");
        // Still usable.
        ws.ping_pong().await;
        ws.send_json(&json!({"event": "message", "to": bob.id, "message": "still here"})).await;
        ws.expect("message_sent").await;
        let (_, history) = app
            .get(&format!("/conversations/{}/messages", bob.id), Some(&alice.access_token))
            .await;
        assert_eq!(history["messages"].as_array().unwrap().len(), 1, "no refused frame stored anything");
        app.stop().await;
    }

    async fn broken_frames_close_with_1007_or_1002_and_a_close_frame(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let cases: [(&str, u8, &[u8], bool, u16); 6] = [
            ("a text frame that is not UTF-8", 0x81, &[b'{', 0xff, 0xfe, b'}'], true, 1007),
            ("a reserved bit set", 0xc1, b"{}", true, 1002),
            ("an unmasked client frame", 0x81, b"{}", false, 1002),
            ("a reserved opcode", 0x83, b"{}", true, 1002),
            ("a fragmented ping", 0x09, b"", true, 1002),
            ("a continuation with nothing to continue", 0x80, b"{}", true, 1002),
        ];
        for (what, first, payload, masked, code) in cases {
            let mut socket = RawSocket::connect(app.addr, &alice.access_token).await;
            socket.send_frame(first, payload, masked).await;
            assert_eq!(socket.close_code().await, Some(code), "{what}");
            crate::common::eventually("the socket is released", || async { app.open_sockets(&alice) == 0 }).await;
        }
        // A well-formed frame on the same kind of socket is answered.
        let mut socket = RawSocket::connect(app.addr, &alice.access_token).await;
        socket.send_frame(0x81, br#"{"event":"ping"}"#, true).await;
        socket.send_frame(0x88, &1000u16.to_be_bytes(), true).await;
        assert_eq!(socket.close_code().await, Some(1000), "a clean close is echoed");
        app.stop().await;
    }

    async fn a_frame_over_the_limit_closes_with_1009(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut ws = app.connect(&alice).await;
        // Just under the limit is refused by the content rules, not by the socket.
        let big = "x".repeat(16 * 1024 - 100);
        ws.send_json(&json!({"event": "message", "to": bob.id, "message": big})).await;
        assert_eq!(ws.expect("error").await["code"], "message_too_long");
        ws.send_text(&"y".repeat(16 * 1024 + 1)).await;
        assert_eq!(ws.expect_close().await, Some(1009));
        let mut ws = app.connect(&alice).await;
        ws.send_text(&"z".repeat(200 * 1024)).await;
        assert_eq!(ws.expect_close().await, Some(1009));
        app.stop().await;
    }

    async fn shutdown_closes_every_socket_with_1001(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let mut first = app.connect(&alice).await;
        let mut second = app.connect(&alice).await;
        first.ping_pong().await;
        second.ping_pong().await;
        let stopping = tokio::spawn(app.stop());
        assert_eq!(first.expect_close().await, Some(1001));
        assert_eq!(second.expect_close().await, Some(1001));
        tokio::time::timeout(Duration::from_secs(10), stopping).await.unwrap().unwrap();
    }

    async fn a_socket_closed_by_shutdown_answers_what_it_was_sent_first(backend: Backend) {
        let mut app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut ws = app.connect(&alice).await;
        ws.send_json(&json!({"event": "message", "to": bob.id, "message": "warm", "client_id": "o-warm"})).await;
        ws.until("message_sent").await;
        // The writes wait for the lock, so the socket's messages are in the writer's hands when
        // shutdown starts; the lock goes once it has.
        let lock = app.db.lock_writes().await;
        for n in 0..40 {
            ws.send_json(&json!({"event": "message", "to": bob.id, "message": format!("outbox {n}"), "client_id": format!("o-{n}")}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let release = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            lock.close().await;
        };
        // The client reads only once the server is gone: a server that hung up on the frames it
        // never read (a reset) would have thrown its last answers and its close frame away.
        tokio::join!(app.restart(), release);
        let mut acknowledged = std::collections::HashSet::from(["o-warm".to_owned()]);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next_frame()).await.expect("the socket ends") {
                Some(event) if event["event"] == "message_sent" => {
                    acknowledged.insert(event["message"]["client_id"].as_str().unwrap().to_owned());
                }
                Some(_) => {}
                None => break,
            }
        }
        let code = ws.close_code();
        assert_eq!(code, Some(1001));
        let bob = app.dev_login("bob").await;
        let (_, history) = app
            .get(&format!("/conversations/{}/messages?limit=100", alice.id), Some(&bob.access_token))
            .await;
        let stored: std::collections::HashSet<String> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["client_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(stored.len() > 1, "some messages were in flight: {stored:?}");
        let unanswered: Vec<_> = stored.difference(&acknowledged).collect();
        assert!(unanswered.is_empty(), "stored but never acknowledged on the socket: {unanswered:?}");
        app.stop().await;
    }

    async fn a_reader_that_falls_behind_is_closed_and_loses_nothing(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.outbound_queue = 16;
            config.limits.max_message_chars = 20_000;
            config.spam.duplicate_limit = 0;
        })
        .await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut stalled = WsClient::connect_stalled(&app.ws_url("/ws"), &bob.access_token).await;
        crate::common::eventually("bob's socket is registered", || async { app.open_sockets(&bob) == 1 }).await;

        // Far more than the socket buffers, the stalled client's kernel and the queue can hold.
        let text: String = "abcdefghijklmnopqrstuvwxyz0123456789".chars().cycle().take(15_000).collect();
        let mut sent = Vec::new();
        for round in 0..60 {
            let batch = (0..10).map(|n| app.send(&alice, bob.id, &text).map(move |answer| (round * 10 + n, answer)));
            for (_, (status, body)) in futures_util::future::join_all(batch).await {
                assert_eq!(status, 201, "{body}");
                sent.push(body["id"].as_i64().unwrap());
            }
        }
        crate::common::eventually("the stalled socket is closed", || async { app.open_sockets(&bob) == 0 }).await;

        let (first, code) = stalled.drain().await;
        assert!(matches!(code, None | Some(1013)), "closed with 1013 or dropped, got {code:?}");
        assert!(first.len() < sent.len(), "the stalled client did not get everything the first time");

        let mut again = app.connect(&bob).await;
        let mut second = Vec::new();
        while second.len() + first.len() < sent.len() {
            second.push(again.until("new_message").await["message"]["id"].as_i64().unwrap());
        }
        again.expect_silence(Duration::from_millis(300)).await;
        let mut everything: Vec<i64> = first.iter().chain(&second).copied().collect();
        everything.sort_unstable();
        sent.sort_unstable();
        assert_eq!(everything, sent, "every message arrives, none twice");
        app.stop().await;
    }

    async fn the_server_pings_and_drops_a_silent_peer(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.ping_interval = "1s".parse().unwrap();
        })
        .await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        // A client that keeps reading answers pings (the WebSocket library does) and stays.
        let mut lively = app.connect(&alice).await;
        assert!(lively.expect_ping().await, "the server pings");
        // One that never reads never answers: gone after three intervals.
        let silent = WsClient::connect_stalled(&app.ws_url("/ws"), &bob.access_token).await;
        crate::common::eventually("the socket is registered", || async { app.open_sockets(&bob) == 1 }).await;
        let started = std::time::Instant::now();
        // Keep reading the lively socket (so it answers pings) while the silent one runs out.
        let ((), ()) = tokio::join!(lively.expect_silence(Duration::from_millis(4500)), async {
            crate::common::eventually_within(Duration::from_secs(8), "the silent peer is dropped", || async {
                app.open_sockets(&bob) == 0
            })
            .await;
            assert!(started.elapsed() >= Duration::from_secs(2), "not before it was silent for long");
        });
        lively.ping_pong().await;
        assert_eq!(app.open_sockets(&alice), 1, "the lively socket stays");
        drop(silent);
        app.stop().await;
    }

    async fn idle_sockets_hold_no_database_connection(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let mut sockets = Vec::new();
        for n in 0..40 {
            let user = app.dev_login(&format!("idle{n}")).await;
            for _ in 0..5 {
                sockets.push(app.connect(&user).await);
            }
        }
        // A pong proves the socket read its backlog and sits in its loop.
        for socket in &mut sockets {
            socket.ping_pong().await;
        }
        // Presence is announced in the background; once that is done nothing holds a connection.
        crate::common::eventually("no connection is lent out to 200 idle sockets", || async {
            app.pool_usage().in_use == 0
        })
        .await;
        let usage = app.pool_usage();
        assert!(
            usage.open <= app.config.database.max_connections as usize + 1,
            "the pool does not grow with sockets: {usage:?}"
        );
        app.stop().await;
    }

    async fn a_fast_sender_that_reads_is_never_closed_and_hears_acks_in_send_order(backend: Backend) {
        // Acks are answers, not queued events: a queue of 16 does not limit a socket's own outbox.
        let app = TestApp::spawn_with(backend, |config| config.limits.outbound_queue = 16).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut sending = app.connect(&alice).await;
        let (acknowledged, receipts) = flush_outbox(&mut sending, bob.id, 200, false).await;
        let in_send_order: Vec<String> = (0..200).map(|n| format!("c-{n}")).collect();
        assert_eq!(acknowledged, in_send_order, "acks come in the order the messages were sent");
        assert_eq!(receipts, 0, "bob is offline");
        sending.ping_pong().await;
        app.stop().await;
    }

    async fn a_fast_sender_hears_every_ack_and_receipt_while_its_peer_reads_along(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut receiving = app.connect(&bob).await;
        let mut sending = app.connect(&alice).await;
        let reader = tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < 200 {
                ids.push(receiving.until("new_message").await["message"]["id"].as_i64().unwrap());
            }
            ids
        });
        let (acknowledged, receipts) = flush_outbox(&mut sending, bob.id, 200, true).await;
        assert_eq!(acknowledged.len(), 200);
        assert_eq!(receipts, 200, "one receipt per message");
        let ids = reader.await.unwrap();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "bob reads them in order, once each");
        app.stop().await;
    }

    async fn connections_per_user_are_capped(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| config.limits.max_connections_per_user = 2).await;
        let alice = app.dev_login("alice").await;
        let mut kept = Vec::new();
        for _ in 0..2 {
            let mut ws = app.connect(&alice).await;
            ws.ping_pong().await;
            kept.push(ws);
        }
        let refused = WsClient::connect(&app.ws_url("/ws"), Some(&alice.access_token)).await.err().unwrap();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.body["code"], "too_many_connections");
        kept.pop().unwrap().close().await;
        crate::common::eventually("a slot frees up", || async {
            match WsClient::connect(&app.ws_url("/ws"), Some(&alice.access_token)).await {
                Ok(ws) => { ws.close().await; true }
                Err(_) => false,
            }
        })
        .await;
        app.stop().await;
    }
}

/// Sends `count` messages back to back before reading any answer (an outbox flushed at once: far
/// more than a socket's 16 in flight), then reads every ack, and every receipt too when `receipts`.
/// Answers the client ids in the order they were acknowledged, and how many receipts came.
async fn flush_outbox(
    ws: &mut WsClient,
    to: i64,
    count: usize,
    receipts: bool,
) -> (Vec<String>, usize) {
    for n in 0..count {
        ws.send_json(&json!({"event": "message", "to": to, "message": format!("outbox line {n}"), "client_id": format!("c-{n}")}))
            .await;
    }
    let mut acknowledged = Vec::new();
    let mut delivered = 0;
    while acknowledged.len() < count || (receipts && delivered < count) {
        let event = tokio::time::timeout(Duration::from_secs(10), ws.next_frame())
            .await
            .expect("answers keep coming")
            .unwrap_or_else(|| panic!("the socket was closed with {:?}", ws.close_code()));
        match event["event"].as_str().unwrap_or_default() {
            "message_sent" => {
                acknowledged.push(event["message"]["client_id"].as_str().unwrap().to_owned())
            }
            "message_delivered" => delivered += 1,
            "user_connected" | "user_disconnected" => {}
            _ => panic!("unexpected {event}"),
        }
    }
    (acknowledged, delivered)
}
