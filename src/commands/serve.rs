use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{AdminSocket, BindError},
    cli::ServeArgs,
    config::{Config, ConfigError, DEFAULT_ADMIN_SOCKET},
    live, server,
};

use super::{CommandError, load_config, systemd};

/// Runs the server until SIGTERM or SIGINT; SIGHUP reads the configuration file again.
pub async fn run(args: &ServeArgs) -> Result<(), CommandError> {
    let config = effective_config(args)?;
    crate::telemetry::init(&config.log);
    let addr = config.listen_addr()?;
    let listener = server::bind(addr).map_err(|error| {
        CommandError::Runtime(format!(
            "cannot listen on {addr}: {error}; change server.listen (TEACHLYD_LISTEN) or --listen"
        ))
    })?;
    let admin = bind_admin(&config)?;
    let mut signals = Signals::watch()?;
    let listeners = server::Listeners {
        http: listener,
        admin,
    };
    let server = server::start(config.clone(), listeners).await?;
    systemd::ready(&server.app);
    let reporting = CancellationToken::new();
    let reporter = tokio::spawn(systemd::keep_reporting(
        Arc::clone(&server.app),
        reporting.clone(),
    ));
    let mut running = config;
    while signals.next().await == Received::Reload {
        systemd::reloading();
        running = reload(args, running, &server.app.live);
        systemd::ready(&server.app);
    }
    // The last status line comes before STOPPING=1, never after it.
    reporting.cancel();
    let _ = reporter.await;
    systemd::stopping();
    tracing::info!("stopping: closing sockets and finishing writes");
    server.stop().await;
    Ok(())
}

/// The file, the environment and `--listen`, validated.
fn effective_config(args: &ServeArgs) -> Result<Config, CommandError> {
    let (mut config, _) = load_config(&args.file)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen.to_string();
        config.validate()?;
    }
    Ok(config)
}

/// The admin socket: `admin.socket`, or under systemd `$RUNTIME_DIRECTORY/admin.sock` when that key
/// is left at its default. Where the default's directory does not exist (a developer's machine),
/// serve runs without one; a socket path chosen explicitly must work.
fn bind_admin(config: &Config) -> Result<Option<AdminSocket>, CommandError> {
    let default = std::path::Path::new(DEFAULT_ADMIN_SOCKET);
    let runtime_directory = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| !dir.as_os_str().is_empty());
    let path = match runtime_directory {
        Some(dir) if config.admin.socket == default => dir.join("admin.sock"),
        _ => config.admin.socket.clone(),
    };
    if path == default && default.parent().is_some_and(|dir| !dir.is_dir()) {
        tracing::warn!(
            path = %path.display(),
            "no admin socket: its directory does not exist; set admin.socket to use `teachlyd admin`"
        );
        return Ok(None);
    }
    AdminSocket::bind(&path, config.admin.group.as_deref())
        .map(Some)
        .map_err(|error| match error {
            BindError::InUse(_) => CommandError::Unavailable(error.to_string()),
            BindError::UnknownGroup(_) => CommandError::Config(ConfigError::Invalid {
                key: "admin.group".into(),
                from: String::new(),
                reason: error.to_string(),
            }),
            BindError::NotASocket(_) | BindError::Io { .. } => {
                CommandError::Runtime(error.to_string())
            }
        })
}

/// Reads the configuration again and applies what can change while serving (`live::LIVE_KEYS`):
/// the log level, CORS origins, spam and URL rules. Every other changed key is named as needing a
/// restart. A configuration that does not load or validate is reported and the running one kept.
fn reload(args: &ServeArgs, running: Config, rules: &live::Live) -> Config {
    let newer = match effective_config(args) {
        Ok(newer) => newer,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the configuration did not load; keeping the running one");
            return running;
        }
    };
    let (applied, waiting): (Vec<String>, Vec<String>) = running
        .changed_keys(&newer)
        .into_iter()
        .partition(|key| live::is_live_key(key));
    if running.log.level != newer.log.level
        && let Err(error) = crate::telemetry::set_level(&newer.log.level)
    {
        tracing::error!(%error, "SIGHUP: log.level could not change");
    }
    rules.apply(&newer, running.limits.max_message_chars);
    if !applied.is_empty() {
        tracing::info!(keys = %applied.join(", "), "SIGHUP: applied");
    }
    if waiting.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded");
    } else {
        tracing::warn!(
            keys = %waiting.join(", "),
            "SIGHUP: configuration reloaded; these changes take effect at the next restart"
        );
    }
    // What runs keeps the values it started with, except the live ones: the next SIGHUP names the
    // same waiting keys again until a restart.
    live::with_live_keys(running, newer)
}

#[derive(Debug, PartialEq, Eq)]
enum Received {
    Stop,
    Reload,
}

struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Set up before the server starts, so that a SIGHUP sent as soon as it is ready never ends the
    /// process (the default action of SIGHUP).
    fn watch() -> Result<Self, CommandError> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|error| CommandError::Runtime(format!("cannot watch {name}: {error}")))
        };
        Ok(Self {
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
            hangup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.terminate.recv() => Received::Stop,
            _ = self.interrupt.recv() => Received::Stop,
            _ = self.hangup.recv() => Received::Reload,
        }
    }
}
