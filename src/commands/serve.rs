use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{app, cli::ServeArgs};

use super::{CommandError, load_config, systemd};

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: &ServeArgs) -> Result<(), CommandError> {
    let (mut config, _) = load_config(&args.file)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen.to_string();
        config.validate()?;
    }
    crate::telemetry::init(&config.log);
    let addr = config.listen_addr()?;
    let listener = app::bind(addr).map_err(|error| {
        CommandError::Runtime(format!(
            "cannot listen on {addr}: {error}; change server.listen (TEACHLYD_LISTEN) or --listen"
        ))
    })?;
    let server = app::start(config, listener).await?;
    systemd::ready(&server.app);
    let reporting = CancellationToken::new();
    let reporter = tokio::spawn(systemd::keep_reporting(
        Arc::clone(&server.app),
        reporting.clone(),
    ));
    wait_for_stop_signal().await?;
    // The last status line comes before STOPPING=1, never after it.
    reporting.cancel();
    let _ = reporter.await;
    systemd::stopping();
    tracing::info!("stopping: closing sockets and finishing writes");
    server.stop().await;
    Ok(())
}

async fn wait_for_stop_signal() -> Result<(), CommandError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CommandError::Runtime(format!("cannot watch SIGTERM: {error}")))?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
