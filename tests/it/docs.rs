//! The API documentation: the OpenAPI document covers every route, and Swagger UI and ReDoc render in
//! a real headless browser from assets served by teachlyd alone (the browser has no network but
//! loopback).

use std::process::Command;

use crate::common::{Backend, TestApp};

const ROUTES: [(&str, &str); 15] = [
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

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "headless Chromium is needed for this test: apt-get install chromium (.ci/run does), \
         or point CHROMIUM at a binary"
    );
    path
}

/// The page's DOM after its scripts ran.
async fn rendered(url: String) -> String {
    let browser = chromium();
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
