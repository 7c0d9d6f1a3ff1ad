//! The OpenAPI document says what the server does: schemathesis generates requests from
//! `/openapi.json` and checks every answer against it, on both databases; every route in the source
//! is documented; and a method a path does not take is answered 405 with the `Allow` the document
//! implies.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use teachlyd::{config::Config, http::docs};

use crate::{common::TestApp, on_both_backends};

/// The version `.ci/run` installs: another one may check differently, so findings would not compare.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Test cases per operation and phase: enough to cover every constraint and status (each backend
/// finishes in well under a minute on 2 cores), few enough to run on every `cargo test`.
const MAX_EXAMPLES: &str = "60";

/// A fixed seed keeps CI's verdict reproducible; `SCHEMATHESIS_SEED=<n>` explores another corner.
const DEFAULT_SEED: &str = "20261201";

/// What no schema can say, told to schemathesis.
const CONFIG: &str = r#"
hooks = "HOOKS"

[generation]
# No example database in the working tree: each run starts from the seed alone.
database = "none"

[auth.openapi.bearer]
bearer = "${TEACHLYD_ACCESS_TOKEN}"

# The content rules (links, spam, text that is blank once sanitized) and "not to yourself" refuse
# texts the schema allows; the document lists them under 422.
[[operations]]
include-path = "/conversations/{peer_id}/messages"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A handshake succeeds with 101, which the checks do not count as an answer by default.
[[operations]]
include-path-regex = "^/ws"
checks.not_a_server_error.expected-statuses = ["101", "2xx", "3xx", "4xx"]
checks.positive_data_acceptance.expected-statuses = ["101", "2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
"#;

/// After a 101 the connection speaks WebSocket, and an HTTP client that keeps it for its next
/// request sends HTTP into the socket. A handshake therefore also asks the server to close.
const HOOKS: &str = r#"
import re

import schemathesis

UPGRADE = re.compile(r"(?:^|,)[ \t]*upgrade[ \t]*(?:,|$)", re.IGNORECASE)


@schemathesis.hook
def before_call(context, case, kwargs):
    connection = (case.headers or {}).get("Connection")
    if isinstance(connection, str) and UPGRADE.search(connection):
        case.headers["Connection"] = connection + ", close"
"#;

/// No run may hang CI: past this, schemathesis is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn install_hint() -> String {
    format!(
        "install it with `python3 -m venv target/schemathesis && \
         target/schemathesis/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}` (.ci/run does), \
         or point SCHEMATHESIS at the binary"
    )
}

/// `SCHEMATHESIS` if set, else the venv `.ci/run` makes under target/, else `schemathesis` on PATH.
fn schemathesis() -> PathBuf {
    let found = match std::env::var_os("SCHEMATHESIS") {
        Some(path) => Some(PathBuf::from(path)).filter(|path| path.is_file()),
        None => {
            [Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/schemathesis")]
                .into_iter()
                .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join("schemathesis"))
                        .collect::<Vec<_>>()
                }))
                .find(|path| path.is_file())
        }
    };
    let found =
        found.unwrap_or_else(|| panic!("schemathesis is needed for this test: {}", install_hint()));
    let output = std::process::Command::new(&found)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{} does not run ({error}): {}",
                found.display(),
                install_hint()
            )
        });
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version
            .trim()
            .ends_with(&format!("version {SCHEMATHESIS_VERSION}")),
        "{} is `{}`, not schemathesis {SCHEMATHESIS_VERSION}: {}",
        found.display(),
        version.trim(),
        install_hint()
    );
    found
}

