//! One WebSocket: registered with the hub, then its backlog and live events, and client frames, until
//! it closes. A socket holds no database connection: it talks to the store through the chat service.
//!
//! The socket never stops reading because of the database: a message or receipt it was sent is
//! handed on as a future of its own (up to `MAX_IN_FLIGHT` of them, answered in the order they were
//! sent), and the backlog is read page by page alongside. Pings and pongs are answered at once,
//! whatever the database does; a typing notice waits only for the check of whom it may reach.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{
    FutureExt, SinkExt, StreamExt,
    stream::{FuturesOrdered, SplitSink, SplitStream},
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{
    Error as WsError, Message as WsMessage,
    error::{CapacityError, ProtocolError},
    protocol::{CloseFrame, frame::coding::CloseCode as WireCloseCode},
};

use super::{
    WRITE_BUFFER, WebSocket,
    protocol::{self, ClientEvent, FrameError},
};
use crate::{
    app::App,
    chat::{ChatError, FromSocket, SendTurn, ServerEvent},
    domain::{Message, MessageId, UserId},
    hub::{Arrival, CloseCode, ConnectionHandle, Outbound, Slot},
    rate::{FloodWatch, Key, Limited, Scope},
};

/// A peer silent for this many ping intervals is gone.
const SILENT_INTERVALS: u32 = 3;
/// How long a closing client gets to take its close frame before it is dropped outright.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a socket the server closed waits for the client's close frame before it hangs up
/// (shutdown waits for this too).
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const BACKLOG_PAGE: u32 = 200;
/// Messages and receipts of one socket waiting for the database at once; beyond this the socket
/// stops reading until one is answered (backpressure, not buffering).
const MAX_IN_FLIGHT: usize = 16;
/// Pauses before the second and third try of a backlog read that failed.
const BACKLOG_RETRIES: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Queued events written with one flush at most; then the socket looks at its other work again.
const BURST: usize = 64;

type Sink = SplitSink<WebSocket, WsMessage>;
/// The answer to one client frame, once the database has spoken: a frame to write, or nothing.
type Pending = Pin<Box<dyn Future<Output = Option<Arc<str>>> + Send>>;
type BacklogPage = Pin<Box<dyn Future<Output = Result<Vec<Message>, ChatError>> + Send>>;

/// Why the socket's loop ended.
enum Ending {
    Close(CloseCode),
    /// The client sent a close frame: the reply tungstenite queued still has to go out.
    ClientClosed,
    ClientLeft,
    Silent,
    WriteFailed,
}

pub async fn run(app: Arc<App>, slot: Slot, arrival: Arrival, socket: WebSocket) {
    let user = slot.user();
    let (handle, mut queue) = ConnectionHandle::new(
        user,
        slot.session().clone(),
        app.config.limits.outbound_queue,
        arrival,
    );
    let control = Arc::clone(&handle.control);
    let connection = handle.id;
    let (mut sink, mut stream) = socket.split();
    // The slot already holds the socket's place under the per-user cap; the only refusal left is a
    // session that ended while the upgrade was under way.
    let Ok(registration) = app.chat.connect(slot, handle) else {
        let code = CloseCode::SessionEnded;
        if close(&mut sink, code, code.reason()).await.is_ok() {
            await_client_close(&mut stream).await;
        }
        return;
    };
    // Shutdown cancels first and closes the registered sockets second: a socket registered after
    // that pass sees the cancellation here and closes with 1001 like the rest.
    if app.shutdown.is_cancelled() {
        control.close(CloseCode::GoingAway);
    }
    tracing::debug!(user, connection, "socket opened");
    let mut socket = Socket {
        app: Arc::clone(&app),
        user,
        connection,
        sink,
        backlog_sent: HashSet::new(),
        in_flight: FuturesOrdered::new(),
        delivers: Vec::new(),
        last_turn: None,
        flood: FloodWatch::default(),
    };
    // A close request (queue overflow, shutdown) ends the socket even while a write to a client that
    // stopped reading is pending: the whole loop races the request, not each await inside it.
    let ending = tokio::select! {
        ending = socket.serve(&mut stream, &mut queue) => ending,
        () = control.closed() => Ending::Close(control.close_code().unwrap_or(CloseCode::GoingAway)),
    };
    match ending {
        Ending::Close(code) => {
            // What the client already sent is answered before the close frame (SPEC §5 "Faults").
            socket.answer_in_flight().await;
            if close(&mut socket.sink, code, code.reason()).await.is_ok() {
                await_client_close(&mut stream).await;
            }
        }
        Ending::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.sink.close()).await;
        }
        Ending::ClientLeft | Ending::WriteFailed => {}
        Ending::Silent => tracing::debug!(user, connection, "dropping a silent socket"),
    }
    drop(registration);
    tracing::debug!(user, connection, "socket closed");
}

