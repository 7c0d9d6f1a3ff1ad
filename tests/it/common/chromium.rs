//! Debian's headless Chromium, driven over the DevTools protocol: the test opens pages, reads what
//! they report back, and sees what they logged. Never a downloaded browser: `/usr/bin/chromium`, or
//! the binary `CHROMIUM` names.
//!
//! `--dump-dom --virtual-time-budget` (the docs test) is enough for a page that only loads scripts and
//! fetches: virtual time waits for those. It does not wait for a WebSocket: the chat page's 5 s
//! timers fired while its socket was still opening, one real second in. So a page that talks over
//! a socket runs in real time, and the test polls the page until it says it is done.

use std::{
    collections::VecDeque,
    fmt,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot, time::Instant};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

/// How long Chromium may take to start on a busy machine.
const START: Duration = Duration::from_secs(20);
/// How long one DevTools command may take to be answered.
const ANSWER: Duration = Duration::from_secs(10);
/// How long a page may take to write its report.
const REPORT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
/// The lines of Chromium's stderr a failure message shows.
const TAIL_LINES: usize = 30;
/// Reads the page's `#report` element: `null` until the page has written it.
const READ_REPORT: &str = r#"document.getElementById("report")?.textContent || null"#;

pub fn binary() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "headless Chromium is needed for this test: apt-get install chromium (.ci/run does), \
         or point CHROMIUM at a binary"
    );
    path
}

/// A running browser. Dropping it kills Chromium and removes its profile, whatever path the test
/// took; `close` shuts it down politely first.
pub struct Chromium {
    devtools: DevTools,
    process: Process,
}

/// What one page wrote into `#report`, with what it and the browser logged while it ran.
pub struct PageRun {
    pub url: String,
    pub report: Value,
    pub log: Vec<String>,
    stderr: String,
}

impl fmt::Display for PageRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "page {}", self.url)?;
        writeln!(f, "report: {:#}", self.report)?;
        writeln!(f, "page log:\n  {}", self.log.join("\n  "))?;
        write!(f, "chromium stderr (last lines):\n{}", self.stderr)
    }
}

