//! teachlyd's API as a client sees it: dev-login over HTTP, sockets, and the events they carry
//! (SPEC §4–§5). Everything the server sends is read defensively: an odd frame becomes a value to
//! count, never a panic.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{UsageError, ledger::MessageId};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Logins in flight at once: a few thousand users take seconds, and the server's pool is not flooded.
const LOGINS_AT_ONCE: usize = 32;
/// The longest a socket may take to open and say hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    pub token: String,
}

/// A base URL, checked: `http://host:port` without a trailing slash.
#[derive(Debug, Clone)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(text: &str) -> Result<BaseUrl, UsageError> {
        let trimmed = text.trim().trim_end_matches('/');
        match trimmed.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() && !rest.contains('/') => Ok(BaseUrl(trimmed.into())),
            _ => Err(UsageError(format!(
                "--url `{text}` must look like http://HOST:PORT (no path; the tool speaks plain ws://)"
            ))),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    pub fn socket(&self, token: &str) -> String {
        format!(
            "ws://{}/ws?access_token={token}",
            &self.0["http://".len()..]
        )
    }
}

/// Signs in every name through `POST /auth/dev-login`, a bounded number at a time; the answer is in
/// the order of `names`.
pub async fn login_all(
    http: &reqwest::Client,
    base: &BaseUrl,
    names: Vec<String>,
) -> anyhow::Result<Vec<Session>> {
    stream::iter(names.into_iter().map(|name| login(http, base, name)))
        .buffered(LOGINS_AT_ONCE)
        .try_collect()
        .await
}

async fn login(http: &reqwest::Client, base: &BaseUrl, name: String) -> anyhow::Result<Session> {
    #[derive(Deserialize)]
    struct Answer {
        user: User,
        access_token: String,
    }
    #[derive(Deserialize)]
    struct User {
        id: i64,
    }
    let url = base.http("/auth/dev-login");
    // A database that is briefly too slow answers 503; a few bounded retries ride that out.
    for attempt in 0..4 {
        let response = http
            .post(&url)
            .json(&json!({ "name": name }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        if status.is_success() {
            let answer: Answer = response
                .json()
                .await
                .with_context(|| format!("the answer of POST {url} is not a session"))?;
            return Ok(Session {
                id: answer.user.id,
                token: answer.access_token,
            });
        }
        let body = response.text().await.unwrap_or_default();
        match status.as_u16() {
            503 if attempt < 3 => {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            429 => bail!(
                "POST {url} was rate limited: run the server with RATE_LIMIT_ENABLED=false \
                 (rate_limit.enabled = false)"
            ),
            404 => bail!(
                "POST {url} answered 404: dev login is off on that server (set auth.dev_login = true)"
            ),
            _ => bail!("POST {url} answered {status}: {body}"),
        }
    }
    Err(anyhow!("POST {url} kept answering 503"))
}

/// Opens a socket. Small buffers: an idle test holds tens of thousands of them.
pub async fn open(url: &str) -> anyhow::Result<Socket> {
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let (socket, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_async_with_config(url, Some(config), true),
    )
    .await
    .map_err(|_| anyhow!("the WebSocket upgrade took longer than {CONNECT_TIMEOUT:?}"))?
    .map_err(|error| anyhow!("the WebSocket upgrade failed: {error}"))?;
    Ok(socket)
}

/// Opens a socket and reads until the server's hello for `user`; answers the time that took.
/// Other events before the hello are skipped (none should come).
pub async fn open_until_hello(url: &str, user: i64) -> anyhow::Result<(Socket, Duration)> {
    let started = Instant::now();
    let mut socket = open(url).await?;
    let deadline = started + CONNECT_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), socket.next())
            .await
            .map_err(|_| anyhow!("no hello within {CONNECT_TIMEOUT:?} of connecting"))?;
        match Incoming::from_frame(frame) {
            Incoming::Event(ServerEvent::UserConnected { user_id }) if user_id == user => {
                return Ok((socket, started.elapsed()));
            }
            Incoming::Closed(why) => bail!("the socket closed before its hello: {why}"),
            _ => {}
        }
    }
}

