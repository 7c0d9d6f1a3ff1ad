//! The chat service: what both transports (REST and WebSocket) do with a message, a receipt or a
//! connection. It applies the domain's rules, writes through the group-commit writer and reaches
//! sockets only through the hub.

pub mod events;
mod peers;
mod presence;
mod writer;

use std::{sync::Arc, time::Instant};

use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use events::ServerEvent;
pub use writer::WriteError;

use crate::{
    config::Config,
    domain::{
        MAX_CLIENT_ID_CHARS, Message, MessageId, NewMessage, SessionId, Stored, UserId,
        content::ContentRejection, now,
    },
    hub::{ConnectionHandle, ConnectionId, Hub, Refusal, Slot},
    live::Live,
    metrics::Metrics,
    store::{KnownUsers, SeenReceipt, Store, StoreError},
};
use peers::Peers;
use presence::Presence;
use writer::GroupCommit;

/// Why a chat action was refused. `code` is the error code of SPEC §5.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Content(#[from] ContentRejection),
    #[error("you cannot send a message to yourself")]
    InvalidRecipient,
    #[error("there is no user with id {0}")]
    UnknownRecipient(UserId),
    #[error("{0}")]
    InvalidField(String),
    #[error("you can only mark messages sent to you as seen")]
    Forbidden,
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the database did not answer in time; try again")]
    TimedOut,
    #[error("the server could not complete this; try again")]
    Store(#[from] StoreError),
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::Content(rejection) => rejection.code(),
            ChatError::InvalidRecipient => "invalid_recipient",
            ChatError::UnknownRecipient(_) => "unknown_recipient",
            ChatError::InvalidField(_) => "invalid_field",
            ChatError::Forbidden => "forbidden",
            ChatError::Write(WriteError::Unavailable | WriteError::ShuttingDown)
            | ChatError::TimedOut => "unavailable",
            ChatError::Store(error) if error.is_unavailable() => "unavailable",
            ChatError::Write(WriteError::Refused) | ChatError::Store(_) => "internal",
        }
    }
}

pub struct Chat {
    store: Store,
    hub: Arc<Hub>,
    users: Arc<KnownUsers>,
    /// Who shares a conversation with whom: whom `typing` may reach.
    peers: Peers,
    commits: GroupCommit,
    presence: Presence,
    live: Arc<Live>,
    /// Every database wait on a sender's path ends by then (SPEC `database.write_timeout`).
    write_timeout: std::time::Duration,
    metrics: Arc<Metrics>,
}

/// A message's socket: it hears `message_sent` from its own answer, and its turn keeps the socket's
/// messages in the order they were sent.
pub struct FromSocket {
    pub connection: ConnectionId,
    pub turn: SendTurn,
}

/// One message's place in its socket's order. A socket's messages are checked and committed
/// concurrently, but a check may wait for the database (is the recipient known?) while the next
/// one does not: each message joins the commit queue only after the one sent before it joined it
/// (or was refused), so ids, and so delivery and history, follow the order of sending.
pub struct SendTurn {
    after: Option<oneshot::Receiver<()>>,
    queued: oneshot::Sender<()>,
}

impl SendTurn {
    /// The turn of the next message; `last` is the previous message's, and becomes this one's.
    pub fn next(last: &mut Option<oneshot::Receiver<()>>) -> Self {
        let (queued, next) = oneshot::channel();
        Self {
            after: last.replace(next),
            queued,
        }
    }

    /// Waits until the message before this one is queued or refused; answers what tells the next
    /// one that this one is (dropping it tells the same).
    async fn wait(self) -> oneshot::Sender<()> {
        if let Some(after) = self.after {
            let _ = after.await;
        }
        self.queued
    }
}

/// A socket's place in the hub. Dropping it (however the socket's task ends, a panic included)
/// releases the place, so no ghost connection counts against the user's cap or shows them online.
pub struct Registration {
    hub: Arc<Hub>,
    presence: Presence,
    user: UserId,
    connection: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.hub.unregister(self.user, self.connection) {
            self.presence.changed(self.user);
        }
    }
}

