//! The running service: everything a request handler or a socket task may reach, and the lifecycle
//! that starts and stops it. The same `start` runs in production and in tests.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Auth,
    chat::Chat,
    config::{Config, ConfigError},
    hub::{CloseCode, Hub},
    store::{KnownUsers, Store, StoreError},
};

/// How long shutdown waits for the database after the grace ran out, whatever the database does.
const DATABASE_CLOSE_LIMIT: Duration = Duration::from_secs(4);

pub struct App {
    pub config: Config,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub chat: Chat,
    pub auth: Auth,
    pub started_at: Instant,
    /// Fires when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them.
    pub sockets: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Database(#[source] StoreError),
    #[error("cannot apply migrations: {0}")]
    Migration(#[source] StoreError),
    #[error(
        "the database has {0} pending migration(s) and database.auto_migrate is false; run `teachlyd migrate`"
    )]
    PendingMigrations(usize),
    #[error("cannot read the listening address: {0}")]
    Listener(#[source] std::io::Error),
}

/// A server that is up: its address, and the way to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    background: TaskTracker,
    http: tokio::task::JoinHandle<()>,
}

/// Connections the kernel holds for the server before it accepts them. The default (128 with std's
/// `bind`) overflows when thousands of clients reconnect at once, and each one that overflowed waits
/// out TCP's one-second retry; the kernel still caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A listener on `addr` with room for a reconnect storm in its accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Opens the database, migrates, and serves HTTP and WebSocket on `listener` until `stop`.
pub async fn start(config: Config, listener: TcpListener) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    // Accepted sockets inherit this on Linux. Without it, a sender waiting for `message_sent` right
    // after a small receipt frame waits out the client's delayed ACK (~40 ms) under Nagle.
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .map_err(StartError::Listener)?;
    let store = Store::connect(
        &config.database.url,
        config.database.max_connections,
        config.database.write_timeout.0,
    )
    .await
    .map_err(StartError::Database)?;
    if config.database.auto_migrate {
        store.migrate().await.map_err(StartError::Migration)?;
    } else {
        let pending = store
            .migration_status()
            .await
            .map_err(StartError::Database)?
            .iter()
            .filter(|m| !m.applied)
            .count();
        if pending > 0 {
            return Err(StartError::PendingMigrations(pending));
        }
    }
    let auth = Auth::new(&config, store.clone())?;
    let users = Arc::new(KnownUsers::new(store.clone()));
    let shutdown = CancellationToken::new();
    let background = TaskTracker::new();
    let hub = Arc::new(Hub::new(config.limits.max_connections_per_user));
    let chat = Chat::start(
        &config,
        store.clone(),
        Arc::clone(&hub),
        users,
        shutdown.child_token(),
        &background,
    )
    .await
    .map_err(StartError::Database)?;
    let app = Arc::new(App {
        config,
        store,
        hub,
        chat,
        auth,
        started_at: Instant::now(),
        shutdown: shutdown.clone(),
        sockets: TaskTracker::new(),
    });
    let routes = crate::http::routes(Arc::clone(&app));
    let graceful = shutdown.clone().cancelled_owned();
    let http = tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(graceful)
            .run()
            .await;
    });
    tracing::info!(%addr, database = app.store.backend_name(), "teachlyd is serving");
    Ok(RunningServer {
        addr,
        app,
        background,
        http,
    })
}

impl RunningServer {
    /// Stops accepting, closes every socket with 1001 (each answers what it already sent first),
    /// commits what was accepted, and closes the database. Returns within `server.shutdown_grace`
    /// plus a few seconds whatever the database does: work still waiting on it then is abandoned,
    /// and nothing of it was acknowledged.
    pub async fn stop(self) {
        let grace = self.app.config.server.shutdown_grace.0;
        self.app.shutdown.cancel();
        self.app.hub.close_all(CloseCode::GoingAway);
        self.app.sockets.close();
        self.background.close();
        let drained = async {
            let _ = self.http.await;
            self.app.sockets.wait().await;
            self.background.wait().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                ?grace,
                "shutdown grace ran out; stopping with work in flight"
            );
        }
        if tokio::time::timeout(DATABASE_CLOSE_LIMIT, self.app.store.close())
            .await
            .is_err()
        {
            tracing::warn!("the database did not close in time; leaving it");
        }
        tracing::info!("teachlyd stopped");
    }
}
