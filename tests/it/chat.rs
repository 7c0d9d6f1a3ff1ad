//! The message path end to end over real sockets: sending, receipts, offline delivery, idempotency,
//! several devices, restarts.

use std::time::Duration;

use serde_json::json;

use crate::common::{TestApp, eventually};
use crate::on_both_backends;

on_both_backends! {
    async fn two_users_exchange_messages_with_every_receipt(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut alice_ws = app.connect(&alice).await;
        let hello = alice_ws.next_event().await;
        assert_eq!(hello, json!({"event": "user_connected", "user_id": alice.id}));
        let mut bob_ws = app.connect(&bob).await;

        alice_ws
            .send_json(&json!({"event": "message", "to": bob.id, "message": "hi <b>bob</b>", "client_id": "m1"}))
            .await;
        let sent = alice_ws.expect("message_sent").await;
        let message = &sent["message"];
        assert_eq!(message["from_id"], alice.id);
        assert_eq!(message["to_id"], bob.id);
        assert_eq!(message["content"], "hi <b>bob</b>");
        assert_eq!(message["client_id"], "m1");
        assert!(message["delivered_at"].is_null() && message["seen_at"].is_null());
        let id = message["id"].as_i64().unwrap();

        let received = bob_ws.expect("new_message").await;
        assert_eq!(received["message"], *message);

        let delivered = alice_ws.expect("message_delivered").await;
        assert_eq!(delivered["message_id"], id);
        assert!(delivered["delivered_at"].as_str().unwrap().ends_with('Z'));

        bob_ws.send_json(&json!({"event": "message_seen", "message_id": id})).await;
        let seen = alice_ws.expect("message_seen").await;
        assert_eq!(seen["message_id"], id);
        assert!(seen["seen_at"].is_string());

        // And back, with a numeric-string recipient.
        bob_ws
            .send_json(&json!({"event": "message", "to": alice.id.to_string(), "message": "hello 👋"}))
            .await;
        assert_eq!(bob_ws.expect("message_sent").await["message"]["content"], "hello 👋");
        assert_eq!(alice_ws.expect("new_message").await["message"]["content"], "hello 👋");
        bob_ws.expect("message_delivered").await;

        // The history agrees with what the sockets said.
        let (status, history) = app
            .get(&format!("/conversations/{}/messages", bob.id), Some(&alice.access_token))
            .await;
        assert_eq!(status, 200);
        let messages = history["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1]["id"], id);
        assert!(messages[1]["delivered_at"].is_string());
        assert!(messages[1]["seen_at"].is_string());
        app.stop().await;
    }

    async fn an_offline_recipient_gets_everything_on_connect_oldest_first(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut alice_ws = app.connect(&alice).await;
        let mut ids = Vec::new();
        for n in 0..5 {
            alice_ws
                .send_json(&json!({"event": "message", "to": bob.id, "message": format!("note {n}")}))
                .await;
            ids.push(alice_ws.expect("message_sent").await["message"]["id"].as_i64().unwrap());
        }
        alice_ws.expect_silence(Duration::from_millis(200)).await;

        let mut bob_ws = app.connect(&bob).await;
        for (n, id) in ids.iter().enumerate() {
            let event = bob_ws.expect("new_message").await;
            assert_eq!(event["message"]["id"], *id);
            assert_eq!(event["message"]["content"], format!("note {n}"));
        }
        let mut delivered: Vec<i64> = Vec::new();
        for _ in 0..ids.len() {
            delivered.push(alice_ws.expect("message_delivered").await["message_id"].as_i64().unwrap());
        }
        delivered.sort_unstable();
        assert_eq!(delivered, ids);

        // Delivered means delivered: a second connection does not get them again.
        let mut bob_again = app.connect(&bob).await;
        bob_again.ping_pong().await;
        app.stop().await;
    }

    async fn the_same_client_id_twice_stores_once(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut alice_ws = app.connect(&alice).await;
        let mut bob_ws = app.connect(&bob).await;
        let frame = json!({"event": "message", "to": bob.id, "message": "once", "client_id": "retry-1"});
        alice_ws.send_json(&frame).await;
        let first = alice_ws.expect("message_sent").await;
        bob_ws.expect("new_message").await;
        alice_ws.send_json(&frame).await;
        // The delivery receipt of the first send may come before or after.
        let second = alice_ws.until("message_sent").await;
        assert_eq!(first["message"]["id"], second["message"]["id"]);

        // Over REST too: the retry answers 200 with the stored message.
        let (status, body) = app
            .post(
                &format!("/conversations/{}/messages", bob.id),
                Some(&alice.access_token),
                &json!({"message": "once", "client_id": "retry-1"}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["id"], first["message"]["id"]);

        // Many concurrent retries still make one row.
        let path = format!("/conversations/{}/messages", bob.id);
        let body = json!({"message": "burst", "client_id": "retry-2"});
        let sends = (0..20).map(|_| app.post(&path, Some(&alice.access_token), &body));
        let answers = futures_util::future::join_all(sends).await;
        for (status, body) in &answers {
            assert!(matches!(status, 200 | 201), "every retry is answered with the message: {status} {body}");
        }
        let created = answers.iter().filter(|(status, _)| *status == 201).count();
        assert_eq!(created, 1, "exactly one of the concurrent sends stores the message");
        let ids: std::collections::HashSet<_> = answers.iter().map(|(_, body)| body["id"].clone()).collect();
        assert_eq!(ids.len(), 1);

        bob_ws.expect("new_message").await;
        bob_ws.expect_silence(Duration::from_millis(300)).await;
        let (_, history) = app
            .get(&format!("/conversations/{}/messages", alice.id), Some(&bob.access_token))
            .await;
        assert_eq!(history["messages"].as_array().unwrap().len(), 2);
        app.stop().await;
    }

    async fn a_message_survives_a_restart(backend: Backend) {
        let mut app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let (status, sent) = app.send(&alice, bob.id, "see you after the restart").await;
        assert_eq!(status, 201);
        app.restart().await;
        // Dev login with no configured secret signs with a new key after a restart.
        let bob = app.dev_login("bob").await;
        let mut bob_ws = app.connect(&bob).await;
        let received = bob_ws.expect("new_message").await;
        assert_eq!(received["message"]["id"], sent["id"]);
        assert_eq!(received["message"]["content"], "see you after the restart");
        app.stop().await;
    }

    async fn every_connection_of_a_user_gets_every_event(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut alice_devices = Vec::new();
        for _ in 0..3 {
            alice_devices.push(app.connect(&alice).await);
        }
        let mut bob_devices = Vec::new();
        for _ in 0..3 {
            bob_devices.push(app.connect(&bob).await);
        }
        alice_devices[0]
            .send_json(&json!({"event": "message", "to": bob.id, "message": "to every device"}))
            .await;
        let mut id = None;
        for device in &mut alice_devices {
            let sent = device.expect("message_sent").await;
            id = sent["message"]["id"].as_i64();
        }
        for device in &mut bob_devices {
            assert_eq!(device.expect("new_message").await["message"]["id"].as_i64(), id);
        }
        for device in &mut alice_devices {
            assert_eq!(device.expect("message_delivered").await["message_id"].as_i64(), id);
        }
        bob_devices[0].send_json(&json!({"event": "message_seen", "message_id": id})).await;
        for device in &mut alice_devices {
            assert_eq!(device.expect("message_seen").await["message_id"].as_i64(), id);
        }
        // The recipient's other devices hear of it too; the one that marked it does not.
        for device in &mut bob_devices[1..] {
            assert_eq!(device.expect("message_seen").await["message_id"].as_i64(), id);
        }
        bob_devices[0].expect_silence(Duration::from_millis(200)).await;
        app.stop().await;
    }

    async fn presence_reaches_people_who_share_a_conversation(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let carol = app.dev_login("carol").await;
        app.send(&alice, bob.id, "hello").await;
        let mut alice_ws = app.connect(&alice).await;
        assert_eq!(alice_ws.next_event().await["event"], "user_connected");
        let mut carol_ws = app.connect(&carol).await;
        assert_eq!(carol_ws.next_event().await["user_id"], carol.id);

        let bob_ws = app.connect(&bob).await;
        let event = alice_ws.until("user_connected").await;
        assert_eq!(event, json!({"event": "user_connected", "user_id": bob.id}));
        let (_, user) = app.get(&format!("/users/{}", bob.id), Some(&alice.access_token)).await;
        assert_eq!(user["online"], true);

        bob_ws.close().await;
        let event = alice_ws.until("user_disconnected").await;
        assert_eq!(event["event"], "user_disconnected");
        assert_eq!(event["user_id"], bob.id);
        assert!(event["last_seen_at"].is_string());
        // Carol never talked to bob: she hears nothing.
        carol_ws.expect_silence(Duration::from_millis(200)).await;
        eventually("bob is offline", || async {
            let (_, user) = app.get(&format!("/users/{}", bob.id), Some(&alice.access_token)).await;
            user["online"] == false && user["last_seen_at"].is_string()
        })
        .await;
        app.stop().await;
    }

    async fn typing_is_forwarded_and_never_stored(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        // Typing reaches only someone who shares a conversation with the sender (see sessions.rs).
        assert_eq!(app.send(&bob, alice.id, "hello").await.0, 201);
        let mut bob_ws = app.connect(&bob).await;
        // Typing is never stored: it reaches sockets registered when it is sent, and the hello
        // comes after the registration.
        assert_eq!(bob_ws.next_event().await["event"], "user_connected");
        let mut alice_ws = app.connect(&alice).await;
        alice_ws.until("new_message").await;
        bob_ws.expect("message_delivered").await;
        alice_ws.send_json(&json!({"event": "typing", "to": bob.id})).await;
        assert_eq!(bob_ws.expect("typing").await, json!({"event": "typing", "from": alice.id}));
        let (_, history) = app
            .get(&format!("/conversations/{}/messages", alice.id), Some(&bob.access_token))
            .await;
        assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "only the message: {history}");
        app.stop().await;
    }

    async fn only_the_recipient_may_mark_a_message_seen(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let (_, sent) = app.send(&alice, bob.id, "private").await;
        let mut alice_ws = app.connect(&alice).await;
        alice_ws.send_json(&json!({"event": "message_seen", "message_id": sent["id"]})).await;
        let error = alice_ws.expect("error").await;
        assert_eq!(error["code"], "forbidden");
        alice_ws.send_json(&json!({"event": "message_seen", "message_id": 999_999})).await;
        assert_eq!(alice_ws.expect("error").await["code"], "forbidden");
        let (_, history) = app
            .get(&format!("/conversations/{}/messages", bob.id), Some(&alice.access_token))
            .await;
        assert!(history["messages"][0]["seen_at"].is_null());
        app.stop().await;
    }
}

on_both_backends! {
    async fn every_receipt_reaches_the_sender_after_a_reconnect_storm(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let mut recipients = Vec::new();
        for n in 0..100 {
            recipients.push(app.dev_login(&format!("pupil{n}")).await);
        }
        let sends = recipients.iter().flat_map(|pupil| (0..10).map(move |n| (pupil.id, n)));
        let sends: Vec<_> = sends.collect();
        for chunk in sends.chunks(50) {
            let texts: Vec<String> = chunk.iter().map(|(to, n)| format!("homework part {n} for {to}")).collect();
            let answers = futures_util::future::join_all(
                chunk.iter().zip(&texts).map(|(&(to, _), text)| app.send(&alice, to, text)),
            )
            .await;
            assert!(answers.iter().all(|(status, _)| *status == 201), "{answers:?}");
        }
        let mut sender = app.connect(&alice).await;
        let storm = recipients.iter().map(|pupil| async {
            let mut ws = app.connect(pupil).await;
            for _ in 0..10 {
                ws.until("new_message").await;
            }
            ws
        });
        let sockets = futures_util::future::join_all(storm).await;
        let mut receipts = std::collections::HashSet::new();
        while receipts.len() < 1000 {
            let event = tokio::time::timeout(Duration::from_secs(10), sender.until("message_delivered"))
                .await
                .unwrap_or_else(|_| panic!("only {} of 1000 receipts arrived", receipts.len()));
            assert!(receipts.insert(event["message_id"].as_i64().unwrap()), "a receipt came twice: {event}");
        }
        drop(sockets);
        app.stop().await;
    }
}
