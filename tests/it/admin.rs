//! `teachlyd admin` against a running `teachlyd serve`, both as processes: the fields of each
//! command, the close code of a kick, who the socket answers, and what happens to a socket file
//! left behind.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    process::Command,
};

use crate::common::{
    Backend, TestDb, WsClient,
    daemon::{Daemon, tempdir},
};
use crate::on_both_backends;

/// Runs `teachlyd ARGS` and answers what it printed and how it ended.
async fn teachlyd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teachlyd"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("teachlyd runs")
}

async fn admin(socket: &Path, args: &[&str]) -> Output {
    let socket = socket.to_str().unwrap();
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--socket", socket]);
    teachlyd(&all).await
}

pub(crate) async fn admin_json(socket: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = admin(socket, &all).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

on_both_backends! {
    async fn admin_connections_lists_each_socket_with_its_user_and_origin(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "", "info").await;
        let socket = daemon.admin_socket();
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let before = OffsetDateTime::now_utc() - Duration::from_secs(1);
        let own_path = format!("/ws/chat/{}", alice.id);
        let base = daemon.base.replace("http://", "ws://");
        let mut alice_one = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token)).await.unwrap();
        let mut alice_two = WsClient::connect(&format!("{base}{own_path}?access_token={}", alice.access_token), None)
            .await
            .unwrap();
        let mut bob_one = WsClient::connect(&daemon.ws_url(""), Some(&bob.access_token)).await.unwrap();
        for socket in [&mut alice_one, &mut alice_two, &mut bob_one] {
            socket.ping_pong().await;
        }

        let rows = admin_json(&socket, &["connections"]).await;
        let rows = rows.as_array().expect("a list");
        assert_eq!(rows.len(), 3, "{rows:?}");
        let mut paths = Vec::new();
        for row in rows {
            let (user, name) = (row["user_id"].as_i64().unwrap(), row["user_name"].as_str().unwrap());
            assert!((user, name) == (alice.id, "alice") || (user, name) == (bob.id, "bob"), "{row}");
            let remote = row["remote_addr"].as_str().unwrap();
            assert!(remote.starts_with("127.0.0.1:"), "{row}");
            let connected = OffsetDateTime::parse(row["connected_at"].as_str().unwrap(), &Rfc3339).unwrap();
            assert!(connected >= before && connected <= OffsetDateTime::now_utc(), "{row}");
            assert_eq!(row["queue_depth"], 0, "{row}");
            assert!(row["connection_id"].as_u64().is_some(), "{row}");
            // The path without its query, which held a token.
            paths.push(row["path"].as_str().unwrap().to_owned());
        }
        paths.sort();
        let mut expected = vec!["/ws".to_owned(), "/ws".to_owned(), own_path];
        expected.sort();
        assert_eq!(paths, expected);
        assert_eq!(rows.iter().filter(|row| row["user_id"] == alice.id).count(), 2);

        let table = admin(&socket, &["connections"]).await;
        assert!(table.status.success(), "{}", stderr(&table));
        let table = String::from_utf8(table.stdout).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "a header and three sockets: {table}");
        assert!(lines[0].starts_with("ID") && lines[0].contains("REMOTE") && lines[0].contains("QUEUE"), "{table}");
        assert_eq!(lines.iter().filter(|line| line.contains(" alice ")).count(), 2, "{table}");
        assert!(!table.contains(&alice.access_token), "{table}");

        alice_one
            .send_json(&json!({"event": "message", "to": bob.id, "message": "counted", "client_id": "c-1"}))
            .await;
        alice_one.until("message_sent").await;
        alice_one
            .send_json(&json!({"event": "message", "to": bob.id, "message": "counted", "client_id": "c-1"}))
            .await;
        alice_one.until("message_sent").await;
        let stats = admin_json(&socket, &["stats"]).await;
        assert_eq!(stats["connections"], 3, "{stats}");
        assert_eq!(stats["online_users"], 2, "{stats}");
        assert_eq!(stats["messages_since_start"], 1, "a retry is not a new message: {stats}");
        assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(stats["database"], match backend { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" });
        assert!(stats["uptime_seconds"].as_u64().is_some(), "{stats}");
        let human = admin(&socket, &["stats"]).await;
        let human = String::from_utf8(human.stdout).unwrap();
        assert!(human.contains("online users") && human.contains("uptime"), "{human}");

        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
        assert!(!socket.exists(), "the socket file goes with the daemon");
    }

    async fn admin_kick_closes_with_4001_and_revoke_ends_the_session(backend: Backend) {
        let db = TestDb::create(backend).await;
        let daemon = Daemon::start(&db.url, "", "info").await;
        let socket = daemon.admin_socket();
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let mut alice_one = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token)).await.unwrap();
        let mut alice_two = WsClient::connect(&daemon.ws_url(""), Some(&alice.access_token)).await.unwrap();
        let mut bob_ws = WsClient::connect(&daemon.ws_url(""), Some(&bob.access_token)).await.unwrap();
        bob_ws.ping_pong().await;

        let alice_id = alice.id.to_string();
        let kicked = admin_json(&socket, &["kick", &alice_id, "--revoke"]).await;
        assert_eq!(kicked, json!({"user_id": alice.id, "sockets_closed": 2, "refresh_tokens_revoked": 1}));
        assert_eq!(alice_one.expect_close().await, Some(4001));
        assert_eq!(alice_two.expect_close().await, Some(4001));
        bob_ws.ping_pong().await;
        let (status, body) = daemon.post("/auth/refresh", None, &json!({"refresh_token": alice.refresh_token})).await;
        assert_eq!(status, 401, "{body}");
        let (status, body) = daemon.post("/auth/refresh", None, &json!({"refresh_token": bob.refresh_token})).await;
        assert_eq!(status, 200, "bob's session is his own: {body}");

        // Without --revoke the user may come straight back.
        let bob_id = bob.id.to_string();
        let line = admin(&socket, &["kick", &bob_id]).await;
        assert!(line.status.success(), "{}", stderr(&line));
        assert_eq!(String::from_utf8(line.stdout).unwrap(), format!("closed 1 socket of user {}\n", bob.id));
        assert_eq!(bob_ws.expect_close().await, Some(4001));

        let unknown = admin(&socket, &["kick", "999999"]).await;
        assert_eq!(unknown.status.code(), Some(1));
        assert!(stderr(&unknown).contains("there is no user 999999"), "{}", stderr(&unknown));
        for bad in ["0", "-3", "alice", "99999999999999999999"] {
            let refused = admin(&socket, &["kick", bad]).await;
            assert_eq!(refused.status.code(), Some(2), "kick {bad}: {}", stderr(&refused));
        }
        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
    }
}