async fn close(sink: &mut Sink, code: CloseCode, reason: &'static str) -> Result<(), ()> {
    let frame = WsMessage::Close(Some(CloseFrame {
        code: WireCloseCode::from(code.wire()),
        reason: reason.into(),
    }));
    match tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Reads (and drops) what the client still sends until its close frame answers ours, or it hangs
/// up, or `CLOSE_LINGER` passes. Closing a TCP socket with unread bytes in its receive buffer sends
/// a reset instead of a FIN, and a reset makes the client's kernel throw away what it has not read
/// yet: the last answers and our close frame with them.
async fn await_client_close(stream: &mut SplitStream<WebSocket>) {
    let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, stream.next()).await {}
}

/// Awaits `page` if there is one; never finishes otherwise (a disabled `select!` branch).
async fn next_page(page: &mut Option<BacklogPage>) -> Result<Vec<Message>, ChatError> {
    match page {
        Some(page) => page.await,
        None => std::future::pending().await,
    }
}

struct Socket {
    app: Arc<App>,
    user: UserId,
    connection: u64,
    sink: Sink,
    /// Ids sent from the backlog: the same message may also be queued live, and goes out once.
    backlog_sent: HashSet<MessageId>,
    /// Client frames waiting for the database, answered in the order they came.
    in_flight: FuturesOrdered<Pending>,
    /// Messages fed since the last flush, recorded as delivered once it is done; with their commit
    /// time when they came live rather than from the backlog.
    delivers: Vec<(MessageId, Option<Instant>)>,
    /// Resolves once the last message this socket sent is queued for commit (see `SendTurn`).
    last_turn: Option<oneshot::Receiver<()>>,
    /// Frames refused lately: a socket that goes on sending regardless is closed with 1008.
    flood: FloodWatch,
}

