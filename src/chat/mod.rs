//! The chat service: what both transports (REST and WebSocket) do with a message, a receipt or a
//! connection. It applies the domain's rules, writes through the group-commit writer and reaches
//! sockets only through the hub.

mod batch;
pub mod events;
mod receipts;
mod writer;

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
    time::Instant,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use events::ServerEvent;
pub use receipts::DeliveryRecorder;
pub use writer::{MAX_BATCH, MessageWriter, WriteError, WriterStats};

use crate::{
    config::Config,
    domain::{
        MAX_CLIENT_ID_CHARS, Message, MessageId, NewMessage, Receipt, Stored, UserId,
        content::{ContentChecker, ContentRejection, ContentRules},
        now,
        repeat::RepeatGuard,
    },
    hub::{ConnectionHandle, ConnectionId, Hub, TooManyConnections},
    store::{Store, StoreError},
};

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
            ChatError::Write(_) | ChatError::Store(_) => "internal",
        }
    }
}

pub struct Chat {
    store: Store,
    hub: Arc<Hub>,
    writer: MessageWriter,
    deliveries: DeliveryRecorder,
    checker: ContentChecker,
    repeats: Arc<RepeatGuard>,
    known_users: RwLock<HashSet<UserId>>,
}

pub fn content_rules(config: &Config) -> ContentRules {
    ContentRules {
        max_message_chars: config.limits.max_message_chars,
        blocked_domains: config.urls.blocked_domains.clone(),
        max_repeated_chars: config.spam.max_repeated_chars,
        max_urls: config.spam.max_urls,
        blocked_words: config.spam.blocked_words.clone(),
    }
}

