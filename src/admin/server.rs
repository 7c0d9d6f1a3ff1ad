//! The daemon's end of the admin socket.

use std::{
    io::ErrorKind,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    sys::socket::{UnixCredentials, getsockopt, sockopt::PeerCredentials},
    unistd::{Gid, Group, Uid, User},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{Connection, Kicked, MAX_REQUEST_BYTES, Reply, Request, Stats};
use crate::{app::App, hub::CloseCode};

/// An admin connection that sends nothing for this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// The bound admin socket; the file is removed when the server stops.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    group: Option<Gid>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another teachlyd answers on the admin socket {0}; stop it first, or give this one another admin.socket"
    )]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket; teachlyd never removes it: move it away or change admin.socket"
    )]
    NotASocket(PathBuf),
    #[error("admin.group `{0}` is not a group on this machine")]
    UnknownGroup(String),
    #[error("cannot create the admin socket {path}: {reason}; fix that, or change admin.socket")]
    Io { path: PathBuf, reason: String },
}

impl AdminSocket {
    /// Creates the socket with mode 0660 (group `group` when set). A socket file left by a daemon
    /// that died is replaced; one a live daemon answers on is an error, and so is any other file.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<Self, BindError> {
        let io = |error: std::io::Error| BindError::Io {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        let group = match group {
            Some(name) => match Group::from_name(name) {
                Ok(Some(group)) => Some(group.gid),
                _ => return Err(BindError::UnknownGroup(name.to_owned())),
            },
            None => None,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
                    Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                        tracing::info!(path = %path.display(), "replacing a stale admin socket");
                        std::fs::remove_file(path).map_err(io)?;
                    }
                    Err(error) => return Err(io(error)),
                }
            }
            Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        // Until these two calls the file has the umask's mode, which never grants write (connect)
        // to others than the owner; and every peer is checked on accept anyway.
        let restrict = || -> Result<(), BindError> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
            if let Some(gid) = group {
                nix::unistd::chown(path, None, Some(gid)).map_err(|errno| BindError::Io {
                    path: path.to_path_buf(),
                    reason: format!(
                        "cannot give it to admin.group: {errno} (teachlyd's user must be a member of it)"
                    ),
                })?;
            }
            Ok(())
        };
        if let Err(error) = restrict() {
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            group,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Answers admin connections until the server shuts down, then removes the socket file.
pub async fn serve(socket: AdminSocket, app: Arc<App>) {
    tracing::info!(path = %socket.path.display(), "admin socket ready");
    loop {
        let stream = tokio::select! {
            () = app.shutdown.cancelled() => break,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept an admin connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = Arc::clone(&app);
        let group = socket.group;
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &app, group).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
    if let Err(error) = std::fs::remove_file(&socket.path) {
        tracing::warn!(path = %socket.path.display(), %error, "cannot remove the admin socket");
    }
}

async fn answer(stream: UnixStream, app: &App, group: Option<Gid>) -> std::io::Result<()> {
    let credentials = getsockopt(&stream, PeerCredentials).map_err(std::io::Error::from)?;
    let (reader, mut writer) = stream.into_split();
    if let Err(refusal) = permitted(&credentials, group) {
        tracing::warn!(
            uid = credentials.uid(),
            pid = credentials.pid(),
            "refused an admin connection"
        );
        return write_reply(&mut writer, &Reply::Refused(refusal)).await;
    }
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let mut bounded = (&mut reader).take(limit);
        let read = tokio::time::timeout(IDLE_LIMIT, bounded.read_until(b'\n', &mut line));
        match read.await {
            Err(_) | Ok(Ok(0)) => return Ok(()),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(_)) => {}
        }
        if line.len() > MAX_REQUEST_BYTES {
            let reply = Reply::Error(format!(
                "a request is one line of at most {MAX_REQUEST_BYTES} bytes"
            ));
            return write_reply(&mut writer, &reply).await;
        }
        let reply = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => run(request, app, credentials.uid()).await,
            Err(error) => Reply::Error(format!(
                "not a request: {error}; send {{\"command\": \"connections\"}}, \
                 {{\"command\": \"stats\"}} or {{\"command\": \"kick\", \"user_id\": N}}"
            )),
        };
        write_reply(&mut writer, &reply).await?;
    }
}

