use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{app, cli::ServeArgs, config::Config};

use super::{CommandError, load_config, systemd};

/// Runs the server until SIGTERM or SIGINT; SIGHUP reads the configuration file again.
pub async fn run(args: &ServeArgs) -> Result<(), CommandError> {
    let config = effective_config(args)?;
    crate::telemetry::init(&config.log);
    let addr = config.listen_addr()?;
    let listener = app::bind(addr).map_err(|error| {
        CommandError::Runtime(format!(
            "cannot listen on {addr}: {error}; change server.listen (TEACHLYD_LISTEN) or --listen"
        ))
    })?;
    let mut signals = Signals::watch()?;
    let server = app::start(config.clone(), listener).await?;
    systemd::ready(&server.app);
    let reporting = CancellationToken::new();
    let reporter = tokio::spawn(systemd::keep_reporting(
        Arc::clone(&server.app),
        reporting.clone(),
    ));
    let mut running = config;
    while signals.next().await == Received::Reload {
        systemd::reloading();
        running = reload(args, running);
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

/// Reads the configuration again and applies what can change while serving: today the log level.
/// Every other changed key is named as needing a restart. A configuration that does not load or
/// validate is reported and the running one kept.
fn reload(args: &ServeArgs, running: Config) -> Config {
    let newer = match effective_config(args) {
        Ok(newer) => newer,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the configuration did not load; keeping the running one");
            return running;
        }
    };
    let mut changed = running.changed_keys(&newer);
    if running.log.level != newer.log.level {
        match crate::telemetry::set_level(&newer.log.level) {
            Ok(()) => tracing::info!(level = %newer.log.level, "SIGHUP: log.level changed"),
            Err(error) => tracing::error!(%error, "SIGHUP: log.level could not change"),
        }
        changed.retain(|key| key != "log.level");
    }
    if changed.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded");
    } else {
        tracing::warn!(
            keys = %changed.join(", "),
            "SIGHUP: configuration reloaded; these changes take effect at the next restart"
        );
    }
    // What runs keeps the values it started with, except those applied above: the next SIGHUP
    // names the same keys again until a restart.
    let mut kept = running;
    kept.log.level = newer.log.level;
    kept
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
