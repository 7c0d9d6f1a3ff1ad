//! A socket belongs to the session that signed it in (SPEC §5): ending the session (logout, a
//! detected refresh-token reuse, `admin kick --revoke`) closes its sockets with 4001 and no other
//! session's, and its access tokens open nothing afterwards, even an upgrade already under way. The
//! per-user cap refuses with 429 before the upgrade however many upgrades race, and `typing`
//! reaches only someone who shares a conversation with the sender.

use std::time::Duration;

use serde_json::{Value, json};
use teachlyd::config::HumanDuration;
use tokio::time::Instant;

use crate::common::{
    TestApp, TestDb, TestUser, WsClient, daemon::Daemon, eventually, session_user,
};
use crate::on_both_backends;

/// SPEC §5: a revoked session's sockets close "within a second".
const WITHIN: Duration = Duration::from_secs(1);

async fn logout(app: &TestApp, refresh_token: &str) -> u16 {
    let (status, _) = app
        .post(
            "/auth/logout",
            None,
            &json!({ "refresh_token": refresh_token }),
        )
        .await;
    status
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (u16, Value) {
    app.post(
        "/auth/refresh",
        None,
        &json!({ "refresh_token": refresh_token }),
    )
    .await
}

/// A socket of `user` that is registered (it answered a ping).
async fn open(app: &TestApp, user: &TestUser) -> WsClient {
    let mut ws = app.connect(user).await;
    ws.ping_pong().await;
    ws
}

/// Asserts that `ws` gets a close frame with 4001 by `deadline`.
async fn closed_with_4001_by(ws: &mut WsClient, deadline: Instant, what: &str) {
    let code = tokio::time::timeout_at(deadline, ws.expect_close())
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed within a second"));
    assert_eq!(code, Some(4001), "{what}");
}

/// Asserts that `token` opens no socket: 401 before any upgrade.
async fn refused_401(url: &str, token: &str, what: &str) {
    let refused = WsClient::connect(url, Some(token))
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: the socket opened"));
    assert_eq!(refused.status, 401, "{what}: {:?}", refused.body);
    assert_eq!(refused.body["code"], "invalid_token", "{what}");
}

on_both_backends! {
    async fn logout_closes_that_sessions_sockets_and_no_other(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let phone = app.dev_login("alice").await;
        let laptop = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let mut phone_ws = open(&app, &phone).await;
        let mut phone_tab = open(&app, &phone).await;
        let mut laptop_ws = open(&app, &laptop).await;
        let mut bob_ws = open(&app, &bob).await;

        let deadline = Instant::now() + WITHIN;
        assert_eq!(logout(&app, &phone.refresh_token).await, 204);
        closed_with_4001_by(&mut phone_ws, deadline, "the phone's socket").await;
        closed_with_4001_by(&mut phone_tab, deadline, "the phone's second tab").await;

        // The laptop's session keeps its socket, and it works.
        laptop_ws.ping_pong().await;
        laptop_ws.send_json(&json!({"event": "message", "to": bob.id, "message": "still here"})).await;
        assert_eq!(laptop_ws.expect("message_sent").await["message"]["content"], "still here");
        assert_eq!(bob_ws.until("new_message").await["message"]["content"], "still here");
        eventually("only the laptop's socket is left", || async { app.open_sockets(&phone) == 1 }).await;

        // The ended session's access token opens nothing, over WebSocket or HTTP.
        refused_401(&app.ws_url("/ws"), &phone.access_token, "the phone's token").await;
        let (status, body) = app.get("/users/me", Some(&phone.access_token)).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")), "{body}");
        let (status, _) = app.get("/users/me", Some(&laptop.access_token)).await;
        assert_eq!(status, 200);
        let mut again = open(&app, &laptop).await;
        again.ping_pong().await;
        app.stop().await;
    }

    async fn a_reused_refresh_token_closes_its_sessions_sockets(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.auth.refresh_reuse_grace = "0s".parse::<HumanDuration>().unwrap();
        })
        .await;
        let first = app.dev_login("alice").await;
        let (status, body) = refresh(&app, &first.refresh_token).await;
        assert_eq!(status, 200, "{body}");
        let rotated = session_user(&body);
        let other = app.dev_login("alice").await;
        // Sockets opened with the first pair and with its successor belong to the same session.
        let mut first_ws = open(&app, &first).await;
        let mut rotated_ws = open(&app, &rotated).await;
        let mut other_ws = open(&app, &other).await;

        let deadline = Instant::now() + WITHIN;
        let (status, body) = refresh(&app, &first.refresh_token).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("token_reused")), "{body}");
        closed_with_4001_by(&mut first_ws, deadline, "the socket of the first pair").await;
        closed_with_4001_by(&mut rotated_ws, deadline, "the socket of the rotated pair").await;
        other_ws.ping_pong().await;
        refused_401(&app.ws_url("/ws"), &rotated.access_token, "the rotated token").await;
        let (status, _) = app.get("/users/me", Some(&other.access_token)).await;
        assert_eq!(status, 200, "the other session is untouched");
        app.stop().await;
    }

    async fn admin_kick_revoke_closes_every_socket_and_ends_every_session(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "", "info").await;
        let socket = daemon.admin_socket();
        let url = daemon.ws_url("");
        let phone = daemon.dev_login("alice").await;
        let laptop = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let mut alice_sockets = Vec::new();
        for user in [&phone, &phone, &laptop] {
            let mut ws = WsClient::connect(&url, Some(&user.access_token)).await.unwrap();
            ws.ping_pong().await;
            alice_sockets.push(ws);
        }
        let mut bob_ws = WsClient::connect(&url, Some(&bob.access_token)).await.unwrap();
        bob_ws.ping_pong().await;

        let alice_id = phone.id.to_string();
        let kicked = crate::admin::admin_json(&socket, &["kick", &alice_id, "--revoke"]).await;
        let deadline = Instant::now() + WITHIN;
        assert_eq!(kicked, json!({"user_id": phone.id, "sockets_closed": 3, "refresh_tokens_revoked": 2}));
        for (n, ws) in alice_sockets.iter_mut().enumerate() {
            closed_with_4001_by(ws, deadline, &format!("alice's socket {n}")).await;
        }
        bob_ws.ping_pong().await;

        // Every session of alice ended: her access tokens open nothing, her refresh tokens mint nothing.
        for (what, session) in [("the phone", &phone), ("the laptop", &laptop)] {
            refused_401(&url, &session.access_token, what).await;
            let me = daemon
                .http
                .get(format!("{}/users/me", daemon.base))
                .bearer_auth(&session.access_token)
                .send()
                .await
                .unwrap();
            assert_eq!(me.status(), 401, "{what}");
            let (status, _) = daemon.post("/auth/refresh", None, &json!({"refresh_token": session.refresh_token})).await;
            assert_eq!(status, 401, "{what}");
        }
        // Signing in again is a new session.
        let again = daemon.dev_login("alice").await;
        let mut ws = WsClient::connect(&url, Some(&again.access_token)).await.expect("a new session opens a socket");
        ws.ping_pong().await;
        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
    }

    async fn a_revoked_sessions_upgrades_under_way_never_stay_open(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let url = app.ws_url("/ws");
        let (mut refused, mut closed) = (0, 0);
        let mut users = Vec::new();
        for round in 0..40u64 {
            // A user of its own per round: sockets of earlier rounds still closing take no place.
            let user = app.dev_login(&format!("racer{round}")).await;
            // The logout starts from 3 ms before to 4.5 ms after the upgrades, so that it lands
            // before, among and after their checks and registrations.
            let offset = Duration::from_micros(round % 16 * 500);
            let logout_first = offset < Duration::from_millis(3);
            let ends = {
                let (http, url, token) = (app.http.clone(), app.url("/auth/logout"), user.refresh_token.clone());
                let wait = if logout_first { Duration::ZERO } else { offset - Duration::from_millis(3) };
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    http.post(url).json(&json!({ "refresh_token": token })).send().await.unwrap().status()
                })
            };
            if logout_first {
                tokio::time::sleep(Duration::from_millis(3) - offset).await;
            }
            let upgrades: Vec<_> = (0..4)
                .map(|_| {
                    let (url, token) = (url.clone(), user.access_token.clone());
                    tokio::spawn(async move { WsClient::connect(&url, Some(&token)).await })
                })
                .collect();
            assert_eq!(ends.await.unwrap(), 204);
            let deadline = Instant::now() + WITHIN;
            for upgrade in upgrades {
                match upgrade.await.unwrap() {
                    Err(refusal) => {
                        assert_eq!((refusal.status.as_u16(), &refusal.body["code"]), (401, &json!("invalid_token")));
                        refused += 1;
                    }
                    Ok(mut ws) => {
                        closed_with_4001_by(&mut ws, deadline, &format!("round {round}")).await;
                        closed += 1;
                    }
                }
            }
            refused_401(&url, &user.access_token, &format!("round {round}, afterwards")).await;
            users.push(user);
        }
        eprintln!("upgrades refused with 401: {refused}; opened, then closed with 4001: {closed}");
        for user in &users {
            eventually("every socket of an ended session is gone", || async { app.open_sockets(user) == 0 }).await;
        }
        app.stop().await;
    }

    async fn the_connection_cap_refuses_with_429_before_the_upgrade_even_when_upgrades_race(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        assert_eq!(app.config.limits.max_connections_per_user, 5);
        let alice = app.dev_login("alice").await;
        let mut kept = Vec::new();
        for _ in 0..5 {
            kept.push(open(&app, &alice).await);
        }
        let sixth = WsClient::connect(&app.ws_url("/ws"), Some(&alice.access_token)).await;
        let refused = sixth.err().expect("the sixth socket is refused before the upgrade");
        assert_eq!((refused.status.as_u16(), &refused.body["code"]), (429, &json!("too_many_connections")));

        // Ten upgrades at once for a user who holds none: five places, five refusals, no 101 that
        // is closed afterwards.
        for round in 0..5 {
            let user = app.dev_login(&format!("racer{round}")).await;
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(10));
            let racers: Vec<_> = (0..10)
                .map(|_| {
                    let (url, token, start) = (app.ws_url("/ws"), user.access_token.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        WsClient::connect(&url, Some(&token)).await
                    })
                })
                .collect();
            let mut opened = Vec::new();
            let mut refusals = 0;
            for racer in racers {
                match racer.await.unwrap() {
                    Ok(ws) => opened.push(ws),
                    Err(refused) => {
                        assert_eq!((refused.status.as_u16(), &refused.body["code"]), (429, &json!("too_many_connections")));
                        refusals += 1;
                    }
                }
            }
            assert_eq!((opened.len(), refusals), (5, 5), "round {round}");
            for ws in &mut opened {
                ws.ping_pong().await;
                ws.expect_silence(Duration::from_millis(200)).await;
                ws.ping_pong().await;
            }
            assert_eq!(app.open_sockets(&user), 5);
        }

        // A place frees when a socket closes.
        kept.pop().unwrap().close().await;
        eventually("a place frees up", || async {
            match WsClient::connect(&app.ws_url("/ws"), Some(&alice.access_token)).await {
                Ok(ws) => { ws.close().await; true }
                Err(refused) => { assert_eq!(refused.status, 429); false }
            }
        })
        .await;
        app.stop().await;
    }

    async fn typing_reaches_only_someone_who_shares_a_conversation(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        let carol = app.dev_login("carol").await;
        assert_eq!(app.send(&alice, bob.id, "we share a conversation").await.0, 201);
        let mut alice_ws = open(&app, &alice).await;
        let mut bob_ws = app.connect(&bob).await;
        bob_ws.until("new_message").await;
        let mut carol_ws = open(&app, &carol).await;
        alice_ws.until("message_delivered").await;

        // To a stranger and to nobody: silence for everyone, the sender included.
        alice_ws.send_json(&json!({"event": "typing", "to": carol.id})).await;
        alice_ws.send_json(&json!({"event": "typing", "to": 987_654})).await;
        alice_ws.send_json(&json!({"event": "typing", "to": bob.id})).await;
        assert_eq!(bob_ws.expect("typing").await, json!({"event": "typing", "from": alice.id}));
        carol_ws.expect_silence(Duration::from_millis(300)).await;
        alice_ws.expect_silence(Duration::from_millis(300)).await;
        carol_ws.send_json(&json!({"event": "typing", "to": alice.id})).await;
        alice_ws.expect_silence(Duration::from_millis(300)).await;
        carol_ws.expect_silence(Duration::from_millis(100)).await;

        // A first message makes them peers at once.
        carol_ws.send_json(&json!({"event": "message", "to": alice.id, "message": "hi alice"})).await;
        carol_ws.expect("message_sent").await;
        assert_eq!(alice_ws.expect("new_message").await["message"]["content"], "hi alice");
        carol_ws.send_json(&json!({"event": "typing", "to": alice.id})).await;
        assert_eq!(alice_ws.expect("typing").await, json!({"event": "typing", "from": carol.id}));
        app.stop().await;
    }
}