impl Socket {
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
        let mut backlog = Some(self.backlog_page(0));
        let every = self.app.config.limits.ping_interval.0;
        let silence_limit = every * SILENT_INTERVALS;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                Some(answer) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if self.write_answers(answer).await.is_err() {
                        return Ending::WriteFailed;
                    }
                }
                incoming = stream.next(), if self.in_flight.len() < MAX_IN_FLIGHT => {
                    last_heard = Instant::now();
                    match incoming {
                        Some(Ok(WsMessage::Close(_))) => return Ending::ClientClosed,
                        None => return Ending::ClientLeft,
                        Some(Ok(frame)) => {
                            if let Some(code) = self.on_frame(frame).await {
                                return Ending::Close(code);
                            }
                        }
                        Some(Err(error)) => return self.on_read_error(&error),
                    }
                }
                page = next_page(&mut backlog) => {
                    let page = match page {
                        Ok(page) => page,
                        Err(error) => {
                            // Never left open without its backlog: the client reconnects and tries again.
                            tracing::warn!(%error, user = self.user, "reading the backlog failed; closing the socket");
                            return Ending::Close(CloseCode::InternalError);
                        }
                    };
                    backlog = None;
                    if self.send_backlog(&page).await.is_err() {
                        return Ending::WriteFailed;
                    }
                    if let Some(last) = page.last()
                        && page.len() == BACKLOG_PAGE as usize
                    {
                        backlog = Some(self.backlog_page(last.id));
                    }
                }
                outbound = queue.recv(), if backlog.is_none() => {
                    let Some(outbound) = outbound else { return Ending::Close(CloseCode::GoingAway) };
                    if self.forward(outbound, queue).await.is_err() {
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

    /// Buffers a frame without writing it to the connection yet: `flush` writes what was fed in one
    /// go, so a burst of events costs one system call, not one per frame.
    async fn feed(&mut self, frame: &str) -> Result<(), ()> {
        self.sink.feed(WsMessage::text(frame)).await.map_err(|_| ())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.sink.flush().await.map_err(|_| ())
    }

    /// Writes `first` and every later answer that is ready too, in send order, with one flush.
    async fn write_answers(&mut self, first: Option<Arc<str>>) -> Result<(), ()> {
        let mut answer = first;
        for _ in 0..MAX_IN_FLIGHT {
            if let Some(frame) = answer {
                self.feed(&frame).await?;
            }
            match self.in_flight.next().now_or_never() {
                Some(Some(next)) => answer = next,
                _ => break,
            }
        }
        self.flush().await
    }

    /// Writes the answers still owed, for as long as the database and the client allow.
    async fn answer_in_flight(&mut self) {
        let limit = self.app.config.database.write_timeout.0 + CLOSE_TIMEOUT;
        let answers = async {
            while let Some(answer) = self.in_flight.next().await {
                if let Some(frame) = answer {
                    let written = tokio::time::timeout(CLOSE_TIMEOUT, self.write(&frame)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(limit, answers).await;
    }

    /// One page of undelivered messages after `after`, tried up to three times.
    fn backlog_page(&self, after: MessageId) -> BacklogPage {
        let (app, user) = (Arc::clone(&self.app), self.user);
        Box::pin(async move {
            let mut pauses = BACKLOG_RETRIES.iter();
            loop {
                match app.chat.backlog(user, after, BACKLOG_PAGE).await {
                    Ok(page) => return Ok(page),
                    Err(error) => match pauses.next() {
                        Some(pause) => {
                            tracing::debug!(%error, user, "reading the backlog failed; trying again");
                            tokio::time::sleep(*pause).await;
                        }
                        None => return Err(error),
                    },
                }
            }
        })
    }

    /// Writes a page of the backlog, flushing once per `WRITE_BUFFER` bytes; the messages count as
    /// delivered once their flush is done.
    async fn send_backlog(&mut self, page: &[Message]) -> Result<(), ()> {
        let mut fed = 0;
        for message in page {
            let frame = ServerEvent::NewMessage { message }.to_frame();
            self.feed(&frame).await?;
            fed += frame.len();
            self.backlog_sent.insert(message.id);
            self.delivers.push((message.id, None));
            if fed >= WRITE_BUFFER {
                self.flush_deliveries().await?;
                fed = 0;
            }
        }
        self.flush_deliveries().await
    }

    /// Writes `first` and whatever else is queued already (up to `BURST` frames), flushing once per
    /// `WRITE_BUFFER` bytes rather than once per frame. The messages among them count as delivered
    /// once their flush is done, not when they were fed: a socket closed mid-flush (1013, a client
    /// that stopped reading) leaves at most one buffer's worth undelivered-but-maybe-seen, which its
    /// next connection gets again.
    async fn forward(
        &mut self,
        first: Outbound,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), ()> {
        let mut next = Some(first);
        let (mut fed, mut taken) = (0, 1);
        while let Some(outbound) = next.take() {
            match outbound.delivers {
                Some((id, _)) if self.backlog_sent.remove(&id) => {}
                delivers => {
                    self.feed(&outbound.frame).await?;
                    fed += outbound.frame.len();
                    self.delivers
                        .extend(delivers.map(|(id, committed)| (id, Some(committed))));
                }
            }
            if fed >= WRITE_BUFFER {
                self.flush_deliveries().await?;
                fed = 0;
            }
            // Only what this burst writes is taken off the queue.
            if taken < BURST {
                next = queue.try_recv().ok();
                taken += 1;
            }
        }
        self.flush_deliveries().await
    }

    /// Flushes what was fed, then records the messages in it as delivered.
    async fn flush_deliveries(&mut self) -> Result<(), ()> {
        self.flush().await?;
        for (id, committed) in self.delivers.drain(..) {
            self.app.chat.delivered(id);
            if let Some(committed) = committed {
                self.app.metrics.delivery_took(committed.elapsed());
            }
        }
        Ok(())
    }

    fn on_read_error(&self, error: &WsError) -> Ending {
        tracing::debug!(user = self.user, %error, "socket read failed");
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                Ending::Close(CloseCode::TooBig)
            }
            WsError::Utf8(_) => Ending::Close(CloseCode::InvalidPayload),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::ClientLeft,
            WsError::Protocol(_) | WsError::Capacity(_) | WsError::AttackAttempt => {
                Ending::Close(CloseCode::ProtocolError)
            }
            _ => Ending::ClientLeft,
        }
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
            return self.flooding();
        };
        match protocol::parse(&text) {
            Ok(event) => self.on_event(event).await,
            Err(error) => {
                self.refuse(error).await;
                self.flooding()
            }
        }
    }

    /// Counts a refused frame; answers 1008 once the socket has gone on past
    /// `rate_limit.ws_flood_close` refusals in ten seconds.
    fn flooding(&mut self) -> Option<CloseCode> {
        let rules = self.app.live.rules();
        let limit = rules.rate.config();
        let flooding = limit.enabled && self.flood.refused(limit.ws_flood_close, Instant::now());
        if flooding {
            tracing::info!(
                user = self.user,
                connection = self.connection,
                "closing a socket that kept sending refused frames"
            );
        }
        flooding.then_some(CloseCode::PolicyViolation)
    }

    /// Counts one frame of `scope` against the user's limit.
    fn limit(&self, scope: Scope) -> Result<(), Limited> {
        let checked = self
            .app
            .live
            .rules()
            .rate
            .check(scope, Key::User(self.user));
        if checked.is_err() {
            self.app.metrics.rate_limited(scope);
            if scope == Scope::WsMessages {
                self.app.metrics.message_rejected("rate_limited");
            }
        }
        checked
    }

    /// Handles one well-formed event; answers a close code when the connection must end.
    async fn on_event(&mut self, event: ClientEvent) -> Option<CloseCode> {
        match event {
            ClientEvent::Ping => {
                let _ = self.write(&ServerEvent::Pong.to_frame()).await;
            }
            ClientEvent::Typing { to } => {
                if let Err(limited) = self.limit(Scope::Typing) {
                    let _ = self.write(&rate_limited_frame(limited, None)).await;
                    return self.flooding();
                }
                // Whether `to` may hear it can take a query (see `Chat::typing`): the socket goes
                // on reading meanwhile. A notice to a peer already known goes out when first polled.
                let (app, user) = (Arc::clone(&self.app), self.user);
                self.in_flight.push_back(Box::pin(async move {
                    let typed = app.chat.typing(user, to).await;
                    typed.err().map(|error| error_frame(&error, None))
                }));
            }
            ClientEvent::MessageSeen { message_id } => {
                let (app, user, connection) = (Arc::clone(&self.app), self.user, self.connection);
                self.in_flight.push_back(Box::pin(async move {
                    let seen = app.chat.mark_seen(user, message_id, Some(connection));
                    seen.await.err().map(|error| error_frame(&error, None))
                }));
            }
            ClientEvent::Message {
                to,
                message,
                client_id,
            } => {
                if let Err(limited) = self.limit(Scope::WsMessages) {
                    // Queued behind the answers still owed, so the client hears them in send order.
                    let refusal = rate_limited_frame(limited, client_id.as_deref());
                    self.in_flight
                        .push_back(Box::pin(std::future::ready(Some(refusal))));
                    return self.flooding();
                }
                let (app, user, connection) = (Arc::clone(&self.app), self.user, self.connection);
                let socket = FromSocket {
                    connection,
                    turn: SendTurn::next(&mut self.last_turn),
                };
                self.in_flight.push_back(Box::pin(async move {
                    let sent = app
                        .chat
                        .send(user, to, &message, client_id.clone(), Some(socket))
                        .await;
                    Some(match sent {
                        // The sender's other sockets hear of it through the hub; this one from here.
                        Ok(stored) => ServerEvent::MessageSent {
                            message: &stored.message,
                        }
                        .to_frame(),
                        Err(error) => error_frame(&error, client_id.as_deref()),
                    })
                }));
            }
        }
        None
    }

    async fn refuse(&mut self, error: FrameError) {
        let frame = error_event(error.code, &error.detail, error.client_id.as_deref());
        let _ = self.write(&frame).await;
    }
}

fn error_frame(error: &ChatError, client_id: Option<&str>) -> Arc<str> {
    error_event(error.code(), &error.to_string(), client_id)
}

fn rate_limited_frame(limited: Limited, client_id: Option<&str>) -> Arc<str> {
    ServerEvent::Error {
        code: "rate_limited",
        detail: "too many frames; wait before sending again",
        client_id,
        retry_after_ms: Some(limited.retry_after_ms().max(1)),
    }
    .to_frame()
}

fn error_event(code: &str, detail: &str, client_id: Option<&str>) -> Arc<str> {
    ServerEvent::Error {
        code,
        detail,
        client_id,
        retry_after_ms: None,
    }
    .to_frame()
}