impl Chat {
    /// Starts the group commit (messages and deliveries) and the presence announcer, each on
    /// database connections of its own; all of them finish their queued work when `shutdown` fires, and
    /// `tasks` lets the caller wait for that.
    pub async fn start(
        config: &Config,
        store: Store,
        hub: Arc<Hub>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, StoreError> {
        let write_timeout = config.database.write_timeout.0;
        let commits = GroupCommit::start(
            store.lane(write_timeout).await?,
            store.clone(),
            Arc::clone(&hub),
            Arc::clone(&metrics),
            write_timeout,
            shutdown.clone(),
            tasks,
        );
        let presence = Presence::start(
            store.clone(),
            Arc::clone(&hub),
            write_timeout,
            shutdown.clone(),
            tasks,
        );
        tasks.spawn(forget_idle_senders(Arc::clone(&live), shutdown));
        Ok(Self {
            peers: Peers::new(store.clone()),
            users: Arc::new(KnownUsers::new(store.clone())),
            store,
            hub,
            commits,
            presence,
            live,
            write_timeout,
            metrics,
        })
    }

    /// Checks, stores and fans out one message; answers after the commit, or `unavailable` once
    /// `database.write_timeout` passed without one. A `client_id` already stored answers the stored
    /// message with `created: false` and stores nothing. `socket` is the socket that sent it, which
    /// hears `message_sent` from this answer rather than from the hub, and whose messages are stored
    /// in the order it sent them.
    pub async fn send(
        &self,
        from: UserId,
        to: UserId,
        text: &str,
        client_id: Option<String>,
        socket: Option<FromSocket>,
    ) -> Result<Stored, ChatError> {
        let outcome = self.try_send(from, to, text, client_id, socket).await;
        match &outcome {
            Ok(_) => self.peers.record(from, to),
            Err(error) => self.metrics.message_rejected(error.code()),
        }
        outcome
    }

    async fn try_send(
        &self,
        from: UserId,
        to: UserId,
        text: &str,
        client_id: Option<String>,
        socket: Option<FromSocket>,
    ) -> Result<Stored, ChatError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let socket = match socket {
            Some(FromSocket { connection, turn }) => {
                let queued = within(deadline, async { Ok(turn.wait().await) }).await?;
                Some((connection, queued))
            }
            None => None,
        };
        if let Some(client_id) = &client_id {
            validate_client_id(client_id)?;
        }
        if to == from {
            return Err(ChatError::InvalidRecipient);
        }
        let attempt = within(
            deadline,
            self.store_new(from, to, text, client_id.clone(), socket, deadline),
        );
        match attempt.await {
            // A retry of a message stored earlier is answered with it, even if a rule would refuse
            // the same text now (the repeat rule counts it, a reloaded rule may differ).
            Err(ChatError::Content(rejection)) => match client_id {
                Some(client_id) => {
                    let stored = self.store.message_by_client_id(from, &client_id);
                    match within(deadline, async { Ok(stored.await?) }).await? {
                        Some(message) => Ok(Stored {
                            message,
                            created: false,
                        }),
                        None => Err(rejection.into()),
                    }
                }
                None => Err(rejection.into()),
            },
            outcome => outcome,
        }
    }

    /// Messages this instance stored since it started; a retry answered with a stored one does not
    /// count.
    pub fn messages_stored(&self) -> u64 {
        self.metrics.messages_sent()
    }

