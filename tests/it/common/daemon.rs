//! `teachlyd serve` as a process of its own, for the tests whose subject is the binary.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{TestUser, session_user};

/// A running `teachlyd serve` whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    pub http: reqwest::Client,
    pub dir: tempdir::Dir,
}

pub mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "teachlyd-daemon-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Daemon {
    /// The admin socket `start` gave it (when the test's config named none).
    pub fn admin_socket(&self) -> std::path::PathBuf {
        self.dir.0.join("admin.sock")
    }

    /// Starts the binary on a port of its choosing, with `config` as its file; answers once it serves.
    pub async fn start(database_url: &str, config: &str, log_level: &str) -> Self {
        Self::start_with_env(database_url, config, log_level, &[]).await
    }

    /// `start`, with more environment variables for the process (and no `LOG_LEVEL` when
    /// `log_level` is empty).
    pub async fn start_with_env(
        database_url: &str,
        config: &str,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempdir::Dir::new("serve");
        let path = dir.0.join("config.toml");
        std::fs::write(&path, config_file(&dir, config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_teachlyd"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .envs((!log_level.is_empty()).then_some(("LOG_LEVEL", log_level)))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("teachlyd starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_sender, addr) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = without_colours(&line);
                if line.contains("teachlyd is serving")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ =
                        addr_sender.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || addr.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("teachlyd did not start: {}", log.lock().unwrap()));
        Self {
            child,
            base: format!("http://{addr}"),
            log,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the daemon answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn dev_login(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post("/auth/dev-login", None, &json!({ "name": name }))
            .await;
        assert_eq!(status, 200, "{body}");
        session_user(&body)
    }

    /// Replaces the config file (after the `[server]` section `start` wrote) and sends SIGHUP.
    pub fn reload_with(&self, config: &str) {
        let path = self.dir.0.join("config.toml");
        std::fs::write(&path, config_file(&self.dir, config)).unwrap();
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (at most 10 s) until the log holds `wanted` `times` times; answers the log.
    pub async fn logged(&self, wanted: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.matches(wanted).count() >= times {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{wanted:?} not logged {times} times: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/ws{query}", self.base.replace("http://", "ws://"))
    }

    /// Sends SIGTERM and waits for the process to end; answers how it ended and how long it took.
    pub async fn terminate(mut self) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (status, self.log, self.dir)
        })
        .await
        .unwrap();
        let (status, log, _dir) = status;
        // The reader thread may still be copying the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = log.lock().unwrap().clone();
        (status.expect("the daemon ends"), started.elapsed(), log)
    }
}

/// The file `serve` reads: a port of its choosing, `config`, and an admin socket in `dir` unless
/// `config` names one (never the system's: tests run side by side).
fn config_file(dir: &tempdir::Dir, config: &str) -> String {
    let admin = if config.contains("[admin]") {
        String::new()
    } else {
        format!(
            "\n[admin]\nsocket = \"{}\"\n",
            dir.0.join("admin.sock").display()
        )
    };
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}{admin}")
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
pub fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}
