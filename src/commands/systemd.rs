//! What `serve` tells systemd through `$NOTIFY_SOCKET` (sd_notify): `READY=1` once it serves,
//! `STATUS=` lines with what it serves, `WATCHDOG=1` while it is alive when the unit sets
//! `WatchdogSec`, and `STOPPING=1` when it stops. Without `NOTIFY_SOCKET` every call does nothing.

use std::{sync::Arc, time::Duration};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// How often the status line is renewed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The listener is bound and the migrations are done.
pub fn ready(app: &App) {
    send(&[NotifyState::Ready, NotifyState::Status(&status(app))]);
}

/// A SIGHUP is being handled; `ready` follows once it is.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => tracing::warn!(%error, "cannot read the monotonic clock for RELOADING=1"),
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: closing sockets and finishing writes"),
    ]);
}

/// Renews the status line, and pets the watchdog at half its interval when one is set, until `stop`.
/// It runs on the server's runtime, so a runtime that stops making progress stops the pets too.
pub async fn keep_reporting(app: Arc<App>, stop: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |interval| (interval / 2).min(STATUS_EVERY));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let status = status(&app);
        match watchdog {
            Some(_) => send(&[NotifyState::Watchdog, NotifyState::Status(&status)]),
            None => send(&[NotifyState::Status(&status)]),
        }
    }
}

fn status(app: &App) -> String {
    format!(
        "serving {} connections of {} users",
        app.hub.connection_count(),
        app.hub.online_user_count()
    )
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
