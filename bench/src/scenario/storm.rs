//! `storm`: recipients with a backlog of undelivered messages all reconnect at once. A few sender
//! users first send every backlog over WebSocket (acks awaited) while the recipients are offline;
//! then every recipient opens its socket at the same moment and reads until its backlog is in.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use serde_json::json;
use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, timeout, timeout_at},
};

use super::{Context, Examples};
use crate::{
    Report,
    api::{self, Incoming, ServerEvent, Socket},
    cli::StormArgs,
    ledger::{Key, Ledger, MessageId},
    measure::{Cpu, Latency},
    report::{Latencies, Memory, Sockets, Storm},
    text::{ClientId, chat_text},
};

/// The backlog must be acknowledged within this plus a millisecond per message.
const BACKLOG_BASE_LIMIT: Duration = Duration::from_secs(60);
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

pub(crate) async fn run(context: &Context<'_>, args: &StormArgs) -> anyhow::Result<Report> {
    let common = &context.cli.common;
    let senders = context.users("storm-s", args.senders).await?;
    let recipients = context.users("storm-r", args.users).await?;
    let sockets: Vec<Socket> = stream::iter(&senders)
        .map(|sender| async move {
            api::open_until_hello(&context.senders.socket(&sender.token), sender.id)
                .await
                .map(|(socket, _)| socket)
                .context("opening a sender's socket")
        })
        .buffered(16)
        .try_collect()
        .await?;

    // 1. The backlog, sent while every recipient is offline.
    let run: Arc<str> = context.run.as_str().into();
    let origin = Instant::now();
    let total = u64::from(args.users) * u64::from(args.backlog);
    let limit = origin + BACKLOG_BASE_LIMIT + Duration::from_millis(total);
    let backfills: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(s, socket)| {
            let mine: Vec<(u32, i64)> = recipients
                .iter()
                .enumerate()
                .filter(|(k, _)| k % senders.len() == s)
                .map(|(k, user)| (k as u32, user.id))
                .collect();
            let backfill = Backfill {
                run: Arc::clone(&run),
                origin,
                limit,
                window: u64::from(args.window),
                backlog: u64::from(args.backlog),
            };
            tokio::spawn(backfill.send(socket, mine))
        })
        .collect();
    let mut senders_done = Vec::new();
    let mut ack = Latency::new();
    let mut unanswered = 0;
    let mut unexpected = 0;
    let mut closes = Examples::default();
    let mut odd = Examples::default();
    for task in backfills {
        let sent = task.await.context("a backlog sender failed")?;
        ack.merge(&sent.ack);
        unanswered += sent.outstanding;
        unexpected += sent.unexpected;
        closes.merge(sent.closes);
        odd.merge(sent.odd);
        senders_done.push((sent.socket, sent.ledger));
    }
    let backlog_send_seconds = origin.elapsed().as_secs_f64();
    let mut expected: Vec<HashSet<MessageId>> = vec![HashSet::new(); recipients.len()];
    for (_, ledger) in &senders_done {
        for (id, key) in ledger.acked_ids() {
            if let Some(set) = expected.get_mut(key.stream as usize) {
                set.insert(id);
            }
        }
    }
    let expected_total: u64 = expected.iter().map(|set| set.len() as u64).sum();

    // 2. The storm: every recipient connects at once; the senders wait for their receipts. The
    //    recipients stay online until the receipts are in, as a real client would for a while: a
    //    socket closed right after its last message is another test.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = context.processes.sample();
    let first_connect = Instant::now();
    let deadline = first_connect + common.duration + common.settle;
    let receipts: Vec<_> = senders_done
        .into_iter()
        .map(|(socket, ledger)| tokio::spawn(await_receipts(socket, ledger, deadline)))
        .collect();
    let arrivals: Vec<_> = recipients
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(k, (user, expected))| {
            let reconnect = Reconnect {
                stream: k as u32,
                user: user.id,
                url: context.recipients.socket(&user.token),
                run: Arc::clone(&run),
                deadline,
            };
            tokio::spawn(reconnect.read(expected, done_tx.clone(), stop_rx.clone()))
        })
        .collect();
    drop(done_tx);
    // Every recipient reports once, when its backlog is in or it gave up.
    for _ in 0..recipients.len() {
        if !matches!(
            timeout_at(deadline.into(), done_rx.recv()).await,
            Ok(Some(()))
        ) {
            break;
        }
    }
    let after = context.processes.sample();
    let mut ledger = Ledger::default();
    for task in receipts {
        match task.await {
            Ok(waited) => {
                ledger.merge(waited.ledger);
                unexpected += waited.unexpected;
                closes.merge(waited.closes);
            }
            Err(error) => closes.add(format!("a sender's task failed: {error}")),
        }
    }
    let _ = stop_tx.send(true);
    let mut connect = Latency::new();
    let mut backlog = Latency::new();
    let mut last_delivery: Option<Instant> = None;
    let mut delivered = 0u64;
    let mut failed = 0u64;
    let mut closed_by_server = 0u64;
    for task in arrivals {
        let Ok(arrival) = task.await else {
            failed += 1;
            ledger.dropped_socket();
            continue;
        };
        ledger.merge(arrival.ledger);
        match arrival.connect {
            Some(took) => connect.record(took),
            None => failed += 1,
        }
        if let Some(took) = arrival.backlog {
            backlog.record(took);
        }
        if arrival.closed {
            closed_by_server += 1;
        }
        delivered += arrival.delivered;
        last_delivery = last_delivery.max(arrival.last);
        unexpected += arrival.unexpected;
        closes.merge(arrival.closes);
        odd.merge(arrival.odd);
    }

    let storm_ms = last_delivery
        .map(|last| last.saturating_duration_since(first_connect).as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let mut notes = ledger.missing_examples(5);
    notes.extend(closes.note("sockets closed by the server"));
    notes.extend(odd.note("unexpected frames"));
    Ok(Report {
        parameters: json!({
            "users": args.users,
            "backlog": args.backlog,
            "senders": args.senders,
            "window": args.window,
            "duration": format!("{:?}", common.duration),
            "settle": format!("{:?}", common.settle),
        }),
        exactly_once: ledger.verdict(),
        error_codes: ledger.error_codes().clone(),
        unexpected_frames: unexpected,
        unanswered,
        latency: Latencies {
            ack: ack.percentiles(),
            connect: connect.percentiles(),
            backlog: backlog.percentiles(),
            ..Latencies::default()
        },
        cpu: before
            .zip(after)
            .map(|(from, until)| Cpu::between(from, until, delivered)),
        memory: before.zip(after).map(|(before, after)| Memory {
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
            per_socket_kib: None,
        }),
        sockets: Some(Sockets {
            requested: u64::from(args.users),
            opened: connect.len(),
            failed_to_open: failed,
            closed_by_server,
            users: u64::from(args.users),
        }),
        storm: Some(Storm {
            recipients: u64::from(args.users),
            expected: expected_total,
            delivered,
            backlog_send_seconds,
            first_connect_to_last_delivery_ms: storm_ms,
            deliveries_per_second: if storm_ms > 0.0 {
                delivered as f64 / (storm_ms / 1000.0)
            } else {
                0.0
            },
        }),
        notes,
        ..Report::default()
    })
}

