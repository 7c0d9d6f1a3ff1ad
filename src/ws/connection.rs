//! One WebSocket: registered with the hub, then the backlog, then live events and client frames until
//! it closes. A socket holds no database connection: it talks to the store through the chat service.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{
    Error as WsError, Message as WsMessage,
    error::CapacityError,
    protocol::{CloseFrame, frame::coding::CloseCode as WireCloseCode},
};

use super::{
    WebSocket,
    protocol::{self, ClientEvent, FrameError},
};
use crate::{
    app::App,
    chat::{ChatError, ServerEvent},
    domain::{MessageId, UserId},
    hub::{CloseCode, ConnectionHandle, Outbound},
};

/// A peer silent for this many ping intervals is gone.
const SILENT_INTERVALS: u32 = 3;
/// How long a closing client gets to take its close frame before it is dropped outright.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
const BACKLOG_PAGE: u32 = 200;

type Sink = SplitSink<WebSocket, WsMessage>;

/// Why the socket's loop ended.
enum Ending {
    Close(CloseCode),
    ClientLeft,
    Silent,
    WriteFailed,
}

pub async fn run(app: Arc<App>, user: UserId, socket: WebSocket) {
    let (handle, mut queue) = ConnectionHandle::new(user, app.config.limits.outbound_queue);
    let control = Arc::clone(&handle.control);
    let connection = handle.id;
    let (mut sink, mut stream) = socket.split();
    if app.chat.connect(handle).await.is_err() {
        let _ = close(
            &mut sink,
            CloseCode::PolicyViolation,
            "too many connections",
        )
        .await;
        return;
    }
    // Shutdown cancels first and closes the registered sockets second: a socket registered after
    // that pass sees the cancellation here and closes with 1001 like the rest.
    if app.shutdown.is_cancelled() {
        control.close(CloseCode::GoingAway);
    }
    tracing::debug!(user, connection, "socket opened");
    let mut socket = Socket {
        app: &app,
        user,
        connection,
        sink,
        backlog_sent: HashSet::new(),
    };
    // A close request (queue overflow, shutdown) ends the socket even while a write to a client that
    // stopped reading is pending: the whole loop races the request, not each await inside it.
    let ending = tokio::select! {
        ending = socket.serve(&mut stream, &mut queue) => ending,
        () = control.closed() => Ending::Close(control.close_code().unwrap_or(CloseCode::GoingAway)),
    };
    match ending {
        Ending::Close(code) => {
            let reason = match code {
                CloseCode::GoingAway => "server shutting down",
                CloseCode::Overflow => "too slow: reconnect to get what you missed",
                CloseCode::TooBig => "frame too large",
                CloseCode::PolicyViolation => "policy violation",
            };
            let _ = close(&mut socket.sink, code, reason).await;
        }
        Ending::ClientLeft | Ending::WriteFailed => {}
        Ending::Silent => tracing::debug!(user, connection, "dropping a silent socket"),
    }
    app.chat.disconnect(user, connection).await;
    tracing::debug!(user, connection, "socket closed");
}

async fn close(sink: &mut Sink, code: CloseCode, reason: &'static str) -> Result<(), ()> {
    let frame = WsMessage::Close(Some(CloseFrame {
        code: WireCloseCode::from(code as u16),
        reason: reason.into(),
    }));
    match tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

struct Socket<'a> {
    app: &'a App,
    user: UserId,
    connection: u64,
    sink: Sink,
    /// Ids sent from the backlog: the same message may also be queued live, and goes out once.
    backlog_sent: HashSet<MessageId>,
}