    async fn store_new(
        &self,
        from: UserId,
        to: UserId,
        text: &str,
        client_id: Option<String>,
        socket: Option<(ConnectionId, oneshot::Sender<()>)>,
        deadline: tokio::time::Instant,
    ) -> Result<Stored, ChatError> {
        let (origin, queued) = socket.unzip();
        // One set of rules judges the whole message, even if a reload lands meanwhile.
        let rules = self.live.rules();
        let content = rules.content.check(text)?;
        if !self.users.exists(to).await? {
            return Err(ChatError::UnknownRecipient(to));
        }
        rules
            .repeats
            .check_and_record(from, &content, client_id.as_deref(), Instant::now())?;
        let message = NewMessage {
            from_id: from,
            to_id: to,
            content,
            client_id,
            timestamp: now(),
        };
        match self.commits.write(message, origin, queued, deadline).await {
            Ok(stored) => Ok(stored),
            // A row of its own failed: most likely a user deleted behind the cache's back.
            Err(WriteError::Refused) => {
                self.users.forget(from);
                self.users.forget(to);
                if !self.users.exists(to).await? {
                    return Err(ChatError::UnknownRecipient(to));
                }
                Err(WriteError::Refused.into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// `work`, or `TimedOut` once `database.write_timeout` passed.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, ChatError>>,
    ) -> Result<T, ChatError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        within(deadline, work).await
    }

    /// The recipient marks one message seen; the sender's connections and the recipient's other ones
    /// hear of it.
    pub async fn mark_seen(
        &self,
        reader: UserId,
        id: MessageId,
        origin: Option<ConnectionId>,
    ) -> Result<(), ChatError> {
        self.bounded(async {
            let seen_at = now();
            match self.store.mark_seen(reader, id, seen_at).await? {
                Some(receipt) => {
                    self.announce_seen(&[receipt], seen_at, origin);
                    Ok(())
                }
                None => match self.store.message(id).await? {
                    Some(message) if message.to_id == reader => Ok(()),
                    _ => Err(ChatError::Forbidden),
                },
            }
        })
        .await
    }

    /// The reader marks every message from `peer` up to `up_to` seen; answers how many changed.
    pub async fn mark_seen_up_to(
        &self,
        reader: UserId,
        peer: UserId,
        up_to: MessageId,
    ) -> Result<usize, ChatError> {
        self.bounded(async {
            let seen_at = now();
            let receipts = self
                .store
                .mark_seen_up_to(reader, peer, up_to, seen_at)
                .await?;
            self.announce_seen(&receipts, seen_at, None);
            Ok(receipts.len())
        })
        .await
    }

    /// A message seen is delivered too: its sender hears `message_delivered` first when marking it
    /// seen delivered it.
    fn announce_seen(
        &self,
        receipts: &[SeenReceipt],
        seen_at: sqlx::types::time::OffsetDateTime,
        origin: Option<ConnectionId>,
    ) {
        let delivered = receipts.iter().filter(|seen| seen.delivered_now).count();
        self.metrics.messages_delivered(delivered);
        self.metrics.messages_seen(receipts.len());
        for SeenReceipt {
            receipt,
            delivered_now,
        } in receipts
        {
            if *delivered_now {
                let delivered = ServerEvent::MessageDelivered {
                    message_id: receipt.id,
                    delivered_at: seen_at,
                };
                self.hub
                    .send_to_user(receipt.from_id, &delivered.to_outbound());
            }
            let event = ServerEvent::MessageSeen {
                message_id: receipt.id,
                seen_at,
            }
            .to_outbound();
            self.hub.send_to_user(receipt.from_id, &event);
            self.hub.send_to_user_except(receipt.to_id, origin, &event);
        }
    }

    /// Forwards a typing notice to `to` when they share a conversation with `from`; never stored.
    /// A notice to anyone else (a stranger, an id nobody has) is dropped without an answer, as is
    /// one whose check the database could not answer in time: the sender hears the same silence
    /// whether the target exists, is online or shares nothing, so typing tells a client probing
    /// ids nothing, and a typing indicator is worth no error frame.
    pub async fn typing(&self, from: UserId, to: UserId) -> Result<(), ChatError> {
        if from == to {
            return Err(ChatError::InvalidRecipient);
        }
        // Nobody to tell: no need to ask who they are.
        if !self.hub.reaches(to, None) {
            return Ok(());
        }
        let shared = self
            .bounded(async { Ok(self.peers.share_conversation(from, to).await?) })
            .await;
        match shared {
            Ok(true) => {
                self.hub
                    .send_to_user(to, &ServerEvent::Typing { from }.to_outbound());
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, from, "a typing notice was dropped"),
        }
        Ok(())
    }

    /// Holds a place in the hub for a socket of `user` in `session`, before its upgrade is
    /// answered: refused when the user holds `limits.max_connections_per_user` places already, or
    /// the session has ended.
    pub fn reserve(&self, user: UserId, session: &SessionId) -> Result<Slot, Refusal> {
        self.hub.reserve(user, session)
    }

    /// Registers the socket `handle` in the place `slot` held for it; the user's peers hear of them
    /// if it is their first. The socket stays registered until the answer is dropped. Refused when
    /// the session ended while the socket was being upgraded.
    pub fn connect(&self, slot: Slot, handle: ConnectionHandle) -> Result<Registration, Refusal> {
        let (user, connection) = (handle.user_id, handle.id);
        if slot.register(handle)? {
            self.presence.changed(user);
        }
        self.metrics.websocket_opened();
        Ok(Registration {
            hub: Arc::clone(&self.hub),
            presence: self.presence.clone(),
            user,
            connection,
        })
    }

    /// Messages to `user` still undelivered, oldest first, after `after`.
    pub async fn backlog(
        &self,
        user: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Message>, ChatError> {
        self.bounded(async { Ok(self.store.undelivered(user, after, limit).await?) })
            .await
    }

    /// Records that a `new_message` frame reached one of the recipient's sockets.
    pub fn delivered(&self, id: MessageId) {
        self.commits.delivered(id);
    }
}

/// `work`, or `TimedOut` at `deadline`.
async fn within<T>(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T, ChatError>>,
) -> Result<T, ChatError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(ChatError::TimedOut))
}

/// Keeps the repeat rule's memory to the users who sent something within its window.
async fn forget_idle_senders(live: Arc<Live>, shutdown: CancellationToken) {
    let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every_minute.tick() => live.rules().repeats.prune(Instant::now()),
            () = shutdown.cancelled() => return,
        }
    }
}

fn validate_client_id(client_id: &str) -> Result<(), ChatError> {
    let length = client_id.chars().count();
    if length == 0 || length > MAX_CLIENT_ID_CHARS {
        return Err(ChatError::InvalidField(format!(
            "client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters long"
        )));
    }
    if client_id.chars().any(char::is_control) {
        return Err(ChatError::InvalidField(
            "client_id must not contain control characters".into(),
        ));
    }
    Ok(())
}
