//! The admin socket (SPEC §8): newline-delimited JSON over a Unix socket, one request line and one
//! reply line at a time, for `teachlyd admin`. Only root, the daemon's own user and members of
//! `admin.group` are answered (SO_PEERCRED).
//!
//! A request is `{"command": "connections"}`, `{"command": "stats"}` or
//! `{"command": "kick", "user_id": 7, "revoke": true}`; the reply is an object with one key:
//! `connections`, `stats`, `kick`, `refused` (not permitted) or `error`.

pub mod client;
mod server;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use server::{AdminSocket, BindError, serve};

use crate::domain::UserId;

/// The longest request line the daemon reads; the real ones are a few dozen bytes.
const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Connections,
    Stats,
    Kick {
        user_id: UserId,
        #[serde(default)]
        revoke: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Connections(Vec<Connection>),
    Stats(Stats),
    Kick(Kicked),
    /// The peer may not use the admin socket.
    Refused(String),
    Error(String),
}

/// One live WebSocket of this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: u64,
    pub user_id: UserId,
    /// `None` when the user was deleted while connected.
    pub user_name: Option<String>,
    pub remote_addr: Option<SocketAddr>,
    pub path: String,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
    /// Events queued for the socket and not yet written.
    pub queue_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub uptime_seconds: u64,
    pub connections: usize,
    pub online_users: usize,
    /// Messages this instance stored since it started (retries of a stored message not counted).
    pub messages_since_start: u64,
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kicked {
    pub user_id: UserId,
    pub sockets_closed: usize,
    /// `None` without `--revoke`.
    pub refresh_tokens_revoked: Option<u64>,
}
