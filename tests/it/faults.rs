//! The message path on a bad day (SPEC §5 "Faults"): a stalled or half-broken database, a deleted
//! user, an exhausted pool, a schema that cannot be read. Each test provokes the fault for real
//! against the server's own database and checks what every client is told.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, TestUser, WsClient, eventually};
use crate::on_both_backends;

/// Reads events until `name` arrives, answering nothing; panics after `limit`.
async fn within(ws: &mut WsClient, name: &str, limit: Duration) -> Value {
    tokio::time::timeout(limit, ws.until(name))
        .await
        .unwrap_or_else(|_| panic!("no {name} within {limit:?}"))
}

fn message_frame(to: i64, text: &str, client_id: &str) -> Value {
    json!({"event": "message", "to": to, "message": text, "client_id": client_id})
}

/// Alice and bob signed in with a socket each, after one message from alice to bob (so bob is a
/// recipient the server knows, as in a live conversation).
async fn in_conversation(app: &TestApp) -> (TestUser, TestUser, WsClient, WsClient) {
    let alice = app.dev_login("alice").await;
    let bob = app.dev_login("bob").await;
    let mut alice_ws = app.connect(&alice).await;
    let mut bob_ws = app.connect(&bob).await;
    alice_ws
        .send_json(&message_frame(bob.id, "hello", "hello-1"))
        .await;
    alice_ws.until("message_sent").await;
    bob_ws.until("new_message").await;
    (alice, bob, alice_ws, bob_ws)
}

