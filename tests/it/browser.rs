//! The real-browser check: `server.cors_origins` as a browser sees it. Headless Chromium opens a page
//! (browser.html) from an origin on the list: it signs two users in with `fetch` (a JSON POST, so
//! behind a CORS preflight), opens their WebSockets and exchanges a message. The same page from an
//! origin that is not listed is refused by CORS on `fetch` and by the server on the upgrade. The test
//! asserts what the page reports back, and what the server stored.

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

use crate::common::{TestApp, chromium::Chromium, eventually};
use crate::on_both_backends;

const PAGE: &str = include_str!("browser.html");
/// A request head larger than this is not from the browser under test.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

on_both_backends! {
    async fn a_page_from_a_listed_origin_chats_and_one_from_elsewhere_is_refused(backend: Backend) {
        let listed = PageHost::start().await;
        let unlisted = PageHost::start().await;
        let app = TestApp::spawn_with(backend, |config| {
            config.server.cors_origins = vec![listed.origin()];
        })
        .await;
        let api = app.url("");
        let mut browser = Chromium::launch().await;

        let page = browser.run_page(&listed.page(&[("api", &api)])).await;
        let report = &page.report;
        assert_eq!(report["errors"], json!([]), "{page}");
        assert_eq!(report["login"], "ok", "{page}");
        assert_eq!(report["ws"], "open", "{page}");
        // The page signed in as these two; signing in again by name finds the same users.
        let alice = app.dev_login("alice").await;
        let bob = app.dev_login("bob").await;
        assert_eq!(report["first_frame"], json!({"event": "user_connected", "user_id": alice.id}), "{page}");
        assert_eq!((&report["message_sent"], &report["new_message_received"]), (&json!(true), &json!(true)), "{page}");
        let sent = &report["sent"];
        assert_eq!((&sent["from_id"], &sent["to_id"]), (&json!(alice.id), &json!(bob.id)), "{page}");
        assert_eq!((&sent["content"], &sent["client_id"]), (&json!("hello from a page"), &json!("page-1")), "{page}");
        assert_eq!(report["received"], *sent, "bob got what alice was told was stored\n{page}");
        let stored = history(&app, &alice.access_token, bob.id).await;
        assert_eq!(ids(&stored), vec![sent["id"].clone()], "{page}");
        assert_eq!(stored[0]["content"], sent["content"]);
        // A delivery is recorded by the group commit after bob's socket wrote the message.
        eventually("bob's delivery to be recorded", || async {
            history(&app, &alice.access_token, bob.id).await[0]["delivered_at"].is_string()
        })
        .await;
        eventually("the page's sockets to close", || async {
            app.open_sockets(&alice) + app.open_sockets(&bob) == 0
        })
        .await;

        // From the unlisted origin the page gets tokens from the test, so the upgrade is refused for
        // its Origin alone: the same tokens open sockets for a client that sends none.
        let query = [
            ("api", api.as_str()),
            ("alice_token", &alice.access_token),
            ("bob_token", &bob.access_token),
            ("bob_id", &bob.id.to_string()),
        ];
        let page = browser.run_page(&unlisted.page(&query)).await;
        let report = &page.report;
        assert_eq!(report["errors"], json!([]), "{page}");
        let login = report["login"].as_str().unwrap_or_default();
        assert!(login.starts_with("error: TypeError"), "fetch is refused by CORS\n{page}");
        let ws = report["ws"].as_str().unwrap_or_default();
        assert!(ws.starts_with("error") && ws.ends_with("closed 1006"), "the socket never opens\n{page}");
        assert_eq!(report["first_frame"], Value::Null, "{page}");
        assert_eq!(report["message_sent"], false, "{page}");
        assert!(
            page.log.iter().any(|line| line.contains("blocked by CORS policy")),
            "the browser blamed CORS for the failed fetch\n{page}"
        );
        assert!(
            page.log.iter().any(|line| line.contains("Unexpected response code: 403")),
            "the server refused the upgrade with 403\n{page}"
        );
        assert_eq!(app.open_sockets(&alice) + app.open_sockets(&bob), 0);
        let stored = history(&app, &alice.access_token, bob.id).await;
        assert_eq!(ids(&stored), vec![sent["id"].clone()], "nothing new was stored");
        let mut alice_ws = app.connect(&alice).await;
        assert_eq!(alice_ws.next_event().await["event"], "user_connected");

        browser.close().await;
        app.stop().await;
    }
}

/// The conversation with `peer` as the caller's history holds it, oldest first.
async fn history(app: &TestApp, token: &str, peer: i64) -> Vec<Value> {
    let path = format!("/conversations/{peer}/messages");
    let (status, body) = app.get(&path, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let mut messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages.reverse();
    messages
}

fn ids(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|message| message["id"].clone())
        .collect()
}

/// A web server on a port, so an origin, of its own: it answers every GET with the page.
struct PageHost {
    addr: std::net::SocketAddr,
    server: JoinHandle<()>,
}

impl PageHost {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port for the page");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Dropped with the task when the host is, which ends every connection still open.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve_page(stream));
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, server }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn page(&self, query: &[(&str, &str)]) -> String {
        let base = format!("{}/", self.origin());
        url::Url::parse_with_params(&base, query)
            .expect("a page URL")
            .into()
    }
}

impl Drop for PageHost {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_page(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buffer = [0; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
        if head.len() > MAX_REQUEST_HEAD {
            return;
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{PAGE}",
        PAGE.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