impl Socket<'_> {
    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> Ending {
        let hello = ServerEvent::UserConnected { user_id: self.user }.to_frame();
        if self.write(&hello).await.is_err() {
            return Ending::WriteFailed;
        }
        // Registered first, backlog second: whatever commits in between is queued live, and the
        // queue is only read once the backlog is out (DESIGN §4).
        if self.send_backlog().await.is_err() {
            return Ending::WriteFailed;
        }
        let every = self.app.config.limits.ping_interval.0;
        let silence_limit = every * SILENT_INTERVALS;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                biased;
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        Some(Ok(WsMessage::Close(_))) => return Ending::ClientLeft,
                        Some(Ok(frame)) => {
                            if let Some(code) = self.on_frame(frame).await {
                                return Ending::Close(code);
                            }
                        }
                        Some(Err(error)) => return self.on_read_error(&error),
                        None => return Ending::ClientLeft,
                    }
                }
                outbound = queue.recv() => {
                    let Some(outbound) = outbound else { return Ending::Close(CloseCode::GoingAway) };
                    if self.forward(outbound).await.is_err() {
                        return Ending::WriteFailed;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= silence_limit {
                        return Ending::Silent;
                    }
                    if self.sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return Ending::WriteFailed;
                    }
                }
            }
        }
    }

    async fn write(&mut self, frame: &str) -> Result<(), ()> {
        self.sink.send(WsMessage::text(frame)).await.map_err(|_| ())
    }

    async fn send_backlog(&mut self) -> Result<(), ()> {
        let mut after = 0;
        loop {
            let page = match self.app.chat.backlog(self.user, after, BACKLOG_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    // The messages stay undelivered; the next connection tries again.
                    tracing::warn!(%error, user = self.user, "reading the backlog failed");
                    return Ok(());
                }
            };
            for message in &page {
                let frame = ServerEvent::NewMessage { message }.to_frame();
                self.write(&frame).await?;
                self.backlog_sent.insert(message.id);
                self.app.chat.delivered(message.id).await;
            }
            match page.last() {
                Some(last) if page.len() == BACKLOG_PAGE as usize => after = last.id,
                _ => return Ok(()),
            }
        }
    }

    async fn forward(&mut self, outbound: Outbound) -> Result<(), ()> {
        if let Some(id) = outbound.delivers
            && self.backlog_sent.remove(&id)
        {
            return Ok(());
        }
        self.write(&outbound.frame).await?;
        if let Some(id) = outbound.delivers {
            self.app.chat.delivered(id).await;
        }
        Ok(())
    }

    fn on_read_error(&self, error: &WsError) -> Ending {
        if let WsError::Capacity(CapacityError::MessageTooLong { .. }) = error {
            return Ending::Close(CloseCode::TooBig);
        }
        tracing::debug!(user = self.user, %error, "socket read failed");
        Ending::ClientLeft
    }

    /// Handles one client frame; answers a close code when the connection must end.
    async fn on_frame(&mut self, frame: WsMessage) -> Option<CloseCode> {
        if matches!(frame, WsMessage::Ping(_) | WsMessage::Pong(_)) {
            return None;
        }
        if frame.len() > self.app.config.limits.max_frame_bytes {
            return Some(CloseCode::TooBig);
        }
        let WsMessage::Text(text) = frame else {
            self.refuse(FrameError {
                code: "invalid_json",
                detail: "send JSON in text frames".into(),
                client_id: None,
            })
            .await;
            return None;
        };
        match protocol::parse(&text) {
            Ok(event) => self.on_event(event).await,
            Err(error) => self.refuse(error).await,
        }
        None
    }

    async fn on_event(&mut self, event: ClientEvent) {
        let chat = &self.app.chat;
        match event {
            ClientEvent::Ping => {
                let _ = self.write(&ServerEvent::Pong.to_frame()).await;
            }
            ClientEvent::Typing { to } => {
                if let Err(error) = chat.typing(self.user, to) {
                    self.refuse_chat(&error, None).await;
                }
            }
            ClientEvent::MessageSeen { message_id } => {
                if let Err(error) = chat
                    .mark_seen(self.user, message_id, Some(self.connection))
                    .await
                {
                    self.refuse_chat(&error, None).await;
                }
            }
            ClientEvent::Message {
                to,
                message,
                client_id,
            } => match chat.send(self.user, to, &message, client_id.clone()).await {
                // A new message reaches every connection of the sender through the hub.
                Ok(stored) if stored.created => {}
                Ok(stored) => {
                    let message = &stored.message;
                    let _ = self
                        .write(&ServerEvent::MessageSent { message }.to_frame())
                        .await;
                }
                Err(error) => self.refuse_chat(&error, client_id.as_deref()).await,
            },
        }
    }

    async fn refuse_chat(&mut self, error: &ChatError, client_id: Option<&str>) {
        self.refuse(FrameError {
            code: error.code(),
            detail: error.to_string(),
            client_id: client_id.map(str::to_owned),
        })
        .await;
    }

    async fn refuse(&mut self, error: FrameError) {
        let frame = ServerEvent::Error {
            code: error.code,
            detail: &error.detail,
            client_id: error.client_id.as_deref(),
            retry_after_ms: None,
        }
        .to_frame();
        let _ = self.write(&frame).await;
    }
}