/// One sender's part of the backlog.
struct Backfill {
    run: Arc<str>,
    origin: Instant,
    limit: Instant,
    window: u64,
    backlog: u64,
}

struct Sent {
    socket: Socket,
    ledger: Ledger,
    ack: Latency,
    outstanding: u64,
    unexpected: u64,
    closes: Examples,
    odd: Examples,
}

impl Backfill {
    /// Sends `backlog` messages to each of `recipients` (stream = the recipient's number),
    /// interleaved as a sender with several conversations would, keeping `window` unacknowledged.
    async fn send(self, mut socket: Socket, recipients: Vec<(u32, i64)>) -> Sent {
        let mut ledger = Ledger::default();
        let mut ack = Latency::new();
        let mut outstanding = 0u64;
        let mut unexpected = 0u64;
        let mut closes = Examples::default();
        let mut odd = Examples::default();
        // Message n goes to recipient n mod R as its (n div R)th: conversations interleave.
        let total = self.backlog * recipients.len() as u64;
        let mut next = 0u64;
        let micros = |at: Instant| {
            u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
        };
        let mut open = true;
        while open && Instant::now() < self.limit {
            let mut frames = Vec::new();
            while outstanding + (frames.len() as u64) < self.window {
                if next >= total {
                    break;
                }
                let (stream, to) = recipients[(next % recipients.len() as u64) as usize];
                let seq = next / recipients.len() as u64;
                next += 1;
                let client_id = ClientId {
                    run: self.run.to_string(),
                    stream,
                    seq,
                    micros: micros(Instant::now()),
                };
                frames.push(Ok(api::message_frame(
                    to,
                    &chat_text(stream, seq),
                    &client_id.to_string(),
                )));
            }
            if !frames.is_empty() {
                let count = frames.len() as u64;
                if let Err(error) = socket.send_all(&mut stream::iter(frames)).await {
                    closes.add(format!("a backlog sender: sending failed: {error}"));
                    ledger.dropped_socket();
                    break;
                }
                outstanding += count;
            }
            if outstanding == 0 && next >= total {
                break;
            }
            let frame = match timeout_at(self.limit.into(), socket.next()).await {
                Ok(frame) => frame,
                Err(_) => break,
            };
            match Incoming::from_frame(frame) {
                Incoming::Event(ServerEvent::MessageSent { message }) => {
                    let ours = message
                        .client_id
                        .as_deref()
                        .and_then(ClientId::parse)
                        .filter(|id| *id.run == *self.run);
                    let Some(id) = ours else {
                        unexpected += 1;
                        odd.add(format!(
                            "message_sent {} with a foreign client id",
                            message.id
                        ));
                        continue;
                    };
                    outstanding = outstanding.saturating_sub(1);
                    ledger.acked(
                        Key {
                            stream: id.stream,
                            seq: id.seq,
                        },
                        message.id,
                    );
                    ack.record_micros(micros(Instant::now()).saturating_sub(id.micros));
                }
                Incoming::Event(ServerEvent::MessageDelivered { message_id }) => {
                    ledger.receipted(message_id);
                }
                Incoming::Event(ServerEvent::Error { code, client_id }) => {
                    ledger.error(&code);
                    if client_id.as_deref().and_then(ClientId::parse).is_some() {
                        outstanding = outstanding.saturating_sub(1);
                    }
                }
                Incoming::Event(_) | Incoming::Control => {}
                Incoming::Unexpected(what) => {
                    unexpected += 1;
                    odd.add(what);
                }
                Incoming::Closed(why) => {
                    closes.add(format!("a backlog sender: {why}"));
                    ledger.dropped_socket();
                    open = false;
                }
            }
        }
        Sent {
            socket,
            ledger,
            ack,
            outstanding,
            unexpected,
            closes,
            odd,
        }
    }
}