impl Chromium {
    pub async fn launch() -> Self {
        let mut process = Process::spawn();
        let endpoint = process.devtools_endpoint().await;
        let (socket, _) = connect_async(endpoint.as_str())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot reach DevTools at {endpoint}: {error}\nchromium stderr:\n{}",
                    process.tail
                )
            });
        let devtools = DevTools {
            socket,
            next_id: 0,
            log: Vec::new(),
            tail: process.tail.clone(),
        };
        Self { devtools, process }
    }

    /// Opens `url` in a new tab and waits until the page has written its `#report`.
    pub async fn run_page(&mut self, url: &str) -> PageRun {
        let devtools = &mut self.devtools;
        let target = devtools
            .command(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone();
        let attached = json!({ "targetId": target, "flatten": true });
        let session = devtools
            .command(None, "Target.attachToTarget", attached)
            .await["sessionId"]
            .as_str()
            .expect("a DevTools session id")
            .to_owned();
        let session = Some(session.as_str());
        let logged_before = devtools.log.len();
        // Listening before the page loads, so nothing it logs is missed.
        devtools.command(session, "Log.enable", json!({})).await;
        devtools.command(session, "Runtime.enable", json!({})).await;
        devtools
            .command(session, "Page.navigate", json!({ "url": url }))
            .await;

        let deadline = Instant::now() + REPORT;
        let evaluate = json!({ "expression": READ_REPORT, "returnByValue": true });
        let report = loop {
            // While the page navigates the evaluation may find no context yet: that is "not yet".
            let answer = devtools
                .call(session, "Runtime.evaluate", evaluate.clone())
                .await;
            if let Some(text) = answer
                .ok()
                .and_then(|result| result["result"]["value"].as_str().map(str::to_owned))
            {
                break serde_json::from_str(&text).unwrap_or(Value::String(text));
            }
            if Instant::now() >= deadline {
                panic!(
                    "the page {url} wrote no report within {REPORT:?}\npage log:\n  {}\n\
                     chromium stderr:\n{}",
                    devtools.log[logged_before..].join("\n  "),
                    devtools.tail
                );
            }
            tokio::time::sleep(POLL).await;
        };
        devtools
            .command(None, "Target.closeTarget", json!({ "targetId": target }))
            .await;
        PageRun {
            url: url.to_owned(),
            report,
            log: devtools.log[logged_before..].to_vec(),
            stderr: devtools.tail.to_string(),
        }
    }

    /// Asks Chromium to quit and waits for it, so its profile is removed after every process of it
    /// has let go; `Drop` kills it if it does not.
    pub async fn close(mut self) {
        let _ = self.devtools.call(None, "Browser.close", json!({})).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.process.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The last lines Chromium wrote to stderr, for failure messages.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.0.lock().unwrap();
        for line in lines.iter() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The Chromium process and its profile directory, both gone when this is dropped.
struct Process {
    child: Child,
    profile: PathBuf,
    tail: Tail,
    endpoint: Option<oneshot::Receiver<String>>,
}

impl Process {
    fn spawn() -> Self {
        let profile = std::env::temp_dir().join(super::db::unique_name("teachlyd-chromium"));
        std::fs::create_dir_all(&profile).expect("create a Chromium profile directory");
        let spawned = Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-quic",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&profile);
                panic!("chromium does not start: {error}");
            }
        };
        let stderr = child.stderr.take().expect("chromium's stderr is piped");
        let tail = Tail::default();
        let (found, endpoint) = oneshot::channel();
        // Ends when Chromium's stderr closes, which dropping `Process` brings about.
        std::thread::spawn({
            let tail = tail.clone();
            move || read_stderr(stderr, &tail, found)
        });
        Self {
            child,
            profile,
            tail,
            endpoint: Some(endpoint),
        }
    }

    /// The browser's DevTools WebSocket, which Chromium announces on stderr once it listens.
    async fn devtools_endpoint(&mut self) -> String {
        let endpoint = self.endpoint.take().expect("asked once");
        match tokio::time::timeout(START, endpoint).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => panic!(
                "chromium exited before it listened for DevTools ({:?})\nchromium stderr:\n{}",
                self.child.try_wait(),
                self.tail
            ),
            Err(_) => panic!(
                "chromium did not listen for DevTools within {START:?}\nchromium stderr:\n{}",
                self.tail
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes outlive it by a moment and may still write to the profile:
        // try again until they have gone.
        for _ in 0..100 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_stderr(stderr: impl Read, tail: &Tail, found: oneshot::Sender<String>) {
    let mut found = Some(found);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(url) = line.strip_prefix("DevTools listening on ")
            && let Some(found) = found.take()
        {
            let _ = found.send(url.trim().to_owned());
        }
        // A container has no D-Bus, and Chromium says so on every start.
        if !line.contains("dbus") && !line.trim().is_empty() {
            tail.push(line);
        }
    }
}

/// One browser-wide DevTools connection; commands for a tab carry its flattened session id.
struct DevTools {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// What pages logged and the browser said about them (CORS refusals, failed handshakes),
    /// in the order it came.
    log: Vec<String>,
    tail: Tail,
}

impl DevTools {
    /// A command that must succeed.
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.call(session, method, params).await {
            Ok(result) => result,
            Err(error) => panic!(
                "DevTools refused {method}: {error}\nchromium stderr:\n{}",
                self.tail
            ),
        }
    }

    /// Sends a command and reads until its answer, keeping the events that come before it.
    /// A broken connection panics; a command DevTools refuses is `Err`.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        if let Err(error) = self.socket.send(Message::text(command.to_string())).await {
            panic!(
                "DevTools did not take {method}: {error}\nchromium stderr:\n{}",
                self.tail
            );
        }
        let deadline = Instant::now() + ANSWER;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let text = match next {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!(
                    "the DevTools connection ended while waiting for {method}: {other:?}\n\
                     chromium stderr:\n{}",
                    self.tail
                ),
                Err(_) => panic!(
                    "DevTools did not answer {method} within {ANSWER:?}\nchromium stderr:\n{}",
                    self.tail
                ),
            };
            let message: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if message["id"] == id {
                return match message.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            if let Some(line) = log_line(&message) {
                self.log.push(line);
            }
        }
    }
}

/// An event worth showing: the browser's own log, the page's console, an uncaught exception.
fn log_line(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Log.entryAdded" => Some(format!(
            "[{} {}] {}",
            params["entry"]["source"].as_str().unwrap_or("?"),
            params["entry"]["level"].as_str().unwrap_or("?"),
            params["entry"]["text"].as_str().unwrap_or("")
        )),
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|arg| match &arg["value"] {
                    Value::String(text) => text.clone(),
                    Value::Null => arg["description"].as_str().unwrap_or("").to_owned(),
                    other => other.to_string(),
                })
                .collect();
            Some(format!(
                "[console {}] {}",
                params["type"].as_str().unwrap_or("?"),
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let description = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("?");
            Some(format!("[exception] {description}"))
        }
        _ => None,
    }
}
