//! The real binary: exit codes, `config check`, `migrate`.

use crate::common::{
    Backend, TestDb,
    binary::{teachlyd, text},
};

#[test]
fn config_check_masks_secrets_and_shows_the_rest() {
    let secret = "a-very-long-session-secret-of-40-bytes!!";
    let output = teachlyd(
        &["config", "check"],
        &[
            (
                "DATABASE_URL",
                "postgres://teachly:hunter2@db.internal/chat",
            ),
            ("GOOGLE_CLIENT_ID", "web.apps.googleusercontent.com"),
            ("TEACHLYD_SESSION_SECRET", secret),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("postgres://teachly:***@db.internal/chat"),
        "{stdout}"
    );
    assert!(stdout.contains("session_secret = \"***\""), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stdout.contains(secret),
        "{stdout}"
    );
    assert!(
        stdout.contains("web.apps.googleusercontent.com"),
        "{stdout}"
    );
    assert!(stdout.contains("max_message_chars = 1000"), "{stdout}");
    assert!(stdout.contains("# sign-in: google"), "{stdout}");
}

#[test]
fn bad_configuration_exits_78_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("teachlyd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[limits]\nmax_frame_bytes = 12\n", "limits.max_frame_bytes"),
        (
            "[limits]\nmax_frame_byte = 16384\n",
            "limits.max_frame_byte",
        ),
        (
            "[server]\nlisten = \"0.0.0.0:8000\"\n",
            "auth.google_client_ids",
        ),
        (
            "[auth]\ngoogle_client_ids = [\"x\"]\n",
            "auth.session_secret",
        ),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        // A zero interval used to pass and make every socket task panic.
        ("[limits]\nping_interval = \"0s\"\n", "limits.ping_interval"),
        (
            "[database]\nwrite_timeout = \"0s\"\n",
            "database.write_timeout",
        ),
        (
            "[auth]\nrefresh_token_ttl = \"99999999d\"\n",
            "auth.refresh_token_ttl",
        ),
        ("not toml at all [", "not valid TOML"),
    ];
    for (n, (file, named)) in cases.iter().enumerate() {
        let path = dir.join(format!("case{n}.toml"));
        std::fs::write(&path, file).unwrap();
        let path = path.to_str().unwrap();
        for args in [
            vec!["config", "check", "--config", path],
            vec!["serve", "--config", path],
        ] {
            let output = teachlyd(&args, &[]);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(78), "{args:?}: {stderr}");
            assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
        }
    }
    let output = teachlyd(&["config", "check"], &[("TEACHLYD_LISTEN", "nowhere")]);
    assert_eq!(output.status.code(), Some(78));
    assert!(text(&output.stderr).contains("server.listen"));
    let output = teachlyd(
        &["config", "check", "--config", "/nonexistent/teachlyd.toml"],
        &[],
    );
    assert_eq!(output.status.code(), Some(78));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["serve", "--listen", "not-an-address"],
        vec!["frobnicate"],
        vec!["migrate", "--bogus"],
    ] {
        let output = teachlyd(&args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn an_unreachable_database_exits_69() {
    let output = teachlyd(
        &["migrate", "--status"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")],
    );
    assert_eq!(output.status.code(), Some(69), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).is_empty());
}

#[tokio::test]
async fn migrate_applies_and_reports_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::create(backend).await;
        let url = db.url.clone();
        let run = move |args: &'static [&'static str]| {
            let url = url.clone();
            std::thread::spawn(move || teachlyd(args, &[("DATABASE_URL", &url)]))
                .join()
                .unwrap()
        };
        let status = run(&["migrate", "--status"]);
        assert!(status.status.success(), "{}", text(&status.stderr));
        assert!(
            text(&status.stdout).contains("pending"),
            "{backend:?}: {}",
            text(&status.stdout)
        );
        let pending = text(&status.stdout).matches("pending").count();
        let applied = run(&["migrate"]);
        assert!(applied.status.success(), "{}", text(&applied.stderr));
        assert!(
            text(&applied.stdout).contains(&format!("applied {pending} migration")),
            "{}",
            text(&applied.stdout)
        );
        let status = run(&["migrate", "--status"]);
        let listing = text(&status.stdout);
        assert!(
            listing.contains("applied") && !listing.contains("pending"),
            "{listing}"
        );
        let again = run(&["migrate"]);
        assert!(
            text(&again.stdout).contains("applied 0 migration"),
            "{}",
            text(&again.stdout)
        );
    }
}

#[tokio::test]
async fn serve_refuses_pending_migrations_when_auto_migrate_is_off() {
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("teachlyd-cli-pending-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[database]\nauto_migrate = false\n[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let output = teachlyd(
        &["serve", "--config", config.to_str().unwrap()],
        &[("DATABASE_URL", &db.url)],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pending migration") && stderr.contains("teachlyd migrate"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
