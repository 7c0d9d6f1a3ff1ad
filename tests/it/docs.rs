//! The API documentation: the OpenAPI document covers every route, and Swagger UI and ReDoc render in
//! a real headless browser from assets served by teachlyd alone (the browser has no network but
//! loopback).

use std::process::Command;

use crate::common::{Backend, TestApp, chromium};

const ROUTES: [(&str, &str); 16] = [
    ("get", "/health"),
    ("get", "/ready"),
    ("post", "/auth/login"),
    ("post", "/auth/dev-login"),
    ("post", "/auth/refresh"),
    ("post", "/auth/logout"),
    ("get", "/users/me"),
    ("get", "/users"),
    ("get", "/users/{id}"),
    ("get", "/conversations"),
    ("get", "/conversations/{peer_id}/messages"),
    ("post", "/conversations/{peer_id}/messages"),
    ("post", "/conversations/{peer_id}/seen"),
    ("get", "/ws"),
    ("get", "/ws/chat/{user_id}"),
    ("get", "/metrics"),
];

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (status, spec) = app.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let documented: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|methods| methods.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, ROUTES.len(), "no undocumented extra operation");
    for (method, path) in ROUTES {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    for schema in [
        "Message",
        "PublicUser",
        "Me",
        "ErrorBody",
        "SessionResponse",
    ] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn errors_and_constraints_are_in_the_document() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, spec) = app.get("/openapi.json", None).await;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                let readiness = path == "/ready";
                if status.as_str() >= "400" && !readiness {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status} is an ErrorBody"
                    );
                }
            }
            if operation.get("security").is_some() {
                assert!(
                    responses["401"]["headers"]["WWW-Authenticate"].is_object(),
                    "{method} {path} documents its 401 and challenge"
                );
            }
            // /health and /metrics never ask the database; /ready says what it found in its own body.
            if !["/health", "/ready", "/metrics"].contains(&path.as_str()) {
                for status in ["500", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} answers {status}"
                    );
                }
            }
        }
    }
    let parameter = |path: &str, method: &str, name: &str| {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} takes {name}"))["schema"]
            .clone()
    };
    for path in ["/users", "/conversations/{peer_id}/messages"] {
        let limit = parameter(path, "get", "limit");
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&1.into(), &100.into()),
            "{path}"
        );
    }
    let id = parameter("/users/{id}", "get", "id");
    assert_eq!(
        (&id["minimum"], &id["format"]),
        (&1.into(), &"int64".into())
    );
    let schemas = &spec["components"]["schemas"];
    let name = &schemas["DevLoginRequest"]["properties"]["name"];
    assert_eq!(
        (&name["minLength"], &name["maxLength"]),
        (&1.into(), &64.into())
    );
    let text = &schemas["SendRequest"]["properties"]["message"];
    assert!(
        text["pattern"].as_str().unwrap().contains("{0,998}"),
        "{text}"
    );
    assert!(
        text["description"].as_str().unwrap().contains("1000"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_message_length_in_the_document_is_the_configured_one() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.max_message_chars = 280;
    })
    .await;
    let (_, spec) = app.get("/openapi.json", None).await;
    let text = &spec["components"]["schemas"]["SendRequest"]["properties"]["message"];
    assert!(
        text["pattern"].as_str().unwrap().contains("{0,278}"),
        "{text}"
    );
    let alice = app.dev_login("alice").await;
    let bob = app.dev_login("bob").await;
    assert_eq!(app.send(&alice, bob.id, &"a b ".repeat(70)).await.0, 201);
    let (status, body) = app.send(&alice, bob.id, &"a b ".repeat(71)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("message_too_long"))
    );
    app.stop().await;
}

/// The page's DOM after its scripts ran.
async fn rendered(url: String) -> String {
    let browser = chromium::binary();
    tokio::task::spawn_blocking(move || {
        let profile = std::env::temp_dir().join(format!(
            "teachlyd-chromium-{}-{}",
            std::process::id(),
            url.len()
        ));
        let output = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=15000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .output()
            .expect("chromium runs");
        let _ = std::fs::remove_dir_all(profile);
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_and_redoc_render_offline() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let swagger = rendered(app.url("/docs/")).await;
    assert!(swagger.contains("swagger-ui"), "Swagger UI loaded");
    for text in [
        "/conversations/{peer_id}/messages",
        "/auth/dev-login",
        "Liveness and readiness",
    ] {
        assert!(swagger.contains(text), "Swagger UI shows {text}");
    }
    let redoc = rendered(app.url("/redoc")).await;
    for text in ["/auth/dev-login", "Liveness and readiness", "Live events"] {
        assert!(redoc.contains(text), "ReDoc shows {text}");
    }
    app.stop().await;
}