/// A message object as far as the tool reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct WireMessage {
    pub id: MessageId,
    #[serde(default)]
    pub client_id: Option<String>,
}

/// The server events this tool acts on; every other event is `Other`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent {
    UserConnected {
        user_id: i64,
    },
    MessageSent {
        message: WireMessage,
    },
    NewMessage {
        message: WireMessage,
    },
    MessageDelivered {
        message_id: MessageId,
    },
    Error {
        code: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// What one read of a socket gave.
#[derive(Debug)]
pub enum Incoming {
    Event(ServerEvent),
    /// Ping, pong, or an empty frame: nothing to do (tungstenite answers pings itself).
    Control,
    /// A frame that is not a server event (not JSON, binary, unknown shape).
    Unexpected(String),
    /// The socket ended: a close frame, an error, or the end of the stream.
    Closed(String),
}

impl Incoming {
    pub fn from_frame(
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Incoming {
        match frame {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                Ok(event) => Incoming::Event(event),
                Err(error) => Incoming::Unexpected(format!("{error}: {}", clip(&text))),
            },
            Some(Ok(Message::Close(frame))) => Incoming::Closed(match frame {
                Some(frame) => format!("closed with {} {}", u16::from(frame.code), frame.reason),
                None => "closed without a code".into(),
            }),
            Some(Ok(Message::Binary(bytes))) => {
                Incoming::Unexpected(format!("a binary frame of {} bytes", bytes.len()))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Control,
            Some(Err(error)) => Incoming::Closed(format!("socket error: {error}")),
            None => Incoming::Closed("the connection ended".into()),
        }
    }
}

fn clip(text: &str) -> &str {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The `message` frame a client sends.
pub fn message_frame(to: i64, text: &str, client_id: &str) -> Message {
    Message::text(
        json!({"event": "message", "to": to, "message": text, "client_id": client_id}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_events_are_read_and_odd_frames_counted() {
        let text = |s: &str| Some(Ok(Message::text(s)));
        assert!(matches!(
            Incoming::from_frame(text(r#"{"event":"user_connected","user_id":4}"#)),
            Incoming::Event(ServerEvent::UserConnected { user_id: 4 })
        ));
        let sent = r#"{"event":"message_sent","message":{"id":9,"from_id":1,"to_id":2,
            "content":"hi","timestamp":"2025-01-01T00:00:00Z","delivered_at":null,"seen_at":null,
            "client_id":"r-1-2-3"}}"#;
        match Incoming::from_frame(text(sent)) {
            Incoming::Event(ServerEvent::MessageSent { message }) => {
                assert_eq!(message.id, 9);
                assert_eq!(message.client_id.as_deref(), Some("r-1-2-3"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Incoming::from_frame(text(r#"{"event":"typing","from":3}"#)),
            Incoming::Event(ServerEvent::Other)
        ));
        assert!(matches!(
            Incoming::from_frame(text(r#"{"event":"error","code":"internal","detail":"x"}"#)),
            Incoming::Event(ServerEvent::Error {
                client_id: None,
                ..
            })
        ));
        assert!(matches!(
            Incoming::from_frame(text("not json")),
            Incoming::Unexpected(_)
        ));
        assert!(matches!(
            Incoming::from_frame(text(r#"{"event":"new_message"}"#)),
            Incoming::Unexpected(_)
        ));
        assert!(matches!(Incoming::from_frame(None), Incoming::Closed(_)));
    }

    #[test]
    fn base_urls_become_http_and_ws_addresses() {
        let base = BaseUrl::parse("http://127.0.0.1:8000/").unwrap();
        assert_eq!(base.http("/health"), "http://127.0.0.1:8000/health");
        assert_eq!(base.socket("t"), "ws://127.0.0.1:8000/ws?access_token=t");
        for bad in ["https://h:1", "127.0.0.1:8000", "http://", "http://h:1/api"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
