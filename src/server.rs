//! Start-up and shutdown: the listeners (bound by the caller), the database and its migrations, the
//! state of `app`, the HTTP accept loop with the routes of `http` and `ws` behind `http::front`, and
//! the admin socket. The same `start` runs in production and in tests.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::AdminSocket,
    app::{App, Started},
    auth::Auth,
    chat::Chat,
    config::{Config, ConfigError},
    http::{
        self,
        allow::Methods,
        caps::{ConnectionCaps, ConnectionSlot},
        client_ip::TrustedProxies,
        front::Front,
    },
    hub::{CloseCode, Hub},
    live::Live,
    metrics::Metrics,
    store::{Store, StoreError},
};

/// How long shutdown waits for the database after the grace ran out, whatever the database does.
const DATABASE_CLOSE_LIMIT: Duration = Duration::from_secs(4);
/// A failed accept (out of file descriptors, most likely) is retried after this pause rather
/// than at once, which would spin a core while nothing can be accepted anyway.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

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

/// What the server listens on, bound before it starts so that a port or socket in use is
/// reported before anything else happens.
pub struct Listeners {
    pub http: TcpListener,
    pub admin: Option<AdminSocket>,
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

/// Opens the database, migrates, and serves HTTP, WebSocket and the admin socket until `stop`.
pub async fn start(config: Config, listeners: Listeners) -> Result<RunningServer, StartError> {
    let Listeners {
        http: listener,
        admin,
    } = listeners;
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    // Accepted sockets inherit this on Linux. Without it, a sender waiting for `message_sent` right
    // after a small receipt frame waits out the client's delayed ACK (~40 ms) under Nagle.
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .map_err(StartError::Listener)?;
    let store = open_migrated(&config).await?;
    let hub = Arc::new(Hub::new(
        config.limits.max_connections_per_user,
        config.auth.access_token_ttl.0,
    ));
    let auth = Auth::new(&config, store.clone(), Arc::clone(&hub))?;
    let shutdown = CancellationToken::new();
    let background = TaskTracker::new();
    let live = Arc::new(Live::new(&config));
    let metrics = Arc::new(Metrics::new());
    let chat = Chat::start(
        &config,
        store.clone(),
        Arc::clone(&hub),
        Arc::clone(&live),
        Arc::clone(&metrics),
        shutdown.child_token(),
        &background,
    )
    .await
    .map_err(StartError::Database)?;
    let document = http::docs::document(&config);
    let methods = Arc::new(Methods::new(&document, &http::docs::PAGES));
    let app = Arc::new(App {
        config,
        live: Arc::clone(&live),
        store,
        hub,
        chat,
        auth,
        metrics,
        started: Started::now(),
        shutdown: shutdown.clone(),
        sockets: TaskTracker::new(),
    });
    let trusted = Arc::new(TrustedProxies::new(app.config.trusted_proxies()?));
    let caps = ConnectionCaps::new(
        app.config.limits.max_connections,
        app.config.limits.max_connections_per_ip,
        TrustedProxies::clone(&trusted),
    );
    let header_timeout = app.config.server.header_timeout.0;
    let routes = http::routes(
        Arc::clone(&app),
        document,
        Arc::clone(&methods),
        app.config.metrics_allow()?,
    );
    let front = Front::new(routes, methods, Arc::clone(&app), trusted);
    let http = tokio::spawn(serve_http(
        listener,
        front,
        caps,
        header_timeout,
        shutdown.clone(),
    ));
    if let Some(admin) = admin {
        background.spawn(crate::admin::serve(admin, Arc::clone(&app)));
    }
    tracing::info!(%addr, database = app.store.backend_name(), "teachlyd is serving");
    Ok(RunningServer {
        addr,
        app,
        background,
        http,
    })
}

async fn open_migrated(config: &Config) -> Result<Store, StartError> {
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
    Ok(store)
}

/// Accepts HTTP connections until `shutdown`, then waits for the requests in progress. An upgraded
/// WebSocket leaves the HTTP connection it came from, so it is not waited for here (see `stop`).
/// Each connection holds a slot of `caps` for as long as it (or its WebSocket) is open; a client
/// that does not send a whole request head within `header_timeout` is disconnected.
async fn serve_http(
    listener: TcpListener,
    front: Front,
    caps: Arc<ConnectionCaps>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let room = tokio::select! {
            () = shutdown.cancelled() => break,
            room = caps.room() => room,
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let Some(slot) = caps.admit(room, peer.ip()) else {
            tracing::debug!(%peer, "refused a connection: its address holds limits.max_connections_per_ip");
            drop(stream);
            continue;
        };
        let front = front.clone();
        let service = hyper::service::service_fn(move |request| {
            let front = front.clone();
            let slot: ConnectionSlot = slot.clone();
            async move {
                Ok::<_, std::convert::Infallible>(front.handle(peer, Some(slot), request).await)
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = connections.watch(connection.into_owned());
        tokio::spawn(async move {
            // A client that hangs up mid-request, or sends what is not HTTP, is its own business.
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
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
