//! A WebSocket client that speaks the chat protocol, with timeouts so a missing event fails the test
//! instead of hanging it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::{HeaderValue, StatusCode},
        protocol::CloseFrame,
    },
};

const WAIT: Duration = Duration::from_secs(5);

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    /// The code of the close frame `next_frame` ran into, if any.
    closed_with: Option<u16>,
}

/// What the server said instead of upgrading.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub body: Value,
}

impl WsClient {
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self, Refused> {
        Self::connect_with(url, token, None).await
    }

    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Self, Refused> {
        let mut request = url.into_client_request().expect("a valid ws url");
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            request.headers_mut().insert("authorization", value);
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        match connect_async(request).await {
            Ok((stream, _)) => Ok(Self {
                stream,
                closed_with: None,
            }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|bytes| serde_json::from_slice(bytes).ok())
                    .unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(error) => panic!("connecting to {url} failed: {error}"),
        }
    }

    /// A socket whose client side buffers almost nothing and that reads only when asked to: a
    /// client that has stopped reading.
    pub async fn connect_stalled(url: &str, token: &str) -> Self {
        let address = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(address).await.unwrap();
        let mut request = url.into_client_request().unwrap();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        request.headers_mut().insert("authorization", value);
        let (stream, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
            .await
            .expect("the stalled socket opens");
        Self {
            stream,
            closed_with: None,
        }
    }

    /// Reads until the server closes or drops the socket: the ids of every `new_message` on the way,
    /// and the close code if a close frame came.
    pub async fn drain(&mut self) -> (Vec<i64>, Option<u16>) {
        let mut ids = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("the socket ends within 10 s");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    if event["event"] == "new_message" {
                        ids.push(event["message"]["id"].as_i64().unwrap());
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return (ids, frame.map(|CloseFrame { code, .. }| u16::from(code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (ids, None),
            }
        }
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends unless the socket is closing; answers whether the frame went out.
    pub async fn try_send_json(&mut self, value: &Value) -> bool {
        self.stream
            .send(Message::text(value.to_string()))
            .await
            .is_ok()
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.expect("the frame is sent");
    }

    /// Reads until a protocol ping arrives (answering it, as every client library does).
    pub async fn expect_ping(&mut self) -> bool {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next()).await;
            match frame {
                Ok(Some(Ok(Message::Ping(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
                _ => return false,
            }
        }
    }

    /// The next JSON event, skipping protocol pings.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("an event arrives within 5 s")
                .expect("the socket is still open")
                .expect("the socket reads cleanly");
            match frame {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("events are JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON event, or `None` once the socket closed or broke.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("events are JSON"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    self.closed_with = frame.map(|CloseFrame { code, .. }| u16::from(code));
                    return None;
                }
                _ => return None,
            }
        }
    }

    /// The close code `next_frame` saw, once it answered `None`.
    pub fn close_code(&self) -> Option<u16> {
        self.closed_with
    }

    /// The next event named `name`, skipping presence events (`user_connected`, `user_disconnected`),
    /// which arrive whenever someone comes or goes.
    pub async fn expect(&mut self, name: &str) -> Value {
        loop {
            let event = self.next_event().await;
            let event_name = event["event"].as_str().unwrap_or_default();
            if event_name == name {
                return event;
            }
            assert!(
                matches!(event_name, "user_connected" | "user_disconnected"),
                "expected {name}, got {event}"
            );
        }
    }

    /// The next event named one of `names`, skipping any other.
    pub async fn until_any(&mut self, names: &[&str]) -> Value {
        loop {
            let event = self.next_event().await;
            if names.iter().any(|name| event["event"] == *name) {
                return event;
            }
        }
    }

    /// The next event named `name`, skipping any other.
    pub async fn until(&mut self, name: &str) -> Value {
        loop {
            let event = self.next_event().await;
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Asserts that nothing but presence events arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    let name = event["event"].as_str().unwrap_or_default();
                    assert!(
                        matches!(name, "user_connected" | "user_disconnected"),
                        "expected no event, got {event}"
                    );
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected no event, got {other:?}"),
            }
        }
    }

    /// Waits for the server to close the socket and answers the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("the socket closes within 5 s");
            match frame {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|CloseFrame { code, .. }| u16::from(code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn ping_pong(&mut self) {
        self.send_json(&serde_json::json!({"event": "ping"})).await;
        self.expect("pong").await;
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// A WebSocket spoken byte by byte, to send what no client library would: broken frames.
pub struct RawSocket {
    tcp: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawSocket {
    /// Opens `/ws` on `addr` with a hand-written handshake.
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut socket = Self {
            tcp,
            buffer: Vec::new(),
        };
        while !socket.buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(
                socket.fill().await,
                "the server hung up during the handshake"
            );
        }
        let end = socket
            .buffer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        let head = String::from_utf8_lossy(&socket.buffer[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        socket.buffer.drain(..end);
        socket
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("the server sent nothing within {WAIT:?}"),
        }
    }

    /// Writes one frame: `first` is the FIN/RSV/opcode byte; `masked` as a client must.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126, "short frames only");
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// Reads the server's frames until its close frame and answers the code in it; `None` if the
    /// connection ended without one.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            while self.buffer.len() < 2 {
                if !self.fill().await {
                    return None;
                }
            }
            let (header, length) = match self.buffer[1] & 0x7f {
                126 => {
                    while self.buffer.len() < 4 {
                        if !self.fill().await {
                            return None;
                        }
                    }
                    (
                        4,
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                    )
                }
                127 => panic!("the server sent a huge frame"),
                short => (2, short as usize),
            };
            while self.buffer.len() < header + length {
                if !self.fill().await {
                    return None;
                }
            }
            let opcode = self.buffer[0] & 0x0f;
            let payload: Vec<u8> = self.buffer[header..header + length].to_vec();
            self.buffer.drain(..header + length);
            if opcode == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}
