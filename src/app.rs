//! The running service's shared state: everything a request handler, a socket task or the admin
//! socket may reach. `server` assembles it and runs it.

use std::{sync::Arc, time::Instant};

use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Auth, chat::Chat, config::Config, hub::Hub, live::Live, metrics::Metrics, store::Store,
};

pub struct App {
    /// The configuration the server started with; what SIGHUP changes lives in `live`.
    pub config: Config,
    pub live: Arc<Live>,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub chat: Chat,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub started: Started,
    /// Fires when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them.
    pub sockets: TaskTracker,
}

/// When the server started, on both clocks: the wall clock to show, the monotonic one to measure.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub at: OffsetDateTime,
    pub instant: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            at: OffsetDateTime::now_utc(),
            instant: Instant::now(),
        }
    }
}
