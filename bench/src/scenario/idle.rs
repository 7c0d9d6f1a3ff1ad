//! `idle`: many authenticated sockets opened at a steady pace and held; what each costs the server
//! in memory, how long opening one takes, and whether the server kept every one of them.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, timeout, timeout_at},
};

use super::{Context, Examples};
use crate::{
    Report,
    api::{self, CONNECT_TIMEOUT, Incoming, ServerEvent},
    cli::IdleArgs,
    ledger::Ledger,
    measure::{Cpu, Latency},
    report::{Latencies, Memory, Sockets},
};

/// What became of one socket.
#[derive(Default)]
struct Held {
    ledger: Ledger,
    closed_by_server: bool,
    unexpected: u64,
    why: Option<String>,
}

pub(crate) async fn run(context: &Context<'_>, args: &IdleArgs) -> anyhow::Result<Report> {
    let common = &context.cli.common;
    let user_count = args.sockets.div_ceil(args.per_user);
    let users = context.users("idle", user_count).await?;
    // Let the logins' work settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = context.processes.sample();

    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.sockets)
        .map(|n| {
            // Round robin over the users, so each holds at most --per-user sockets.
            let user = &users[(n % user_count) as usize];
            let url = context.recipients.socket(&user.token);
            let user_id = user.id;
            let at = started + Duration::from_secs_f64(f64::from(n) / args.ramp);
            let opened = opened_tx.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                sleep_until(at.into()).await;
                let mut held = Held::default();
                let mut socket = match api::open_until_hello(&url, user_id).await {
                    Ok((socket, took)) => {
                        let _ = opened.send(Ok(took));
                        socket
                    }
                    Err(error) => {
                        let _ = opened.send(Err(format!("{error:#}")));
                        return held;
                    }
                };
                drop(opened);
                // Keep reading: that answers the server's pings and notices a close at once.
                loop {
                    tokio::select! {
                        frame = socket.next() => match Incoming::from_frame(frame) {
                            Incoming::Closed(why) => {
                                held.closed_by_server = true;
                                held.why = Some(why);
                                held.ledger.dropped_socket();
                                return held;
                            }
                            Incoming::Event(ServerEvent::Error { code, .. }) => held.ledger.error(&code),
                            Incoming::Unexpected(what) => {
                                held.unexpected += 1;
                                held.why.get_or_insert(what);
                            }
                            _ => {}
                        },
                        _ = stop.changed() => break,
                    }
                }
                let _ = timeout(Duration::from_secs(2), socket.close(None)).await;
                held
            })
        })
        .collect();
    drop(opened_tx);

    // Every socket reports once, opened or not, within the ramp plus a connect's bound.
    let ramp = Duration::from_secs_f64(f64::from(args.sockets) / args.ramp);
    let deadline = started + ramp + CONNECT_TIMEOUT + Duration::from_secs(5);
    let mut connect = Latency::new();
    let mut failures = Examples::default();
    let mut failed = 0u64;
    let mut reported = 0u32;
    while reported < args.sockets {
        match timeout_at(deadline.into(), opened_rx.recv()).await {
            Ok(Some(Ok(took))) => connect.record(took),
            Ok(Some(Err(why))) => {
                failed += 1;
                failures.add(why);
            }
            Ok(None) | Err(_) => break,
        }
        reported += 1;
    }
    let unreported = u64::from(args.sockets - reported);
    let opened = connect.len();
    let hold_from = context.processes.sample();
    tokio::time::sleep(common.duration).await;
    let after = context.processes.sample();

    let _ = stop_tx.send(true);
    let mut ledger = Ledger::default();
    let mut closed_by_server = 0u64;
    let mut unexpected = 0u64;
    let mut closes = Examples::default();
    let mut odd = Examples::default();
    for task in tasks {
        // Each task ends at the stop signal, or within its connect bound when still opening.
        let Ok(held) = task.await else { continue };
        ledger.merge(held.ledger);
        unexpected += held.unexpected;
        if held.closed_by_server {
            closed_by_server += 1;
            closes.add(held.why.unwrap_or_default());
        } else if let Some(why) = held.why {
            odd.add(why);
        }
    }
    // A socket that never opened was refused (or dropped) by the server too.
    for _ in 0..failed + unreported {
        ledger.dropped_socket();
    }
    let mut notes = Vec::new();
    notes.extend(failures.note("sockets that failed to open"));
    notes.extend(closes.note("sockets closed by the server"));
    notes.extend(odd.note("unexpected frames"));
    if unreported > 0 {
        notes.push(format!(
            "{unreported} sockets neither opened nor failed in time"
        ));
    }
    Ok(Report {
        parameters: json!({
            "sockets": args.sockets,
            "per_user": args.per_user,
            "ramp": args.ramp,
            "duration": format!("{:?}", common.duration),
        }),
        exactly_once: ledger.verdict(),
        error_codes: ledger.error_codes().clone(),
        unexpected_frames: unexpected,
        latency: Latencies {
            connect: connect.percentiles(),
            ..Latencies::default()
        },
        cpu: hold_from
            .zip(after)
            .map(|(from, until)| Cpu::between(from, until, 0)),
        memory: before.zip(after).map(|(before, after)| Memory {
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
            per_socket_kib: (opened > 0)
                .then(|| after.rss_kib.saturating_sub(before.rss_kib) as f64 / opened as f64),
        }),
        sockets: Some(Sockets {
            requested: u64::from(args.sockets),
            opened,
            failed_to_open: failed + unreported,
            closed_by_server,
            users: u64::from(user_count),
        }),
        notes,
        ..Report::default()
    })
}