struct Waited {
    ledger: Ledger,
    unexpected: u64,
    closes: Examples,
}

/// Reads a sender's socket until every message it had acknowledged is receipted, or the deadline.
async fn await_receipts(mut socket: Socket, mut ledger: Ledger, deadline: Instant) -> Waited {
    let mut unexpected = 0;
    let mut closes = Examples::default();
    while ledger.awaiting_receipts() > 0 {
        let Ok(frame) = timeout_at(deadline.into(), socket.next()).await else {
            break;
        };
        match Incoming::from_frame(frame) {
            Incoming::Event(ServerEvent::MessageDelivered { message_id }) => {
                ledger.receipted(message_id);
            }
            Incoming::Event(ServerEvent::Error { code, .. }) => ledger.error(&code),
            Incoming::Event(_) | Incoming::Control => {}
            Incoming::Unexpected(_) => unexpected += 1,
            Incoming::Closed(why) => {
                closes.add(format!("a backlog sender, awaiting receipts: {why}"));
                ledger.dropped_socket();
                break;
            }
        }
    }
    let _ = timeout(CLOSE_LIMIT, socket.close(None)).await;
    Waited {
        ledger,
        unexpected,
        closes,
    }
}

/// One recipient coming back online.
struct Reconnect {
    stream: u32,
    user: i64,
    url: String,
    run: Arc<str>,
    deadline: Instant,
}

