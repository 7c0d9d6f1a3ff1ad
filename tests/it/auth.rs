//! Sessions: refresh rotation, reuse detection and its grace, logout, dev login switches, and the
//! migration that takes email addresses out of public names.

use std::time::Duration;

use serde_json::json;
use teachlyd::{config::HumanDuration, store::Store};

use crate::common::{TestApp, TestDb, TestUser, session_user};
use crate::on_both_backends;

async fn refresh(app: &TestApp, refresh_token: &str) -> (u16, serde_json::Value) {
    app.post(
        "/auth/refresh",
        None,
        &json!({ "refresh_token": refresh_token }),
    )
    .await
}

async fn logout(app: &TestApp, refresh_token: &str) -> u16 {
    app.http
        .post(app.url("/auth/logout"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Both halves of a pair work: the access token on `/users/me`, the refresh token for another pair.
async fn assert_working_pair(app: &TestApp, pair: &TestUser, what: &str) {
    let (status, me) = app.get("/users/me", Some(&pair.access_token)).await;
    assert_eq!(
        (status, me["id"].as_i64()),
        (200, Some(pair.id)),
        "{what}: access token"
    );
    let (status, body) = refresh(app, &pair.refresh_token).await;
    assert_eq!(status, 200, "{what}: refresh token: {body}");
}

fn with_grace(grace: &str) -> impl FnOnce(&mut teachlyd::config::Config) {
    let grace: HumanDuration = grace.parse().unwrap();
    move |config| config.auth.refresh_reuse_grace = grace
}

on_both_backends! {
    async fn refresh_rotates_and_a_reused_token_revokes_the_family(backend: Backend) {
        let app = TestApp::spawn_with(backend, with_grace("0s")).await;
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

    async fn two_tabs_refreshing_at_once_both_stay_signed_in(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        for trial in 0..10 {
            let alice = app.dev_login("alice").await;
            let (first, second) = tokio::join!(
                refresh(&app, &alice.refresh_token),
                refresh(&app, &alice.refresh_token),
            );
            assert_eq!(first.0, 200, "trial {trial}, first tab: {}", first.1);
            assert_eq!(second.0, 200, "trial {trial}, second tab: {}", second.1);
            let (first, second) = (session_user(&first.1), session_user(&second.1));
            assert_ne!(first.refresh_token, second.refresh_token, "only hashes are stored: a sibling");
            assert_working_pair(&app, &first, &format!("trial {trial}, first tab")).await;
            assert_working_pair(&app, &second, &format!("trial {trial}, second tab")).await;
        }
        app.stop().await;
    }

    async fn a_spent_token_answers_within_the_grace_and_is_theft_after_it(backend: Backend) {
        let app = TestApp::spawn_with(backend, with_grace("1s")).await;
        let alice = app.dev_login("alice").await;
        let (status, body) = refresh(&app, &alice.refresh_token).await;
        assert_eq!(status, 200, "{body}");
        let successor = session_user(&body);

        let (status, body) = refresh(&app, &alice.refresh_token).await;
        assert_eq!(status, 200, "within the grace the spent token answers a pair: {body}");
        let sibling = session_user(&body);
        assert_eq!(sibling.id, alice.id);
        let (status, me) = app.get("/users/me", Some(&sibling.access_token)).await;
        assert_eq!((status, me["id"].as_i64()), (200, Some(alice.id)));

        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let (status, body) = refresh(&app, &alice.refresh_token).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("token_reused")), "{body}");
        for (what, live) in [("the successor", &successor), ("the sibling", &sibling)] {
            let (status, body) = refresh(&app, &live.refresh_token).await;
            assert_eq!(status, 401, "{what} was revoked with its family: {body}");
        }
        // Another sign-in is another family, untouched.
        let again = app.dev_login("alice").await;
        assert_eq!(refresh(&app, &again.refresh_token).await.0, 200);
        app.stop().await;
    }

    async fn logout_ends_the_whole_session_even_within_the_grace(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        // Logging out with the live token: its spent predecessor mints nothing afterwards.
        let alice = app.dev_login("alice").await;
        let (status, body) = refresh(&app, &alice.refresh_token).await;
        assert_eq!(status, 200, "{body}");
        let live = session_user(&body);
        assert_eq!(logout(&app, &live.refresh_token).await, 204);
        let (status, body) = refresh(&app, &alice.refresh_token).await;
        assert_eq!(status, 401, "the spent predecessor after logout: {body}");
        assert_eq!(refresh(&app, &live.refresh_token).await.0, 401);

        // Logging out with a spent token (an older tab) ends the session its successor belongs to.
        let bob = app.dev_login("bob").await;
        let (status, body) = refresh(&app, &bob.refresh_token).await;
        assert_eq!(status, 200, "{body}");
        let live = session_user(&body);
        assert_eq!(logout(&app, &bob.refresh_token).await, 204);
        let (status, body) = refresh(&app, &live.refresh_token).await;
        assert_eq!(status, 401, "the successor after logout with its predecessor: {body}");

        // Bob's other sign-in is another session.
        let other = app.dev_login("bob").await;
        assert_eq!(refresh(&app, &other.refresh_token).await.0, 200);
        app.stop().await;
    }

    async fn dev_login_refuses_a_name_that_is_an_email_address(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        for name in ["ada@example.com", " Ada.Lovelace@Example.COM ", "bob@localhost"] {
            let (status, body) = app.post("/auth/dev-login", None, &json!({ "name": name })).await;
            assert_eq!((status, body["code"].as_str()), (422, Some("invalid_field")), "{name}: {body}");
        }
        let (status, body) = app.post("/auth/dev-login", None, &json!({ "name": "Ada @ home" })).await;
        assert_eq!(status, 200, "not an address: {body}");
        app.stop().await;
    }

    async fn migration_2_takes_email_addresses_out_of_names(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = Store::connect(&db.url, 2, std::time::Duration::from_secs(5)).await.unwrap();
        // Rows as the sign-in before migration 2 wrote them.
        let rows = [
            ("g-1", "ada@example.com", Some("ada@example.com"), true),
            ("g-2", "ADA.KING", Some("ada.king@example.com"), true),
            ("g-3", "Ada Lovelace", Some("ada@example.com"), false),
            ("g-4", "grace", Some("grace.hopper@example.com"), false),
            ("dev:bob@example.com", "bob@example.com", None, true),
            ("dev:alice", "alice", None, false),
            ("dev:Ada @ home", "Ada @ home", None, false),
        ];
        let mut ids = Vec::new();
        macro_rules! before_migration_2 {
            ($pool:expr, $migrator:expr) => {{
                $migrator.run_to(1, $pool).await.expect("migration 1 applies");
                for (google_id, name, email, _) in rows {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO users (google_id, name, email) VALUES ($1, $2, $3) RETURNING id",
                    )
                    .bind(google_id)
                    .bind(name)
                    .bind(email)
                    .fetch_one($pool)
                    .await
                    .unwrap();
                    ids.push(id);
                }
            }};
        }
        match &store {
            Store::Postgres(pool) => before_migration_2!(pool, sqlx::migrate!("./migrations/postgres")),
            Store::Sqlite { writer, .. } => before_migration_2!(writer, sqlx::migrate!("./migrations/sqlite")),
        }
        store.migrate().await.expect("the remaining migrations apply");
        for ((_, name, _, renamed), id) in rows.into_iter().zip(ids) {
            let stored = store.user(id).await.unwrap().expect("the user stays").name;
            let expected = if renamed { format!("User {id}") } else { name.to_owned() };
            assert_eq!(stored, expected, "{name}");
        }
        assert!(
            store.migration_status().await.unwrap().iter().all(|m| m.applied),
            "every migration is applied"
        );
        store.close().await;
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

        async fn a_public_name_never_holds_the_email(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            let sign_in = |sub: &str, edit: &dyn Fn(&mut Value)| {
                let mut claims = google.claims(sub, "unused");
                claims.as_object_mut().unwrap().remove("name");
                claims["email"] = json!(format!("{sub}.lovelace@teachly-mail.example"));
                edit(&mut claims);
                let token = google.sign(&claims);
                let app = &app;
                async move {
                    let (status, body) = login(app, &token).await;
                    assert_eq!(status, 200, "{body}");
                    (body["user"]["id"].as_i64().unwrap(), body["user"]["name"].as_str().unwrap().to_owned())
                }
            };
            let (_, name) = sign_in("g-given", &|c| {
                c["given_name"] = json!("Ada");
                c["family_name"] = json!("Lovelace");
            }).await;
            assert_eq!(name, "Ada Lovelace");
            let (_, name) = sign_in("g-family", &|c| c["family_name"] = json!("Hopper")).await;
            assert_eq!(name, "Hopper");
            let (id, name) = sign_in("g-none", &|_| {}).await;
            assert_eq!(name, format!("User {id}"));
            let (id, name) = sign_in("g-blank", &|c| c["name"] = json!("  ")).await;
            assert_eq!(name, format!("User {id}"));
            let (id, name) = sign_in("g-email", &|c| c["name"] = c["email"].clone()).await;
            assert_eq!(name, format!("User {id}"), "a name that is the email is not used");
            let (id, name) = sign_in("g-other-email", &|c| c["name"] = json!("someone@elsewhere.example")).await;
            assert_eq!(name, format!("User {id}"), "a name that is any email address is not used");
            let (_, name) = sign_in("g-local", &|c| {
                c["name"] = json!("G-LOCAL.Lovelace");
                c["given_name"] = json!("Grace");
            }).await;
            assert_eq!(name, "Grace", "a name that is the email's local part is not used");
            let (id, name) = sign_in("g-local2", &|c| c["given_name"] = json!("g-local2.lovelace")).await;
            assert_eq!(name, format!("User {id}"));

            let observer = app.google_observer_token(&google).await;
            for q in ["teachly-mail", "lovelace@", "g-none", "g-email", "someone", "g-local"] {
                let (status, found) = app.get(&format!("/users?q={q}"), Some(&observer)).await;
                assert_eq!((status, found), (200, json!([])), "searching {q:?}");
            }

            // A later sign-in without a usable name keeps the one stored.
            let (id, name) = sign_in("g-keeps", &|c| c["name"] = json!("Ada King")).await;
            assert_eq!(name, "Ada King");
            let (again, name) = sign_in("g-keeps", &|_| {}).await;
            assert_eq!((again, name.as_str()), (id, "Ada King"));
            let (_, name) = sign_in("g-keeps", &|c| c["name"] = c["email"].clone()).await;
            assert_eq!(name, "Ada King");
            // A user named by their id takes the name a later token brings, and keeps it.
            let (_, name) = sign_in("g-none", &|c| c["name"] = json!("Charles Babbage")).await;
            assert_eq!(name, "Charles Babbage");
            let (_, name) = sign_in("g-none", &|_| {}).await;
            assert_eq!(name, "Charles Babbage");
            app.stop().await;
        }

        async fn only_a_verified_email_is_stored(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            let email_of = |sub: &str, verified: Option<Value>| {
                let mut claims = google.claims(sub, "Ada");
                match verified {
                    Some(verified) => claims["email_verified"] = verified,
                    None => {
                        claims.as_object_mut().unwrap().remove("email_verified");
                    }
                }
                let token = google.sign(&claims);
                let app = &app;
                async move {
                    let (status, body) = login(app, &token).await;
                    assert_eq!(status, 200, "{body}");
                    let access = body["access_token"].as_str().unwrap();
                    let (status, me) = app.get("/users/me", Some(access)).await;
                    assert_eq!(status, 200, "{me}");
                    me["email"].clone()
                }
            };
            assert_eq!(email_of("g-1", Some(json!(false))).await, Value::Null);
            assert_eq!(email_of("g-2", Some(json!("false"))).await, Value::Null);
            assert_eq!(email_of("g-3", None).await, Value::Null, "unverified unless Google says so");
            assert_eq!(email_of("g-4", Some(json!(true))).await, json!("g-4@example.com"));
            assert_eq!(email_of("g-5", Some(json!("true"))).await, json!("g-5@example.com"));
            // A verified address that later comes unverified is no longer kept.
            assert_eq!(email_of("g-4", Some(json!(false))).await, Value::Null);
            app.stop().await;
        }

        async fn iat_is_required_and_several_audiences_need_azp(backend: Backend) {
            let google = TestGoogle::start().await;
            let app = app_with(&google, backend).await;
            let token = |edit: &dyn Fn(&mut Value)| {
                let mut claims = google.claims("g-1", "Ada");
                edit(&mut claims);
                google.sign(&claims)
            };
            let other = "someone-else.apps.googleusercontent.com";
            let refused = [
                ("no iat", token(&|c| { c.as_object_mut().unwrap().remove("iat"); })),
                ("several audiences, no azp", token(&|c| c["aud"] = json!([CLIENT_ID, other]))),
                ("several audiences, azp someone else", token(&|c| {
                    c["aud"] = json!([CLIENT_ID, other]);
                    c["azp"] = json!(other);
                })),
                ("azp ours, aud not ours", token(&|c| {
                    c["aud"] = json!([other, "third.apps.googleusercontent.com"]);
                    c["azp"] = json!(CLIENT_ID);
                })),
            ];
            for (what, token) in refused {
                let (status, body) = login(&app, &token).await;
                assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")), "{what}: {body}");
            }
            let accepted = [
                ("several audiences, azp ours", token(&|c| {
                    c["aud"] = json!([other, CLIENT_ID]);
                    c["azp"] = json!(CLIENT_ID);
                })),
                ("one audience in an array", token(&|c| c["aud"] = json!([CLIENT_ID]))),
                ("one audience, azp someone else", token(&|c| c["azp"] = json!(other))),
            ];
            for (what, token) in accepted {
                let (status, body) = login(&app, &token).await;
                assert_eq!(status, 200, "{what}: {body}");
            }
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