on_both_backends! {
    async fn schemathesis_finds_nothing_the_document_does_not_say(backend: Backend) {
        let binary = schemathesis();
        let app = TestApp::spawn(backend).await;
        let caller = app.dev_login("schemathesis").await;
        // Someone to write to, so that some sends pass every check.
        app.dev_login("peer").await;

        let dir = std::env::temp_dir().join(format!(
            "teachlyd-schemathesis-{}-{backend:?}-{}",
            std::process::id(),
            app.addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let hooks = dir.join("hooks.py");
        std::fs::write(&hooks, HOOKS).unwrap();
        let config = dir.join("schemathesis.toml");
        std::fs::write(&config, CONFIG.replace("HOOKS", &hooks.display().to_string())).unwrap();
        let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());

        let started = Instant::now();
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg("--config-file")
            .arg(&config)
            .args(["run", &app.url("/openapi.json")])
            .args(["--checks", "all", "--continue-on-failure", "--workers", "1"])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
            .args(["--no-color", "--request-timeout", "10"])
            // The token travels in the environment, never on a command line `ps` shows.
            .env("TEACHLYD_ACCESS_TOKEN", &caller.access_token)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(RUN_LIMIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("schemathesis ran past {RUN_LIMIT:?} on {backend:?}"))
            .expect("schemathesis starts");
        let elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);

        // schemathesis masks the token and the refresh tokens in what it prints.
        let report = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "schemathesis (seed {seed}) found answers the document does not describe on \
             {backend:?}:\n{report}"
        );
        assert!(report.contains("Tested: 16"), "every operation was tested:\n{report}");
        assert!(!report.contains("Failures:"), "no failure:\n{report}");
        eprintln!("schemathesis on {backend:?}: seed {seed}, {elapsed:.1?}");
        app.stop().await;
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// A concrete path for an OpenAPI template.
fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            s if s.starts_with('{') && s.ends_with("*}") => "index.html",
            s if s.starts_with('{') => "1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_answered_405_with_the_methods_the_path_takes() {
    let app = TestApp::spawn(crate::common::Backend::Sqlite).await;
    let (_, spec) = app.get("/openapi.json", None).await;
    let mut routes: Vec<(String, BTreeSet<String>)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .map(|method| method.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect();
    routes.extend(
        docs::PAGES
            .iter()
            .map(|page| (page.to_string(), BTreeSet::from(["GET".to_owned()]))),
    );
    for (template, documented) in routes {
        let path = example_path(&template);
        for method in METHODS {
            let response = app
                .http
                .request(method.parse().unwrap(), app.url(&path))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if documented.contains(method) {
                assert_ne!(
                    status, 405,
                    "{method} {path} is documented, so it is served"
                );
                continue;
            }
            assert_eq!(
                status, 405,
                "{method} {path} is not documented, so it is refused"
            );
            let allow: BTreeSet<String> = response
                .headers()
                .get("allow")
                .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
                .to_str()
                .unwrap()
                .split(',')
                .map(|method| method.trim().to_owned())
                .collect();
            assert_eq!(allow, documented, "Allow of {method} {path}");
            if method != "HEAD" {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "method_not_allowed", "{method} {path}");
            }
        }
    }
    app.stop().await;
}

/// The paths a source file routes, read off its `warp::path!(…)` and `warp::path("…")` calls, as
/// templates whose parameters are `{}` and whose open tail is `{*}`.
fn routed_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (call, open_tail) in [("warp::path!(", false), ("warp::path(", true)] {
        let mut rest = source;
        while let Some(start) = rest.find(call) {
            rest = &rest[start + call.len()..];
            let end = rest.find(')').expect("a closed path call");
            let segments: Vec<&str> = rest[..end]
                .split('/')
                .map(|segment| {
                    let segment = segment.trim();
                    // A literal stays; a type (`String`) is a parameter.
                    segment
                        .strip_prefix('"')
                        .and_then(|s| s.strip_suffix('"'))
                        .unwrap_or("{}")
                })
                .collect();
            let tail = if open_tail { "/{*}" } else { "" };
            paths.push(format!("/{}{tail}", segments.join("/")));
        }
    }
    paths
}

fn normalized(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            s if s.starts_with('{') && s.ends_with("*}") => "{*}",
            s if s.starts_with('{') => "{}",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_routed_path_is_documented_and_every_documented_path_is_routed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut routed = BTreeSet::new();
    for dir in ["src/http", "src/ws"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "rs") {
                routed.extend(routed_paths(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let document = docs::document(&Config::default());
    let documented: BTreeSet<String> = document
        .paths
        .paths
        .keys()
        .map(String::as_str)
        .chain(docs::PAGES)
        .map(normalized)
        .collect();
    assert_eq!(
        routed, documented,
        "a route without documentation has no `Allow` on its 405s: document it with \
         #[utoipa::path] (or list a documentation page in docs::PAGES)"
    );
}
