//! The REST routes of SPEC §4 over HTTP.

use std::{collections::HashSet, time::Duration};

use serde_json::json;

use crate::common::TestApp;
use crate::on_both_backends;

on_both_backends! {
    async fn history_pages_through_250_messages_without_gaps_or_repeats(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut sent = Vec::new();
        for n in 0..250 {
            let (from, to) = if n % 3 == 0 { (&bob, alice.id) } else { (&alice, bob.id) };
            let (status, body) = app.send(from, to, &format!("message {n}")).await;
            assert_eq!(status, 201, "{body}");
            sent.push(body["id"].as_i64().unwrap());
        }
        let mut seen = Vec::new();
        let mut before: Option<i64> = None;
        let mut pages = 0;
        loop {
            let path = match before {
                Some(before) => format!("/conversations/{}/messages?limit=100&before={before}", bob.id),
                None => format!("/conversations/{}/messages?limit=100", bob.id),
            };
            let (status, page) = app.get(&path, Some(&alice.access_token)).await;
            assert_eq!(status, 200);
            pages += 1;
            seen.extend(page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()));
            match page["next_before"].as_i64() {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut expected = sent.clone();
        expected.reverse();
        assert_eq!(seen, expected, "newest first, every message exactly once");
        // Bob sees the same conversation.
        let (_, page) = app
            .get(&format!("/conversations/{}/messages?limit=1", alice.id), Some(&bob.access_token))
            .await;
        assert_eq!(page["messages"][0]["id"], *sent.last().unwrap());
        app.stop().await;
    }

    async fn conversations_list_the_most_recent_first_with_unread_counts(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let carol = app.dev_login("carol").await;
        app.send(&bob, alice.id, "one").await;
        app.send(&bob, alice.id, "two").await;
        let (_, last_from_carol) = app.send(&carol, alice.id, "three").await;
        app.send(&alice, carol.id, "four").await;
        let (status, list) = app.get("/conversations", Some(&alice.access_token)).await;
        assert_eq!(status, 200);
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["peer"]["id"], carol.id);
        assert_eq!(list[0]["last_message"]["content"], "four");
        assert_eq!(list[0]["unread"], 1);
        assert_eq!(list[1]["peer"]["id"], bob.id);
        assert_eq!(list[1]["unread"], 2);
        assert!(list[0]["peer"].get("google_id").is_none());

        let (status, marked) = app
            .post(&format!("/conversations/{}/seen", carol.id), Some(&alice.access_token), &json!({"up_to": last_from_carol["id"]}))
            .await;
        assert_eq!((status, marked), (200, json!({"marked": 1})));
        let (_, list) = app.get("/conversations", Some(&alice.access_token)).await;
        assert_eq!(list[0]["unread"], 0);
        app.stop().await;
    }

    async fn seen_over_rest_tells_the_sender(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(app.send(&alice, bob.id, &format!("m{n}")).await.1["id"].as_i64().unwrap());
        }
        let mut alice_ws = app.connect(&alice).await;
        let (status, body) = app
            .post(&format!("/conversations/{}/seen", alice.id), Some(&bob.access_token), &json!({"up_to": ids[1]}))
            .await;
        assert_eq!((status, body), (200, json!({"marked": 2})));
        // Seen before any socket of bob's got them: seen means delivered too, and alice hears of the
        // delivery first.
        let mut delivered = HashSet::new();
        let mut seen = HashSet::new();
        while seen.len() < 2 {
            let event = alice_ws.until_any(&["message_delivered", "message_seen"]).await;
            let id = event["message_id"].as_i64().unwrap();
            if event["event"] == "message_delivered" {
                delivered.insert(id);
            } else {
                assert!(delivered.contains(&id), "message_delivered comes before message_seen");
                seen.insert(id);
            }
        }
        assert_eq!(seen, HashSet::from([ids[0], ids[1]]));
        alice_ws.expect_silence(Duration::from_millis(200)).await;
        // Only the message bob has not seen is pushed when he connects.
        let mut bob_ws = app.connect(&bob).await;
        assert_eq!(bob_ws.expect("new_message").await["message"]["id"], ids[2]);
        bob_ws.expect_silence(Duration::from_millis(300)).await;
        let (_, history) = app
            .get(&format!("/conversations/{}/messages", alice.id), Some(&bob.access_token))
            .await;
        for message in history["messages"].as_array().unwrap() {
            assert!(message["delivered_at"].is_string(), "{message}");
        }
        // Marking again changes nothing; alice cannot mark her own messages.
        let (_, body) = app
            .post(&format!("/conversations/{}/seen", alice.id), Some(&bob.access_token), &json!({"up_to": ids[1]}))
            .await;
        assert_eq!(body, json!({"marked": 0}));
        let (_, body) = app
            .post(&format!("/conversations/{}/seen", bob.id), Some(&alice.access_token), &json!({"up_to": ids[2]}))
            .await;
        assert_eq!(body, json!({"marked": 0}));
        app.stop().await;
    }

    async fn users_are_found_and_shown_without_private_fields(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("Alice Liddell").await;
        let bob = app.dev_login("Bob").await;
        app.dev_login("alicia").await;
        let (status, me) = app.get("/users/me", Some(&alice.access_token)).await;
        assert_eq!(status, 200);
        assert_eq!(me["google_id"], "dev:Alice Liddell");
        assert_eq!(me["id"], alice.id);

        let (status, found) = app.get("/users?q=ALI&limit=10", Some(&bob.access_token)).await;
        assert_eq!(status, 200);
        let names: Vec<_> = found.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["Alice Liddell", "alicia"]);
        for user in found.as_array().unwrap() {
            assert!(user.get("google_id").is_none() && user.get("email").is_none());
            for key in ["id", "name", "avatar_url", "online", "last_seen_at"] {
                assert!(user.get(key).is_some(), "public user has {key}");
            }
        }
        let (_, found) = app.get("/users?q=%25", Some(&bob.access_token)).await;
        assert_eq!(found, json!([]), "LIKE wildcards are matched literally");
        let (_, one) = app.get("/users?limit=1", Some(&bob.access_token)).await;
        assert_eq!(one.as_array().unwrap().len(), 1);

        let (status, user) = app.get(&format!("/users/{}", alice.id), Some(&bob.access_token)).await;
        assert_eq!(status, 200);
        assert_eq!(user["name"], "Alice Liddell");
        assert!(user.get("google_id").is_none());
        let (status, _) = app.get("/users/424242", Some(&bob.access_token)).await;
        assert_eq!(status, 404);
        app.stop().await;
    }

    async fn bad_requests_get_a_clear_error_and_change_nothing(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let token = Some(alice.access_token.as_str());
        let to_bob = format!("/conversations/{}/messages", bob.id);
        let cases: Vec<(u16, &str, (u16, serde_json::Value))> = vec![
            (401, "not_authenticated", app.get("/users/me", None).await),
            (401, "invalid_token", app.get("/users/me", Some("x.y.z")).await),
            (404, "not_found", app.get("/no/such/route", token).await),
            (405, "method_not_allowed", {
                let response = app.http.delete(app.url("/users/me")).send().await.unwrap();
                (response.status().as_u16(), response.json().await.unwrap())
            }),
            (422, "invalid_field", app.get("/users?limit=0", token).await),
            (422, "invalid_field", app.get("/users?limit=101", token).await),
            (422, "invalid_field", app.get("/users?limit=ten", token).await),
            (422, "invalid_field", app.get("/users?q=a%00b", token).await),
            (422, "invalid_field", app.get(&format!("/users?q={}", "q".repeat(101)), token).await),
            (422, "invalid_field", app.get("/users/abc", token).await),
            (422, "invalid_field", app.get(&format!("{to_bob}?before=-3"), token).await),
            (422, "invalid_field", app.get(&format!("{to_bob}?limit=99999999999999999999"), token).await),
            (400, "invalid_json", app.post_raw(&to_bob, token, "{\"message\":".into()).await),
            (422, "invalid_field", app.post(&to_bob, token, &json!({})).await),
            (422, "invalid_field", app.post(&to_bob, token, &json!({"message": 5})).await),
            (422, "invalid_field", app.post(&to_bob, token, &json!({"message": "x", "extra": 1})).await),
            (422, "invalid_field", app.post(&to_bob, token, &json!({"message": "x", "client_id": ""})).await),
            (422, "empty_message", app.post(&to_bob, token, &json!({"message": "\n\t "})).await),
            (422, "invalid_recipient", app.send(&alice, alice.id, "me").await),
            (404, "unknown_recipient", app.send(&alice, 999_999, "who").await),
            (422, "invalid_field", app.post("/conversations/0/messages", token, &json!({"message": "x"})).await),
            (413, "payload_too_large", oversized_post(&app, &to_bob, &alice.access_token).await),
            (422, "invalid_field", app.post(&format!("/conversations/{}/seen", bob.id), token, &json!({"up_to": "all"})).await),
            (422, "invalid_field", app.post("/auth/dev-login", None, &json!({"name": ""})).await),
            (422, "invalid_field", app.post("/auth/dev-login", None, &json!({"name": "n".repeat(65)})).await),
            (422, "invalid_field", app.post("/auth/dev-login", None, &json!({"nom": "x"})).await),
        ];
        for (n, (status, code, (got_status, body))) in cases.into_iter().enumerate() {
            assert_eq!((got_status, body["code"].as_str()), (status, Some(code)), "case {n}: {body}");
            assert!(body["detail"].as_str().is_some_and(|d| d.len() > 5), "case {n} explains itself: {body}");
        }
        let (_, history) = app.get(&to_bob, token).await;
        assert_eq!(history["messages"], json!([]));
        app.stop().await;
    }

    async fn health_and_ready_answer(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        assert_eq!(app.get("/health", None).await, (200, json!({"status": "ok"})));
        let (status, body) = app.get("/ready", None).await;
        assert_eq!(status, 200);
        assert_eq!(body["database"], "ok");
        app.stop().await;
    }
}

/// A request that announces a body over the limit: the server answers before reading it, so it is
/// written by hand rather than racing a client that is still sending.
async fn oversized_post(app: &TestApp, path: &str, token: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or_default())
}

#[tokio::test]
async fn ready_is_503_when_the_database_is_gone() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn(crate::common::Backend::Postgres).await;
    assert_eq!(app.get("/ready", None).await.0, 200);
    let name = app
        .config
        .database
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let admin = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .await
    .unwrap();
    let (status, body) = app.get("/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_ne!(body["database"], "ok");
    assert_eq!(
        app.get("/health", None).await,
        (200, json!({"status": "ok"})),
        "liveness does not depend on it"
    );
    app.stop().await;
}
