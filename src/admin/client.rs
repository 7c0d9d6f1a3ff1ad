//! The `teachlyd admin` end of the admin socket.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{Reply, Request};

/// The daemon answers from memory, or after one short query; longer means it is stuck.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "teachlyd is not running with the admin socket {path} ({reason}); start it, or name its socket with admin.socket or --socket"
    )]
    NotRunning { path: PathBuf, reason: String },
    #[error(
        "permission denied on the admin socket {path}; run this as root, as teachlyd's user, or as a member of admin.group"
    )]
    PermissionDenied { path: PathBuf },
    #[error("{0}")]
    Refused(String),
    #[error("teachlyd could not do it: {0}")]
    Daemon(String),
    #[error("the admin socket {path} did not answer properly: {reason}")]
    Broken { path: PathBuf, reason: String },
}

/// Sends one request and reads its reply. A reply of `refused` or `error` is an `Err`.
pub async fn ask(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let broken = |reason: String| ClientError::Broken {
        path: path.to_path_buf(),
        reason,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|error| match error.kind() {
            ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => ClientError::NotRunning {
                path: path.to_path_buf(),
                reason: error.to_string(),
            },
        })?;
    let exchange = async {
        let (reader, mut writer) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| broken(e.to_string()))?;
        line.push(b'\n');
        // A refusing daemon may hang up before it reads the request; its reply still comes.
        let _ = writer.write_all(&line).await;
        let mut answer = String::new();
        BufReader::new(reader)
            .read_line(&mut answer)
            .await
            .map_err(|error| broken(error.to_string()))?;
        if answer.is_empty() {
            return Err(broken(
                "it closed the connection without a reply".to_owned(),
            ));
        }
        serde_json::from_str::<Reply>(&answer).map_err(|error| broken(error.to_string()))
    };
    match tokio::time::timeout(ANSWER_LIMIT, exchange).await {
        Err(_) => Err(broken(format!(
            "no reply within {} seconds",
            ANSWER_LIMIT.as_secs()
        ))),
        Ok(Ok(Reply::Refused(reason))) => Err(ClientError::Refused(reason)),
        Ok(Ok(Reply::Error(reason))) => Err(ClientError::Daemon(reason)),
        Ok(reply) => reply,
    }
}