/// `teachlyd` copied where any user may run it: the build directory may be closed to them.
fn binary_for_everyone(dir: &tempdir::Dir) -> PathBuf {
    let copy = dir.0.join("teachlyd");
    std::fs::copy(env!("CARGO_BIN_EXE_teachlyd"), &copy).unwrap();
    copy
}

/// `teachlyd admin stats` as uid/gid 65534 (nobody/nogroup), through `setpriv`.
async fn stats_as_nobody(binary: &Path, socket: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary)
        .args(["admin", "stats", "--socket"])
        .arg(socket)
        .env_clear()
        .output()
        .await
        .expect("setpriv runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_answers_only_root_its_user_and_its_group() {
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempdir::Dir::new("admin-peers");
    let binary = binary_for_everyone(&dir);

    let daemon = Daemon::start(&db.url, "", "info").await;
    let socket = daemon.admin_socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    // The test runs as root (CI does): the socket's own user may, a stranger's connect is refused
    // by the file's mode…
    assert!(admin(&socket, &["stats"]).await.status.success());
    let refused = stats_as_nobody(&binary, &socket).await;
    assert_eq!(refused.status.code(), Some(77), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("permission denied on the admin socket"),
        "{}",
        stderr(&refused)
    );
    // …and, were the mode opened, by the daemon, which checks the peer's credentials.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = stats_as_nobody(&binary, &socket).await;
    assert_eq!(refused.status.code(), Some(77), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("uid 65534 may not use the admin socket"),
        "{}",
        stderr(&refused)
    );
    assert!(
        daemon
            .logged("refused an admin connection", 1)
            .await
            .contains("uid=65534")
    );
    let (status, _, log) = daemon.terminate().await;
    assert!(status.success(), "{log}");

    // A member of admin.group may.
    let daemon = Daemon::start(
        &db.url,
        "[admin]\nsocket = \"SOCKET\"\ngroup = \"nogroup\"\n"
            .replace("SOCKET", dir.0.join("group.sock").to_str().unwrap())
            .as_str(),
        "info",
    )
    .await;
    let socket = dir.0.join("group.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.gid(), 65534, "the socket belongs to admin.group");
    let allowed = stats_as_nobody(&binary, &socket).await;
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(
        String::from_utf8(allowed.stdout)
            .unwrap()
            .contains("connections")
    );
    let (status, _, log) = daemon.terminate().await;
    assert!(status.success(), "{log}");
}

/// `serve` with `config` that is expected not to start: its exit code and stderr.
async fn serve_refused(db: &TestDb, dir: &tempdir::Dir, config: &str) -> (Option<i32>, String) {
    let path = dir.0.join("refused.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_teachlyd"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output(),
    )
    .await
    .expect("serve gives up at once")
    .unwrap();
    (output.status.code(), stderr(&output))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_and_a_live_one_or_another_file_refused() {
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempdir::Dir::new("admin-stale");
    let path = dir.0.join("admin.sock");
    let config = format!("[admin]\nsocket = \"{}\"\n", path.display());

    // What a daemon that crashed leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let daemon = Daemon::start(&db.url, &config, "info").await;
    assert!(admin(&path, &["stats"]).await.status.success());
    daemon.logged("replacing a stale admin socket", 1).await;

    let (code, message) = serve_refused(&db, &dir, &config).await;
    assert_eq!(code, Some(69), "{message}");
    assert!(
        message.contains("another teachlyd answers on the admin socket"),
        "{message}"
    );
    assert!(
        admin(&path, &["stats"]).await.status.success(),
        "the first daemon keeps its socket"
    );
    let (status, _, log) = daemon.terminate().await;
    assert!(status.success(), "{log}");

    std::fs::write(&path, "not a socket").unwrap();
    let (code, message) = serve_refused(&db, &dir, &config).await;
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.contains("is not a socket; teachlyd never removes it"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");

    let (code, message) = serve_refused(
        &db,
        &dir,
        "[admin]\ngroup = \"no-such-group-here\"\nsocket = \"/tmp/x.sock\"\n",
    )
    .await;
    assert_eq!(code, Some(78), "{message}");
    assert!(message.contains("admin.group"), "{message}");

    let missing = admin(&dir.0.join("nobody-home.sock"), &["connections"]).await;
    assert_eq!(missing.status.code(), Some(69), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("teachlyd is not running"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_answers_hostile_lines_and_stays_usable() {
    let db = TestDb::create(Backend::Sqlite).await;
    let daemon = Daemon::start(&db.url, "", "info").await;
    let stream = UnixStream::connect(daemon.admin_socket()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut ask = async |line: &[u8]| -> Value {
        writer.write_all(line).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut reply))
            .await
            .expect("a reply")
            .unwrap();
        serde_json::from_str(&reply).unwrap_or(Value::Null)
    };
    for hostile in [
        &b"garbage\n"[..],
        b"{\"command\": \"drop_tables\"}\n",
        b"{\"command\": \"kick\", \"user_id\": 1, \"ban\": true}\n",
        b"{\"command\": \"kick\", \"user_id\": \"1\"}\n",
        b"{\"command\": \"kick\", \"user_id\": -5}\n",
        b"\xff\xfe\n",
    ] {
        let reply = ask(hostile).await;
        assert!(
            reply["error"].is_string(),
            "{} -> {reply}",
            String::from_utf8_lossy(hostile)
        );
    }
    let reply = ask(b"{\"command\": \"stats\"}\n").await;
    assert_eq!(reply["stats"]["connections"], 0, "{reply}");
    let mut long = vec![b'x'; 10_000];
    long.push(b'\n');
    let reply = ask(&long).await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("one line of at most"),
        "{reply}"
    );
    let (status, _, log) = daemon.terminate().await;
    assert!(status.success(), "{log}");
}