#[derive(Default)]
struct Arrival {
    ledger: Ledger,
    /// Connect → hello, when the socket opened.
    connect: Option<Duration>,
    /// Connect → the last expected message, when all came.
    backlog: Option<Duration>,
    /// When the last expected message came.
    last: Option<Instant>,
    delivered: u64,
    closed: bool,
    unexpected: u64,
    closes: Examples,
    odd: Examples,
}

impl Reconnect {
    /// Reads until the hello and the whole backlog are in (then says so on `done`), and on until
    /// `stop`, counting whatever comes late or twice.
    async fn read(
        self,
        mut expected: HashSet<MessageId>,
        done: mpsc::UnboundedSender<()>,
        mut stop: watch::Receiver<bool>,
    ) -> Arrival {
        let mut arrival = Arrival::default();
        let mut done = Some(done);
        let mut report_done = move || {
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
        };
        let started = Instant::now();
        let mut socket = match timeout_at(self.deadline.into(), api::open(&self.url)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                arrival.ledger.dropped_socket();
                arrival
                    .closes
                    .add(format!("recipient {}: {error:#}", self.stream));
                report_done();
                return arrival;
            }
            Err(_) => {
                arrival.ledger.dropped_socket();
                arrival
                    .closes
                    .add(format!("recipient {}: did not open in time", self.stream));
                report_done();
                return arrival;
            }
        };
        // Receptions of the same id are counted by the ledger; here only the first of each counts.
        let mut first_seen: HashSet<MessageId> = HashSet::new();
        loop {
            if arrival.connect.is_some() && expected.is_empty() {
                report_done();
            }
            let frame = tokio::select! {
                frame = socket.next() => frame,
                _ = stop.changed() => break,
                () = sleep_until(self.deadline.into()) => break,
            };
            match Incoming::from_frame(frame) {
                Incoming::Event(ServerEvent::UserConnected { user_id }) if user_id == self.user => {
                    arrival.connect.get_or_insert(started.elapsed());
                }
                Incoming::Event(ServerEvent::NewMessage { message }) => {
                    let ours = message
                        .client_id
                        .as_deref()
                        .and_then(ClientId::parse)
                        .filter(|id| *id.run == *self.run && id.stream == self.stream);
                    let Some(id) = ours else {
                        arrival.unexpected += 1;
                        arrival.odd.add(format!(
                            "recipient {} got message {} with client_id {:?}",
                            self.stream, message.id, message.client_id
                        ));
                        continue;
                    };
                    let key = Key {
                        stream: id.stream,
                        seq: id.seq,
                    };
                    arrival.ledger.received(self.stream, key, message.id);
                    if first_seen.insert(message.id) && expected.remove(&message.id) {
                        arrival.delivered += 1;
                        arrival.last = Some(Instant::now());
                        if expected.is_empty() {
                            arrival.backlog = Some(started.elapsed());
                        }
                    }
                }
                Incoming::Event(ServerEvent::Error { code, .. }) => arrival.ledger.error(&code),
                Incoming::Event(_) | Incoming::Control => {}
                Incoming::Unexpected(what) => {
                    arrival.unexpected += 1;
                    arrival.odd.add(what);
                }
                Incoming::Closed(why) => {
                    arrival.closed = true;
                    arrival.ledger.dropped_socket();
                    arrival
                        .closes
                        .add(format!("recipient {}: {why}", self.stream));
                    break;
                }
            }
        }
        if arrival.connect.is_none() && !arrival.closed {
            // Opened, but never said hello: not usable, so counted as failed to open.
            arrival.ledger.dropped_socket();
            arrival
                .closes
                .add(format!("recipient {}: no hello", self.stream));
        }
        report_done();
        let _ = timeout(CLOSE_LIMIT, socket.close(None)).await;
        arrival
    }
}