async fn write_reply(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

/// Root, the daemon's own user, and members of `admin.group` (by primary or supplementary group).
fn permitted(peer: &UnixCredentials, group: Option<Gid>) -> Result<(), String> {
    let uid = Uid::from_raw(peer.uid());
    if uid.is_root() || uid == Uid::effective() {
        return Ok(());
    }
    if let Some(gid) = group {
        // Looked up at each connection, so a user added to the group needs no restart.
        let user = User::from_uid(uid).ok().flatten();
        let member = Gid::from_raw(peer.gid()) == gid
            || user.as_ref().is_some_and(|user| user.gid == gid)
            || Group::from_gid(gid)
                .ok()
                .flatten()
                .zip(user.as_ref())
                .is_some_and(|(group, user)| group.mem.contains(&user.name));
        if member {
            return Ok(());
        }
    }
    Err(format!(
        "permission denied: uid {} may not use the admin socket; only root, teachlyd's own user and \
         members of admin.group may",
        peer.uid()
    ))
}

async fn run(request: Request, app: &App, peer_uid: u32) -> Reply {
    let outcome = tokio::time::timeout(app.config.database.write_timeout.0, async {
        match request {
            Request::Connections => connections(app).await.map(Reply::Connections),
            Request::Stats => Ok(Reply::Stats(stats(app))),
            Request::Kick { user_id, revoke } => {
                kick(app, user_id, revoke, peer_uid).await.map(Reply::Kick)
            }
        }
    });
    match outcome.await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::Error(error),
        Err(_) => Reply::Error("the database did not answer in time".to_owned()),
    }
}

async fn connections(app: &App) -> Result<Vec<Connection>, String> {
    let mut handles = app.hub.connections();
    handles.sort_by_key(|handle| (handle.connected_at, handle.id));
    let mut ids: Vec<_> = handles.iter().map(|handle| handle.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names: std::collections::HashMap<_, _> = app
        .store
        .users(&ids)
        .await
        .map_err(|error| format!("cannot read the users' names: {error}"))?
        .into_iter()
        .map(|user| (user.id, user.name))
        .collect();
    Ok(handles
        .into_iter()
        .map(|handle| Connection {
            connection_id: handle.id,
            user_id: handle.user_id,
            user_name: names.get(&handle.user_id).cloned(),
            remote_addr: handle.arrival.remote,
            path: handle.arrival.path.clone(),
            connected_at: handle.connected_at,
            queue_depth: handle.queue_depth(),
        })
        .collect())
}

fn stats(app: &App) -> Stats {
    Stats {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: app.started.at,
        uptime_seconds: app.started.instant.elapsed().as_secs(),
        connections: app.hub.connection_count(),
        online_users: app.hub.online_user_count(),
        messages_since_start: app.chat.messages_stored(),
        database: app.store.backend_name().to_owned(),
    }
}

async fn kick(app: &App, user: i64, revoke: bool, peer_uid: u32) -> Result<Kicked, String> {
    if user < 1 {
        return Err(format!("{user} is not a user id; ids start at 1"));
    }
    let exists = app
        .store
        .user_exists(user)
        .await
        .map_err(|error| format!("cannot look the user up: {error}"))?;
    if !exists {
        return Err(format!("there is no user {user}"));
    }
    // Revoked first: a client that reconnects at once must not refresh its way back in, and its
    // access tokens open no socket and answer no request from now on.
    let refresh_tokens_revoked = if revoke {
        let revoked = app
            .auth
            .end_sessions_of(user)
            .await
            .map_err(|error| format!("cannot revoke the refresh tokens: {error}"))?;
        Some(revoked)
    } else {
        None
    };
    let sockets_closed = app.hub.close_user(user, CloseCode::Kicked);
    tracing::info!(
        user,
        sockets_closed,
        refresh_tokens_revoked,
        by_uid = peer_uid,
        "admin kick"
    );
    Ok(Kicked {
        user_id: user,
        sockets_closed,
        refresh_tokens_revoked,
    })
}