impl Chat {
    /// Starts the writer and the delivery recorder; both finish their queued work when `shutdown`
    /// fires, and `tasks` lets the caller wait for that.
    pub fn start(
        config: &Config,
        store: Store,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let writer = MessageWriter::start(store.clone(), Arc::clone(&hub), shutdown.clone(), tasks);
        let deliveries =
            DeliveryRecorder::start(store.clone(), Arc::clone(&hub), shutdown.clone(), tasks);
        let repeats = Arc::new(RepeatGuard::new(
            config.spam.duplicate_limit,
            config.spam.duplicate_window.0,
        ));
        tasks.spawn(forget_idle_senders(Arc::clone(&repeats), shutdown));
        Self {
            store,
            hub,
            writer,
            deliveries,
            checker: ContentChecker::new(content_rules(config)),
            repeats,
            known_users: RwLock::new(HashSet::new()),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn writer_stats(&self) -> &WriterStats {
        &self.writer.stats
    }

    /// Checks, stores and fans out one message. Answers after the commit; a retry of a `client_id`
    /// already stored answers the stored message with `created: false` and stores nothing.
    pub async fn send(
        &self,
        from: UserId,
        to: UserId,
        text: &str,
        client_id: Option<String>,
    ) -> Result<Stored, ChatError> {
        if let Some(client_id) = &client_id {
            validate_client_id(client_id)?;
            if let Some(message) = self.store.message_by_client_id(from, client_id).await? {
                return Ok(Stored {
                    message,
                    created: false,
                });
            }
        }
        if to == from {
            return Err(ChatError::InvalidRecipient);
        }
        let content = self.checker.check(text)?;
        self.ensure_user_exists(to).await?;
        self.repeats
            .check_and_record(from, &content, client_id.as_deref(), Instant::now())?;
        let stored = self
            .writer
            .write(NewMessage {
                from_id: from,
                to_id: to,
                content,
                client_id,
                timestamp: now(),
            })
            .await?;
        Ok(stored)
    }

    async fn ensure_user_exists(&self, id: UserId) -> Result<(), ChatError> {
        let known = self
            .known_users
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&id);
        if known {
            return Ok(());
        }
        // Users are never deleted while the daemon runs, so a positive answer can be kept.
        if id > 0 && self.store.user_exists(id).await? {
            self.known_users
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(id);
            return Ok(());
        }
        Err(ChatError::UnknownRecipient(id))
    }

    /// The recipient marks one message seen; the sender's connections and the recipient's other ones
    /// hear of it.
    pub async fn mark_seen(
        &self,
        reader: UserId,
        id: MessageId,
        origin: Option<ConnectionId>,
    ) -> Result<(), ChatError> {
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
    }

    /// The reader marks every message from `peer` up to `up_to` seen; answers how many changed.
    pub async fn mark_seen_up_to(
        &self,
        reader: UserId,
        peer: UserId,
        up_to: MessageId,
    ) -> Result<usize, ChatError> {
        let seen_at = now();
        let receipts = self
            .store
            .mark_seen_up_to(reader, peer, up_to, seen_at)
            .await?;
        self.announce_seen(&receipts, seen_at, None);
        Ok(receipts.len())
    }

    fn announce_seen(
        &self,
        receipts: &[Receipt],
        seen_at: sqlx::types::time::OffsetDateTime,
        origin: Option<ConnectionId>,
    ) {
        for receipt in receipts {
            let event = ServerEvent::MessageSeen {
                message_id: receipt.id,
                seen_at,
            }
            .to_outbound();
            self.hub.send_to_user(receipt.from_id, &event);
            self.hub.send_to_user_except(receipt.to_id, origin, &event);
        }
    }

    /// Forwards a typing notice; never stored.
    pub fn typing(&self, from: UserId, to: UserId) -> Result<(), ChatError> {
        if from == to {
            return Err(ChatError::InvalidRecipient);
        }
        self.hub
            .send_to_user(to, &ServerEvent::Typing { from }.to_outbound());
        Ok(())
    }

    /// Registers a new socket. On the user's first one, online peers hear `user_connected`.
    pub async fn connect(&self, handle: ConnectionHandle) -> Result<(), TooManyConnections> {
        let user = handle.user_id;
        let first = self.hub.register(handle)?;
        if first {
            let event = ServerEvent::UserConnected { user_id: user }.to_outbound();
            self.tell_online_peers(user, &event).await;
        }
        Ok(())
    }

    /// Unregisters a socket. On the user's last one, `last_seen_at` is stored and online peers hear
    /// `user_disconnected`.
    pub async fn disconnect(&self, user: UserId, connection: ConnectionId) {
        if !self.hub.unregister(user, connection) {
            return;
        }
        let last_seen_at = now();
        if let Err(error) = self.store.set_last_seen(user, last_seen_at).await {
            tracing::warn!(%error, user, "storing last_seen_at failed");
        }
        let event = ServerEvent::UserDisconnected {
            user_id: user,
            last_seen_at,
        }
        .to_outbound();
        self.tell_online_peers(user, &event).await;
    }

    async fn tell_online_peers(&self, user: UserId, event: &crate::hub::Outbound) {
        match self.store.conversation_peers(user).await {
            Ok(peers) => {
                for peer in peers.into_iter().filter(|peer| *peer != user) {
                    self.hub.send_to_user(peer, event);
                }
            }
            Err(error) => tracing::warn!(%error, user, "reading conversation peers failed"),
        }
    }

    /// Messages to `user` still undelivered, oldest first, after `after`.
    pub async fn backlog(
        &self,
        user: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Message>, ChatError> {
        Ok(self.store.undelivered(user, after, limit).await?)
    }

    /// Records that a `new_message` frame reached one of the recipient's sockets.
    pub async fn delivered(&self, id: MessageId) {
        self.deliveries.written(id).await;
    }
}

/// Keeps the repeat rule's memory to the users who sent something within its window.
async fn forget_idle_senders(repeats: Arc<RepeatGuard>, shutdown: CancellationToken) {
    let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every_minute.tick() => repeats.prune(Instant::now()),
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
