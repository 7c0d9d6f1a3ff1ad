//! Sessions: refresh rotation, reuse detection, logout, dev login switches.

use serde_json::json;

use crate::common::{TestApp, session_user};
use crate::on_both_backends;

on_both_backends! {
    async fn refresh_rotates_and_a_reused_token_revokes_the_family(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let (status, body) = app.post("/auth/refresh", None, &json!({"refresh_token": alice.refresh_token})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 900);
        let second = session_user(&body);
        assert_ne!(second.refresh_token, alice.refresh_token);
        let (status, me) = app.get("/users/me", Some(&second.access_token)).await;
        assert_eq!((status, me["id"].as_i64()), (200, Some(alice.id)));

        // The first token is spent: presenting it again is theft, and revokes the whole family.
        let (status, body) = app.post("/auth/refresh", None, &json!({"refresh_token": alice.refresh_token})).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("token_reused")));
        let (status, _) = app.post("/auth/refresh", None, &json!({"refresh_token": second.refresh_token})).await;
        assert_eq!(status, 401, "the successor was revoked with its family");

        // Another sign-in is another family, untouched.
        let again = app.dev_login("alice").await;
        let (status, _) = app.post("/auth/refresh", None, &json!({"refresh_token": again.refresh_token})).await;
        assert_eq!(status, 200);
        let (status, body) = app.post("/auth/refresh", None, &json!({"refresh_token": "made-up"})).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")));
        app.stop().await;
    }

    async fn logout_revokes_the_refresh_token(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        let response = app
            .http
            .post(app.url("/auth/logout"))
            .json(&json!({"refresh_token": alice.refresh_token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let (status, _) = app.post("/auth/refresh", None, &json!({"refresh_token": alice.refresh_token})).await;
        assert_eq!(status, 401);
        app.stop().await;
    }

    async fn dev_login_is_404_when_turned_off(backend: Backend) {
        let app = TestApp::spawn_with(backend, |config| {
            config.auth.dev_login = Some(false);
            config.auth.google_client_ids = vec!["teachly-test.apps.googleusercontent.com".into()];
            config.auth.session_secret = Some(teachlyd::config::Secret::new("s".repeat(32)));
        })
        .await;
        let (status, body) = app.post("/auth/dev-login", None, &json!({"name": "mallory"})).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        app.stop().await;
    }

    async fn a_forged_access_token_is_refused(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let alice = app.dev_login("alice").await;
        // Same user, token whose signature is wrong.
        let mut forged = alice.access_token.clone();
        let middle = forged.len() - 20;
        let replacement = if &forged[middle..=middle] == "A" { "B" } else { "A" };
        forged.replace_range(middle..=middle, replacement);
        let (status, body) = app.get("/users/me", Some(&forged)).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")));
        app.stop().await;
    }
}

mod google {
    use std::time::Duration;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};
    use teachlyd::config::Secret;

    use crate::common::{
        Backend, TestApp,
        google::{CLIENT_ID, TestGoogle},
    };
    use crate::on_both_backends;

    async fn app_with(google: &TestGoogle, backend: Backend) -> TestApp {
        let jwks = google.jwks_url();
        TestApp::spawn_with(backend, move |config| {
            config.auth.google_client_ids = vec![CLIENT_ID.into()];
            config.auth.google_jwks_url = jwks;
            config.auth.session_secret = Some(Secret::new(
                "test-session-secret-that-is-long-enough".into(),
            ));
        })
        .await
    }

    async fn login(app: &TestApp, token: &str) -> (u16, Value) {
        app.post("/auth/login", None, &json!({ "id_token": token }))
            .await
    }

    fn forged(header: &Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    on_both_backends! {
        async fn a_google_token_signs_in_and_updates_the_user(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            let (status, body) = login(&app, &google.token("g-123", "Ada Lovelace")).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["user"]["name"], "Ada Lovelace");
            assert_eq!(body["user"]["google_id"], "g-123");
            assert_eq!(body["user"]["avatar_url"], "https://example.com/g-123.png");
            assert_eq!(body["user"]["email"], "g-123@example.com");
            assert_eq!(body["token_type"], "bearer");
            let id = body["user"]["id"].clone();

            // `token` is accepted as an alias; the second sign-in updates the name, same user.
            let token = google.token("g-123", "Ada King");
            let (status, body) = app.post("/auth/login", None, &json!({ "token": token })).await;
            assert_eq!(status, 200);
            assert_eq!((body["user"]["id"].clone(), body["user"]["name"].clone()), (id, json!("Ada King")));
            let access = body["access_token"].as_str().unwrap();
            let (status, me) = app.get("/users/me", Some(access)).await;
            assert_eq!((status, me["name"].as_str()), (200, Some("Ada King")));
            // Dev login is off once Google sign-in is configured.
            assert_eq!(app.post("/auth/dev-login", None, &json!({"name": "x"})).await.0, 404);
            assert_eq!(google.fetch_count(), 1, "the key set is cached");
            app.stop().await;
        }

        async fn every_bad_token_is_refused_with_401(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            let now = google.claims("x", "x")["iat"].as_i64().unwrap();
            let with = |key: &str, value: Value| {
                let mut claims = google.claims("g-1", "Mallory");
                claims[key] = value;
                google.sign(&claims)
            };
            let good = google.token("g-1", "Mallory");
            let (head, rest) = good.split_once('.').unwrap();
            let (payload, signature) = rest.split_once('.').unwrap();
            let middle = signature.len() / 2;
            let flipped = if &signature[middle..=middle] == "A" { "B" } else { "A" };
            let bad_signature = format!("{head}.{payload}.{}{flipped}{}", &signature[..middle], &signature[middle + 1..]);
            let mut tampered_claims = google.claims("g-1", "Mallory");
            tampered_claims["sub"] = json!("g-admin");
            let tampered = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(tampered_claims.to_string()));
            let alg_none = forged(&json!({"alg": "none", "typ": "JWT", "kid": "k1"}), &google.claims("g-1", "M"), "");
            let hs256 = {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some("k1".into());
                let key = EncodingKey::from_secret(google.public_key_pem().as_bytes());
                jsonwebtoken::encode(&header, &google.claims("g-1", "M"), &key).unwrap()
            };
            let unknown_kid = {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("not-a-google-key".into());
                google.sign_with_header(header, &google.claims("g-1", "M"))
            };
            let no_kid = google.sign_with_header(Header::new(Algorithm::RS256), &google.claims("g-1", "M"));
            let cases = vec![
                ("wrong aud", with("aud", json!("someone-else.apps.googleusercontent.com"))),
                ("wrong iss", with("iss", json!("https://evil.example"))),
                ("expired", with("exp", json!(now - 120))),
                ("issued in the future", with("iat", json!(now + 300))),
                ("nbf in the future", with("nbf", json!(now + 300))),
                ("no sub", { let mut c = google.claims("g", "M"); c.as_object_mut().unwrap().remove("sub"); google.sign(&c) }),
                ("bad signature", bad_signature),
                ("tampered payload", tampered),
                ("alg none", alg_none),
                ("HS256 with the public key", hs256),
                ("unknown kid", unknown_kid),
                ("no kid", no_kid),
                ("truncated", good[..good.len() / 2].to_owned()),
                ("two segments", format!("{head}.{payload}")),
                ("empty", String::new()),
                ("garbage", "not a token at all".into()),
                ("huge", "a".repeat(20_000)),
            ];
            for (what, token) in cases {
                let (status, body) = login(&app, &token).await;
                assert_eq!(status, 401, "{what}: {body}");
                assert_eq!(body["code"], "invalid_token", "{what}");
                let detail = body["detail"].as_str().unwrap();
                assert!(!token.is_empty() && !detail.contains(&token[..token.len().min(20)]) || token.is_empty(),
                    "{what}: the error never quotes the token");
            }
            let (_, found) = app.get("/users?q=Mallory", Some(&app.google_observer_token(&google).await)).await;
            assert_eq!(found, json!([]), "no refused token created a user");
            app.stop().await;
        }

        async fn a_rotated_key_is_picked_up_and_floods_do_not_refetch(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            assert_eq!(login(&app, &google.token("g-1", "A")).await.0, 200);
            assert_eq!(google.fetch_count(), 1);
            // Refetches are at most one per five seconds; a real rotation is days apart.
            tokio::time::sleep(Duration::from_millis(5_100)).await;
            google.rotate();
            assert_eq!(login(&app, &google.token("g-1", "A")).await.0, 200, "the new key is fetched at once");
            assert_eq!(google.fetch_count(), 2);
            for n in 0..20 {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(format!("random-{n}"));
                let token = google.sign_with_header(header, &google.claims("g-1", "A"));
                assert_eq!(login(&app, &token).await.0, 401);
            }
            assert_eq!(google.fetch_count(), 2, "unknown key ids within seconds of a fetch do not refetch");
            app.stop().await;
        }
    }

    #[tokio::test]
    async fn unreachable_keys_answer_503() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let google = TestGoogle::start().await;
        let app = TestApp::spawn_with(Backend::Sqlite, move |config| {
            config.auth.google_client_ids = vec![CLIENT_ID.into()];
            config.auth.google_jwks_url = format!("http://{closed}/jwks");
            config.auth.session_secret = Some(Secret::new("x".repeat(32)));
        })
        .await;
        let (status, body) = login(&app, &google.token("g-1", "A")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("auth_unavailable"))
        );
        app.stop().await;
    }

    impl TestApp {
        /// An access token for a fresh Google user, for routes that need a caller.
        async fn google_observer_token(&self, google: &TestGoogle) -> String {
            let (_, body) = login(self, &google.token("g-observer", "Observer")).await;
            body["access_token"].as_str().unwrap().to_owned()
        }
    }
}
