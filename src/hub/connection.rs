use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Instant,
};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{MessageId, SessionId, UserId};

pub type ConnectionId = u64;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// One serialized event on its way to a socket. The frame is shared by every recipient.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Arc<str>,
    /// Set on `new_message`: once the frame is written, the message counts as delivered. With it,
    /// when the message was committed, for `teachly_message_delivery_seconds`.
    pub delivers: Option<(MessageId, Instant)>,
}

impl Outbound {
    pub fn event(frame: Arc<str>) -> Self {
        Self {
            frame,
            delivers: None,
        }
    }

    /// A message just committed, on its way to its recipient.
    pub fn new_message(frame: Arc<str>, id: MessageId) -> Self {
        Self {
            frame,
            delivers: Some((id, Instant::now())),
        }
    }
}

/// Why the server closes a socket; each has its WebSocket close code (`wire`) and a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The server is shutting down (1001).
    GoingAway,
    /// The client broke the WebSocket protocol (1002, RFC 6455 §7.4.1).
    ProtocolError,
    /// A text frame that is not UTF-8 (1007).
    InvalidPayload,
    /// The client kept sending after being refused (1008).
    PolicyViolation,
    /// A frame was larger than `limits.max_frame_bytes` (1009).
    TooBig,
    /// The server could not do its part (the backlog could not be read): reconnect (1011).
    InternalError,
    /// The outbound queue overflowed: the client does not read fast enough (1013).
    Overflow,
    /// An operator closed the user's sockets (`teachlyd admin kick`, 4001).
    Kicked,
    /// The socket's session ended: signed out, or revoked because its refresh token was reused
    /// (4001, like a kick: either way the client must not just reconnect with the same token).
    SessionEnded,
}

impl CloseCode {
    const ALL: [Self; 9] = [
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::TooBig,
        Self::InternalError,
        Self::Overflow,
        Self::Kicked,
        Self::SessionEnded,
    ];

    /// The code in the close frame.
    pub fn wire(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::TooBig => 1009,
            Self::InternalError => 1011,
            Self::Overflow => 1013,
            Self::Kicked | Self::SessionEnded => 4001,
        }
    }

    /// Its place in `ALL`, plus one: how a `ConnectionControl` holds it (0 is "not closing").
    fn tag(self) -> u8 {
        Self::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(0, |i| i as u8 + 1)
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    /// The close frame's reason, for people reading a trace.
    pub fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "WebSocket protocol error",
            Self::InvalidPayload => "text frames must be UTF-8",
            Self::PolicyViolation => "policy violation",
            Self::TooBig => "frame too large",
            Self::InternalError => "server error: reconnect to get your messages",
            Self::Overflow => "too slow: reconnect to get what you missed",
            Self::Kicked => "closed by an administrator",
            Self::SessionEnded => "session ended: sign in again",
        }
    }
}

/// Lets anyone holding a handle ask the connection's task to close, with a code; the first code wins.
#[derive(Debug, Default)]
pub struct ConnectionControl {
    code: AtomicU8,
    closed: CancellationToken,
}

impl ConnectionControl {
    pub fn close(&self, code: CloseCode) {
        let _ = self
            .code
            .compare_exchange(0, code.tag(), Ordering::AcqRel, Ordering::Acquire);
        self.closed.cancel();
    }

    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_tag(self.code.load(Ordering::Acquire))
    }

    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

/// Where a socket came from, for `teachlyd admin connections`.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    pub remote: Option<SocketAddr>,
    /// The path it was opened on, without the query (which may hold a token).
    pub path: String,
}

/// What the hub keeps of one socket: where to queue events, how to close it, and where it came from.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub user_id: UserId,
    /// The session whose access token opened it: ending that session closes it.
    pub session: SessionId,
    queue: mpsc::Sender<Outbound>,
    pub control: Arc<ConnectionControl>,
    pub arrival: Arc<Arrival>,
    pub connected_at: OffsetDateTime,
}

impl ConnectionHandle {
    /// A handle and the receiving end of its bounded queue.
    pub fn new(
        user_id: UserId,
        session: SessionId,
        queue_len: usize,
        arrival: Arrival,
    ) -> (Self, mpsc::Receiver<Outbound>) {
        let (queue, receiver) = mpsc::channel(queue_len);
        let handle = Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            user_id,
            session,
            queue,
            control: Arc::new(ConnectionControl::default()),
            arrival: Arc::new(arrival),
            connected_at: OffsetDateTime::now_utc(),
        };
        (handle, receiver)
    }

    /// Events queued and not yet written to the socket.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues without waiting; a full queue closes the connection (1013).
    pub fn offer(&self, event: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(event) {
            tracing::debug!(
                user = self.user_id,
                connection = self.id,
                "outbound queue full; closing"
            );
            self.control.close(CloseCode::Overflow);
        }
    }
}