async fn history_len(app: &TestApp, token: &str, peer: i64) -> usize {
    let (status, history) = app
        .get(
            &format!("/conversations/{peer}/messages?limit=100"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{history}");
    history["messages"].as_array().unwrap().len()
}

on_both_backends! {
    async fn a_stalled_database_answers_unavailable_in_time_and_the_socket_keeps_reading(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.database.write_timeout = "2s".parse().unwrap();
        })
        .await;
        let write_timeout = Duration::from_secs(2);
        let (alice, bob, mut alice_ws, mut bob_ws) = in_conversation(&app).await;

        let lock = app.db.lock_writes().await;
        let sent_at = Instant::now();
        alice_ws.send_json(&message_frame(bob.id, "during the stall", "stall-1")).await;
        // The socket still reads and answers while its message waits for the database.
        alice_ws.send_json(&json!({"event": "ping"})).await;
        within(&mut alice_ws, "pong", Duration::from_secs(1)).await;
        assert!(sent_at.elapsed() < Duration::from_secs(1), "pong came while the message was pending");
        let refused = within(&mut alice_ws, "error", write_timeout + Duration::from_secs(2)).await;
        let waited = sent_at.elapsed();
        assert_eq!(refused["code"], "unavailable", "{refused}");
        assert_eq!(refused["client_id"], "stall-1");
        assert!(waited <= write_timeout + Duration::from_millis(800), "answered after {waited:?}");

        // REST answers 503 within the same bound.
        let started = Instant::now();
        let (status, body) = app.send(&alice, bob.id, "by REST during the stall").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
        assert!(started.elapsed() <= write_timeout + Duration::from_millis(800), "{:?}", started.elapsed());
        lock.close().await;

        // Nothing the senders were told is unavailable was stored: the retry stores it once.
        alice_ws.send_json(&message_frame(bob.id, "during the stall", "stall-1")).await;
        let sent = within(&mut alice_ws, "message_sent", Duration::from_secs(5)).await;
        assert_eq!(sent["message"]["client_id"], "stall-1");
        let received = bob_ws.expect("new_message").await;
        assert_eq!(received["message"]["client_id"], "stall-1");
        bob_ws.expect_silence(Duration::from_millis(500)).await;
        assert_eq!(history_len(&app, &alice.access_token, bob.id).await, 2, "hello + the retry");
        app.stop().await;
    }

    async fn shutdown_ends_within_the_grace_whatever_the_database_does(backend: Backend) {
        let mut app = TestApp::spawn_with(backend, |config| {
            config.server.shutdown_grace = "2s".parse().unwrap();
            config.database.write_timeout = "4s".parse().unwrap();
        })
        .await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut alice_ws = app.connect(&alice).await;
        alice_ws.send_json(&message_frame(bob.id, "warm up", "w-1")).await;
        alice_ws.expect("message_sent").await;
        let lock = app.db.lock_writes().await;
        for n in 0..5 {
            alice_ws.send_json(&message_frame(bob.id, &format!("stuck {n}"), &format!("s-{n}"))).await;
        }
        let rest = tokio::spawn({
            let http = app.http.clone();
            let url = app.url(&format!("/conversations/{}/messages", bob.id));
            let token = alice.access_token.clone();
            async move {
                http.post(url).bearer_auth(token).json(&json!({"message": "stuck too"})).send().await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        app.stop_server().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2 + 5), "stop took {took:?} with the database locked");
        // The socket was answered (or closed) rather than left hanging; nothing was acknowledged.
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), alice_ws.next_frame()).await {
            assert_ne!(event["event"], "message_sent", "{event}");
        }
        if let Ok(Ok(response)) = rest.await {
            assert_ne!(response.status().as_u16(), 201, "no message is reported stored");
        }
        lock.close().await;
    }

    async fn a_backlog_that_cannot_be_read_closes_the_socket_with_1011(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut ids = Vec::new();
        for n in 0..3 {
            let (status, body) = app.send(&alice, bob.id, &format!("waiting {n}")).await;
            assert_eq!(status, 201);
            ids.push(body["id"].clone());
        }
        // Any statement that reads the backlog fails until the column is back.
        app.db.execute("ALTER TABLE messages RENAME COLUMN seen_at TO seen_at_hidden").await;
        let mut bob_ws = app.connect(&bob).await;
        assert_eq!(bob_ws.next_event().await["event"], "user_connected");
        assert_eq!(bob_ws.expect_close().await, Some(1011), "never left open without its backlog");
        eventually("the socket is gone", || async { app.open_sockets(&bob) == 0 }).await;

        app.db.execute("ALTER TABLE messages RENAME COLUMN seen_at_hidden TO seen_at").await;
        let mut bob_ws = app.connect(&bob).await;
        for id in ids {
            assert_eq!(bob_ws.expect("new_message").await["message"]["id"], id);
        }
        app.stop().await;
    }

    async fn tokens_of_a_deleted_user_are_refused(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let carol = app.dev_login("carol").await;
        let (status, _) = app.get("/users/me", Some(&carol.access_token)).await;
        assert_eq!(status, 200);
        app.db.execute(&format!("DELETE FROM refresh_tokens WHERE user_id = {0}; DELETE FROM users WHERE id = {0}", carol.id)).await;
        for path in ["/users/me", "/conversations", "/users?q=a"] {
            let (status, body) = app.get(path, Some(&carol.access_token)).await;
            assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")), "{path}: {body}");
        }
        let refused = WsClient::connect(&app.ws_url("/ws"), Some(&carol.access_token)).await.err().unwrap();
        assert_eq!(refused.status, 401);
        app.stop().await;
    }

    async fn one_message_that_cannot_be_stored_fails_alone(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let ghost = app.dev_login("ghost").await;
        let mut bob_ws = app.connect(&bob).await;
        let mut ghost_ws = app.connect(&ghost).await;
        assert_eq!(app.send(&alice, bob.id, "hello").await.0, 201);
        bob_ws.expect("new_message").await;
        // The ghost's socket was opened while they existed; now their row is gone.
        app.db.execute(&format!("DELETE FROM refresh_tokens WHERE user_id = {0}; DELETE FROM users WHERE id = {0}", ghost.id)).await;

        // Hold the writer on one message so that what follows queues up and commits as one batch.
        let lock = app.db.lock_writes().await;
        let first = tokio::spawn({
            let (http, url, token) = (app.http.clone(), app.url(&format!("/conversations/{}/messages", bob.id)), alice.access_token.clone());
            async move { http.post(url).bearer_auth(token).json(&json!({"message": "held"})).send().await.unwrap().status().as_u16() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        for n in 0..10 {
            ghost_ws.send_json(&message_frame(bob.id, &format!("boo {n}"), &format!("g-{n}"))).await;
        }
        let path = format!("/conversations/{}/messages", bob.id);
        let sends = (0..40).map(|n| {
            let body = json!({"message": format!("lesson note {n}")});
            let (app, path, token) = (&app, &path, &alice.access_token);
            async move { app.post(path, Some(token), &body).await }
        });
        let (answers, ()) = tokio::join!(join_all(sends), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            lock.close().await;
        });
        assert_eq!(first.await.unwrap(), 201);
        for (status, body) in &answers {
            assert_eq!(*status, 201, "another user's message fails with the ghost's: {body}");
        }
        for _ in 0..10 {
            let refused = ghost_ws.expect("error").await;
            assert_eq!(refused["code"], "internal", "{refused}");
            assert!(refused["client_id"].as_str().unwrap().starts_with("g-"));
        }
        let mut received = 0;
        while received < 41 {
            let event = bob_ws.expect("new_message").await;
            assert_eq!(event["message"]["from_id"], alice.id, "only alice's messages arrive");
            received += 1;
        }
        assert_eq!(history_len(&app, &bob.access_token, alice.id).await, 42);
        app.stop().await;
    }

    async fn a_committed_message_is_answered_when_a_read_back_fails(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.database.write_timeout = "2s".parse().unwrap();
            config.database.max_connections = 2;
        })
        .await;
        let (alice, bob, mut alice_ws, mut bob_ws) = in_conversation(&app).await;
        bob_ws.send_json(&message_frame(alice.id, "reply", "r-0")).await;
        bob_ws.until("message_sent").await;
        alice_ws.until("new_message").await;

        // Make reading back the row of a repeated client_id fail, whatever else works.
        let mut blocker = app.db.connect().await;
        let mut stuck_refreshes = Vec::new();
        match backend {
            // Every pooled connection waits on a lock; the writer's own connection does not.
            Backend::Postgres => {
                blocker.execute("BEGIN; LOCK TABLE refresh_tokens IN ACCESS EXCLUSIVE MODE").await;
                for _ in 0..2 {
                    let (http, url, token) = (app.http.clone(), app.url("/auth/refresh"), alice.refresh_token.clone());
                    stuck_refreshes.push(tokio::spawn(async move {
                        let _ = http.post(url).json(&json!({"refresh_token": token})).send().await;
                    }));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // A row the server cannot decode answers the read-back with an error.
            Backend::Sqlite => {
                blocker.execute(&format!(
                    "UPDATE messages SET timestamp = 'not a time' WHERE client_id = 'hello-1' AND from_id = {}",
                    alice.id
                )).await;
            }
        }
        let lock = app.db.lock_writes().await;
        alice_ws.send_json(&message_frame(bob.id, "held", "k-2")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The retry of hello-1 and bob's new message share the next batch.
        alice_ws.send_json(&message_frame(bob.id, "hello", "hello-1")).await;
        bob_ws.send_json(&message_frame(alice.id, "new after the retry", "r-1")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        lock.close().await;

        let sent = within(&mut bob_ws, "message_sent", Duration::from_secs(3)).await;
        assert_eq!(sent["message"]["client_id"], "r-1", "the committed message is acknowledged");
        let mut got_new = false;
        let mut refused_retry = false;
        for _ in 0..3 {
            let event = tokio::time::timeout(Duration::from_secs(4), alice_ws.until_any(&["new_message", "error", "message_sent"])).await.unwrap();
            match event["event"].as_str().unwrap() {
                "new_message" => got_new |= event["message"]["client_id"] == "r-1",
                "error" => {
                    assert_eq!((event["code"].as_str(), event["client_id"].as_str()), (Some("unavailable"), Some("hello-1")), "{event}");
                    refused_retry = true;
                }
                _ => assert_eq!(event["message"]["client_id"], "k-2", "{event}"),
            }
        }
        assert!(got_new, "the committed message was fanned out to its recipient");
        assert!(refused_retry, "the retry whose row could not be read is told to try again");
        blocker.close().await;
        for refresh in stuck_refreshes {
            let _ = refresh.await;
        }
        app.stop().await;
    }

    async fn a_socket_task_that_panics_releases_its_place(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| config.limits.max_connections_per_user = 2).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        assert_eq!(app.send(&alice, bob.id, "we share a conversation").await.0, 201);
        let mut alice_ws = app.connect(&alice).await;
        let chat = &app.server().app.chat;
        for _ in 0..3 {
            // What a socket task does, through the library, until it panics mid-way.
            let session = teachlyd::domain::SessionId::from("a-session");
            let slot = chat.reserve(bob.id, &session).expect("there is room");
            let (handle, _queue) = teachlyd::hub::ConnectionHandle::new(bob.id, session, 16, Default::default());
            let registration = chat.connect(slot, handle).expect("the session is live");
            let task = tokio::spawn(async move {
                let _held = registration;
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("a bug in a socket task");
            });
            assert!(task.await.unwrap_err().is_panic());
        }
        assert_eq!(app.open_sockets(&bob), 0, "no ghost connection counts against bob's cap");
        assert_ne!(settled_presence(&mut alice_ws, bob.id).await, Some(true), "bob is not left shown online");
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let mut ws = app.connect(&bob).await;
            ws.send_json(&json!({"event": "ping"})).await;
            ws.until("pong").await;
            sockets.push(ws);
        }
        app.stop().await;
    }

    async fn presence_settles_true_after_quick_reconnects(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        assert_eq!(app.send(&alice, bob.id, "we share a conversation").await.0, 201);
        let mut alice_ws = app.connect(&alice).await;
        let mut bob_ws = app.connect(&bob).await;
        assert_eq!(settled_presence(&mut alice_ws, bob.id).await, Some(true));
        let mut wrong = 0;
        for _ in 0..15 {
            // A page reload: the old socket closes while the new one opens.
            let (new_ws, ()) = tokio::join!(app.connect(&bob), bob_ws.close());
            bob_ws = new_ws;
            if settled_presence(&mut alice_ws, bob.id).await == Some(false) {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 0, "peers saw an online user as offline after {wrong} of 15 reloads");
        bob_ws.close().await;
        assert_eq!(settled_presence(&mut alice_ws, bob.id).await, Some(false));
        app.stop().await;
    }
}

/// Reads `ws` until it has been quiet for half a second; answers the last presence event about
/// `user` (true: connected), if any.
async fn settled_presence(ws: &mut WsClient, user: i64) -> Option<bool> {
    let mut last = None;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), ws.next_frame()).await
    {
        if event["user_id"] == user {
            match event["event"].as_str() {
                Some("user_connected") => last = Some(true),
                Some("user_disconnected") => last = Some(false),
                _ => {}
            }
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_writer_does_not_wait_behind_reads() {
    let app = TestApp::spawn_with(Backend::Postgres, |config| {
        config.database.max_connections = 2;
    })
    .await;
    let alice = app.dev_login("alice").await;
    let bob = app.dev_login("bob").await;
    let mut alice_ws = app.connect(&alice).await;
    let mut bob_ws = app.connect(&bob).await;
    alice_ws
        .send_json(&message_frame(bob.id, "hello", "h-0"))
        .await;
    alice_ws.expect("message_sent").await;
    bob_ws.expect("new_message").await;

    // Both pooled connections wait on a lock that a slow request holds.
    let mut blocker = app.db.connect().await;
    blocker
        .execute("BEGIN; LOCK TABLE refresh_tokens IN ACCESS EXCLUSIVE MODE")
        .await;
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, token) = (
                app.http.clone(),
                app.url("/auth/refresh"),
                alice.refresh_token.clone(),
            );
            tokio::spawn(async move {
                let _ = http
                    .post(url)
                    .json(&json!({"refresh_token": token}))
                    .send()
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually("the pool is exhausted", || async {
        app.pool_usage().in_use >= 2
    })
    .await;

    let started = Instant::now();
    for n in 0..5 {
        alice_ws
            .send_json(&message_frame(
                bob.id,
                &format!("still flowing {n}"),
                &format!("f-{n}"),
            ))
            .await;
        within(&mut alice_ws, "message_sent", Duration::from_secs(2)).await;
        within(&mut bob_ws, "new_message", Duration::from_secs(2)).await;
    }
    within(&mut alice_ws, "message_delivered", Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "messages waited {:?} for a pooled connection",
        started.elapsed()
    );
    blocker.close().await;
    for request in stuck {
        let _ = request.await;
    }
    app.stop().await;
}

/// PostgreSQL only: there a test can hold the recipient check on a lock, while SQLite's readers
/// (WAL) never wait for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_s_messages_are_stored_in_the_order_sent_when_a_check_waits() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_alice, bob, mut alice_ws, _bob_ws) = in_conversation(&app).await;
    let carol = app.dev_login("carol").await;

    // Carol is a recipient the server has not checked yet: the first message to her reads the
    // users table, which the test holds, while bob is known and needs no read.
    let mut blocker = app.db.connect().await;
    blocker
        .execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await;
    alice_ws
        .send_json(&message_frame(carol.id, "first, to carol", "o-1"))
        .await;
    alice_ws
        .send_json(&message_frame(bob.id, "second, to bob", "o-2"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.close().await;

    let first = within(&mut alice_ws, "message_sent", Duration::from_secs(5)).await;
    let second = within(&mut alice_ws, "message_sent", Duration::from_secs(5)).await;
    assert_eq!(first["message"]["client_id"], "o-1", "acks in send order");
    assert_eq!(second["message"]["client_id"], "o-2");
    let (first, second) = (
        first["message"]["id"].as_i64().unwrap(),
        second["message"]["id"].as_i64().unwrap(),
    );
    assert!(
        first < second,
        "the message sent first is stored first: ids {first} and {second}"
    );
    app.stop().await;
}
