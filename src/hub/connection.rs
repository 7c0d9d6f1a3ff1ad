use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{MessageId, UserId};

pub type ConnectionId = u64;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// One serialized event on its way to a socket. The frame is shared by every recipient.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Arc<str>,
    /// Set on `new_message`: once the frame is written, the message counts as delivered.
    pub delivers: Option<MessageId>,
}

impl Outbound {
    pub fn event(frame: Arc<str>) -> Self {
        Self {
            frame,
            delivers: None,
        }
    }

    pub fn new_message(frame: Arc<str>, id: MessageId) -> Self {
        Self {
            frame,
            delivers: Some(id),
        }
    }
}

/// The WebSocket close codes the server chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The server is shutting down.
    GoingAway = 1001,
    /// The client broke the WebSocket protocol (RFC 6455 §7.4.1).
    ProtocolError = 1002,
    /// A text frame that is not UTF-8.
    InvalidPayload = 1007,
    /// The client kept sending after being refused.
    PolicyViolation = 1008,
    /// A frame was larger than `limits.max_frame_bytes`.
    TooBig = 1009,
    /// The server could not do its part (the backlog could not be read): reconnect.
    InternalError = 1011,
    /// The outbound queue overflowed: the client does not read fast enough.
    Overflow = 1013,
    /// An operator closed the user's sockets (`teachlyd admin kick`).
    Kicked = 4001,
}

impl CloseCode {
    const ALL: [Self; 8] = [
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::TooBig,
        Self::InternalError,
        Self::Overflow,
        Self::Kicked,
    ];

    fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u16 == code)
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
        }
    }
}

/// Lets anyone holding a handle ask the connection's task to close, with a code; the first code wins.
#[derive(Debug, Default)]
pub struct ConnectionControl {
    code: AtomicU16,
    closed: CancellationToken,
}

impl ConnectionControl {
    pub fn close(&self, code: CloseCode) {
        let _ = self
            .code
            .compare_exchange(0, code as u16, Ordering::AcqRel, Ordering::Acquire);
        self.closed.cancel();
    }

    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_u16(self.code.load(Ordering::Acquire))
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
    queue: mpsc::Sender<Outbound>,
    pub control: Arc<ConnectionControl>,
    pub arrival: Arc<Arrival>,
    pub connected_at: OffsetDateTime,
}

impl ConnectionHandle {
    /// A handle and the receiving end of its bounded queue.
    pub fn new(
        user_id: UserId,
        queue_len: usize,
        arrival: Arrival,
    ) -> (Self, mpsc::Receiver<Outbound>) {
        let (queue, receiver) = mpsc::channel(queue_len);
        let handle = Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            user_id,
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
