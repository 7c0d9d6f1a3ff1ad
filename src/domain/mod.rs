//! Chat rules and the values they speak about. No I/O here: the store and the transports depend on
//! this module, never the other way round.

pub mod content;
pub mod repeat;
pub mod selection;
pub mod visible;

use serde::Serialize;
use sqlx::types::time::OffsetDateTime;

pub type UserId = i64;
pub type MessageId = i64;

/// A session: one sign-in and every token pair refreshed from it (its refresh-token family). Access
/// tokens carry it, and so does every socket opened with one, so that ending the session (logout,
/// a detected refresh-token reuse, `admin kick --revoke`) can close exactly its sockets. Opaque and
/// random; it grants nothing by itself, yet is never logged or shown to clients.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(std::sync::Arc<str>);

impl SessionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionId {
    fn from(id: String) -> Self {
        Self(id.into())
    }
}

impl From<&str> for SessionId {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// The longest idempotency key a client may attach to a message.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// The current time at the database's precision (microseconds), so that what teachlyd answers with is
/// exactly what a later read returns.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// `at` as the same instant in UTC.
pub fn in_utc(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(time::UtcOffset::UTC)
}

/// `at` in RFC 3339, as clients and operators read times.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// A stored message, as clients see it (SPEC §4 "Message object").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    pub id: MessageId,
    pub from_id: UserId,
    pub to_id: UserId,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub seen_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
}

/// A user as the store holds them; what leaves the process is `PublicUser` or `Me`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub google_id: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub email: Option<String>,
    pub last_seen_at: Option<OffsetDateTime>,
}

/// Someone else, as any signed-in user may see them: never their Google id or email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicUser {
    pub id: UserId,
    pub name: String,
    pub avatar_url: Option<String>,
    pub online: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<OffsetDateTime>,
}

/// The caller themselves (`GET /users/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub user: PublicUser,
    pub google_id: String,
    pub email: Option<String>,
}

impl User {
    pub fn public(&self, online: bool) -> PublicUser {
        PublicUser {
            id: self.id,
            name: self.name.clone(),
            avatar_url: self.avatar_url.clone(),
            online,
            last_seen_at: self.last_seen_at,
        }
    }

    pub fn me(&self, online: bool) -> Me {
        Me {
            user: self.public(online),
            google_id: self.google_id.clone(),
            email: self.email.clone(),
        }
    }
}

/// A message accepted by every check, waiting to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub from_id: UserId,
    pub to_id: UserId,
    pub content: String,
    pub client_id: Option<String>,
    pub timestamp: OffsetDateTime,
}

impl NewMessage {
    /// The message as it reads once committed under `id`.
    pub fn stored_as(self, id: MessageId) -> Message {
        Message {
            id,
            from_id: self.from_id,
            to_id: self.to_id,
            content: self.content,
            timestamp: self.timestamp,
            delivered_at: None,
            seen_at: None,
            client_id: self.client_id,
        }
    }
}

/// What committing a `NewMessage` came to: a new row, or the row an earlier send with the same
/// `(from_id, client_id)` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub message: Message,
    pub created: bool,
}

/// A receipt that changed a row, and so must reach the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Receipt {
    pub id: MessageId,
    pub from_id: UserId,
    pub to_id: UserId,
}
