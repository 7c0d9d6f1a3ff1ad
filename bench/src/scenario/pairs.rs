//! `pairs` (closed loop) and `rate` (open loop): N senders, each with its own recipient. One task
//! per pair reads both sockets, so it sees every end of its messages and knows when they settled.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use serde_json::json;
use tokio::{
    sync::Notify,
    time::{sleep_until, timeout},
};
use tokio_tungstenite::tungstenite::Message;

use super::{Clock, Context, Examples};
use crate::{
    Report,
    api::{self, Incoming, ServerEvent, Socket, WireMessage},
    ledger::{Key, Ledger, MessageId, Reception},
    measure::{Cpu, Latency},
    report::{Latencies, Memory, Schedule, Throughput},
    text::{ClientId, chat_text},
};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Loop {
    /// Each sender keeps up to `window` messages unacknowledged.
    Closed { window: u32 },
    /// `rate` messages per second in all, each sent at its scheduled instant whatever the acks.
    Open { rate: f64 },
}

/// Sockets opened at once while setting up (each waits for its hello).
const CONNECTS_AT_ONCE: usize = 64;
/// A message sent later than this after its scheduled instant counts as late.
const LATE_AFTER_US: u64 = 5_000;
/// The longest a socket's close may take at the end.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

pub(crate) async fn run(context: &Context<'_>, pairs: u32, mode: Loop) -> anyhow::Result<Report> {
    let common = &context.cli.common;
    let senders = context.users("s", pairs).await?;
    let recipients = context.users("r", pairs).await?;
    let sockets: Vec<(Socket, Socket)> = stream::iter(senders.iter().zip(&recipients))
        .map(|(sender, recipient)| async move {
            let (to, _) =
                api::open_until_hello(&context.recipients.socket(&recipient.token), recipient.id)
                    .await
                    .context("opening a recipient's socket")?;
            let (from, _) =
                api::open_until_hello(&context.senders.socket(&sender.token), sender.id)
                    .await
                    .context("opening a sender's socket")?;
            anyhow::Ok((from, to))
        })
        .buffered(CONNECTS_AT_ONCE)
        .try_collect()
        .await?;

    let run: Arc<str> = context.run.as_str().into();
    let clock = Clock::new(common.warmup, common.duration, common.settle);
    let ticks: Vec<Arc<Notify>> = (0..pairs).map(|_| Arc::new(Notify::new())).collect();
    if let Loop::Open { rate } = mode {
        let ticks = ticks.clone();
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(&ticks, rate, clock))
            .context("starting the pacing thread")?;
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .zip(&recipients)
        .enumerate()
        .map(|(index, ((from, to), recipient))| {
            let lane = Lane {
                stream: index as u32,
                to: recipient.id,
                run: Arc::clone(&run),
                clock,
                pacing: Pacing::new(mode, index as u32, pairs),
                tick: Arc::clone(&ticks[index]),
            };
            tokio::spawn(lane.drive(from, to))
        })
        .collect();

    sleep_until(clock.measure_from.into()).await;
    let window_start = context.processes.sample();
    sleep_until(clock.measure_until.into()).await;
    let window_end = context.processes.sample();

    let mut total = Outcome::default();
    let mut notes = Vec::new();
    for task in tasks {
        match task.await {
            Ok(outcome) => total.merge(outcome),
            Err(error) => notes.push(format!("a pair's task failed: {error}")),
        }
    }
    let window_seconds = common.duration.as_secs_f64();
    let per_second = |count: u64| {
        if window_seconds > 0.0 {
            count as f64 / window_seconds
        } else {
            0.0
        }
    };
    notes.extend(total.ledger.missing_examples(5));
    notes.extend(total.closes.note("sockets closed by the server"));
    notes.extend(total.odd.note("unexpected frames"));
    notes.extend(total.disorder.note("reordered"));
    let mut parameters = json!({
        "pairs": pairs,
        "warmup": format!("{:?}", common.warmup),
        "duration": format!("{:?}", common.duration),
        "settle": format!("{:?}", common.settle),
    });
    match mode {
        Loop::Closed { window } => parameters["window"] = json!(window),
        Loop::Open { rate } => parameters["rate"] = json!(rate),
    }
    Ok(Report {
        parameters,
        exactly_once: total.ledger.verdict(),
        error_codes: total.ledger.error_codes().clone(),
        unexpected_frames: total.unexpected,
        unanswered: total.unanswered,
        acks_out_of_order: total.acks_out_of_order,
        throughput: Some(Throughput {
            window_seconds,
            sent: total.sent,
            acked: total.acked_in_window,
            delivered: total.delivered_in_window,
            acked_per_second: per_second(total.acked_in_window),
            delivered_per_second: per_second(total.delivered_in_window),
        }),
        latency: Latencies {
            ack: total.ack.percentiles(),
            delivery: total.delivery.percentiles(),
            receipt: total.receipt.percentiles(),
            lag: total.lag.percentiles(),
            ..Latencies::default()
        },
        cpu: window_start
            .zip(window_end)
            .map(|(from, until)| Cpu::between(from, until, total.delivered_in_window)),
        memory: window_start.zip(window_end).map(|(from, until)| Memory {
            rss_before_kib: from.rss_kib,
            rss_after_kib: until.rss_kib,
            per_socket_kib: None,
        }),
        schedule: matches!(mode, Loop::Open { .. }).then(|| Schedule {
            scheduled: total.sent,
            late: total.late,
            late_after_ms: LATE_AFTER_US as f64 / 1000.0,
            max_lag_ms: total.max_lag_us as f64 / 1000.0,
        }),
        notes,
        ..Report::default()
    })
}

/// When a lane sends: as the window allows, or at fixed instants.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    Window(u64),
    /// Message `seq` is due `offset + seq × interval` µs after the origin.
    Scheduled {
        offset_us: f64,
        interval_us: f64,
    },
}

impl Pacing {
    fn new(mode: Loop, index: u32, pairs: u32) -> Pacing {
        match mode {
            Loop::Closed { window } => Pacing::Window(u64::from(window)),
            Loop::Open { rate } => {
                // Each pair sends rate / pairs per second; the pairs' instants interleave evenly.
                let interval_us = f64::from(pairs) / rate * 1e6;
                Pacing::Scheduled {
                    offset_us: interval_us * f64::from(index) / f64::from(pairs),
                    interval_us,
                }
            }
        }
    }
}

/// Wakes each lane of the open loop at its messages' instants. Tokio's timer counts whole
/// milliseconds, so a lane sleeping on it sends about a millisecond late (and counts that as latency);
/// a thread of its own sleeps to within tens of microseconds. Message `k` of the whole run is due
/// `k / rate` seconds after the origin and belongs to lane `k mod pairs` (see [`Pacing::new`]).
fn pace(ticks: &[Arc<Notify>], rate: f64, clock: Clock) {
    for k in 0u64.. {
        let at = clock.origin + Duration::from_secs_f64(k as f64 / rate);
        if at >= clock.measure_until {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        ticks[(k % ticks.len() as u64) as usize].notify_one();
    }
}

/// One sender→recipient pair.
struct Lane {
    stream: u32,
    to: i64,
    run: Arc<str>,
    clock: Clock,
    pacing: Pacing,
    /// Open loop: the pacer's signal that a message is due.
    tick: Arc<Notify>,
}

/// What one lane (or, merged, the whole run) saw.
#[derive(Default)]
struct Outcome {
    ledger: Ledger,
    ack: Latency,
    delivery: Latency,
    receipt: Latency,
    /// Open loop: how late each message left after its scheduled instant.
    lag: Latency,
    sent: u64,
    acked_in_window: u64,
    delivered_in_window: u64,
    late: u64,
    max_lag_us: u64,
    unexpected: u64,
    unanswered: u64,
    acks_out_of_order: u64,
    closes: Examples,
    odd: Examples,
    disorder: Examples,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.ledger.merge(other.ledger);
        self.ack.merge(&other.ack);
        self.delivery.merge(&other.delivery);
        self.receipt.merge(&other.receipt);
        self.lag.merge(&other.lag);
        self.sent += other.sent;
        self.acked_in_window += other.acked_in_window;
        self.delivered_in_window += other.delivered_in_window;
        self.late += other.late;
        self.max_lag_us = self.max_lag_us.max(other.max_lag_us);
        self.unexpected += other.unexpected;
        self.unanswered += other.unanswered;
        self.acks_out_of_order += other.acks_out_of_order;
        self.closes.merge(other.closes);
        self.odd.merge(other.odd);
        self.disorder.merge(other.disorder);
    }
}

/// A lane's state while it runs.
struct Progress {
    out: Outcome,
    next_seq: u64,
    /// Sent, and answered neither by `message_sent` nor by `error` yet.
    outstanding: u64,
    /// Acknowledged ids → their send instant (µs), until the receipt comes.
    sent_at: HashMap<MessageId, u64>,
    /// The highest sequence number acknowledged so far.
    last_acked: Option<u64>,
    /// Receipts that came before their `message_sent`: id → arrival (µs).
    early_receipts: HashMap<MessageId, u64>,
    sender_open: bool,
    recipient_open: bool,
}

impl Lane {
    async fn drive(self, mut sender: Socket, mut recipient: Socket) -> Outcome {
        let clock = self.clock;
        let mut p = Progress {
            out: Outcome::default(),
            next_seq: 0,
            outstanding: 0,
            sent_at: HashMap::new(),
            last_acked: None,
            early_receipts: HashMap::new(),
            sender_open: true,
            recipient_open: true,
        };
        loop {
            let now = Instant::now();
            let sending = p.sender_open && now < clock.measure_until;
            if sending
                && let Pacing::Window(window) = self.pacing
                && p.outstanding < window
            {
                let micros = clock.micros(now);
                let frames: Vec<Message> = (p.outstanding..window)
                    .map(|_| self.next_frame(&mut p, micros))
                    .collect();
                self.send(&mut sender, &mut p, frames).await;
                continue;
            }
            let drained = !sending && p.outstanding == 0 && !p.out.ledger.unsettled();
            if drained || (!p.sender_open && !p.recipient_open) || now >= clock.settle_until {
                break;
            }
            let due = if sending { self.due(p.next_seq) } else { None };
            tokio::select! {
                frame = sender.next(), if p.sender_open => {
                    self.on_sender(&mut p, Incoming::from_frame(frame));
                }
                frame = recipient.next(), if p.recipient_open => {
                    self.on_recipient(&mut p, Incoming::from_frame(frame));
                }
                () = self.tick.notified(), if due.is_some() => {
                    let frames = self.due_frames(&mut p);
                    self.send(&mut sender, &mut p, frames).await;
                }
                () = sleep_until(clock.measure_until.into()), if sending => {}
                () = sleep_until(clock.settle_until.into()) => break,
            }
        }
        p.out.unanswered = p.outstanding;
        let _ = timeout(CLOSE_LIMIT, sender.close(None)).await;
        let _ = timeout(CLOSE_LIMIT, recipient.close(None)).await;
        p.out
    }

    /// The instant message `seq` is due, when the lane is paced and it falls before the end.
    fn due(&self, seq: u64) -> Option<Instant> {
        let at = self.scheduled_us(seq)?;
        (at < self.clock.micros(self.clock.measure_until))
            .then(|| self.clock.origin + Duration::from_micros(at))
    }

    fn scheduled_us(&self, seq: u64) -> Option<u64> {
        match self.pacing {
            Pacing::Window(_) => None,
            Pacing::Scheduled {
                offset_us,
                interval_us,
            } => Some((offset_us + seq as f64 * interval_us) as u64),
        }
    }

    /// Every message due by now (more than one when the lane fell behind), stamped with its
    /// scheduled instant: latency counts from there, so falling behind is not hidden.
    fn due_frames(&self, p: &mut Progress) -> Vec<Message> {
        let now = self.clock.now_micros();
        let until = self.clock.micros(self.clock.measure_until);
        let mut frames = Vec::new();
        while let Some(at) = self.scheduled_us(p.next_seq) {
            if at > now || at >= until {
                break;
            }
            let lag = now - at;
            p.out.lag.record_micros(lag);
            if lag > LATE_AFTER_US {
                p.out.late += 1;
            }
            p.out.max_lag_us = p.out.max_lag_us.max(lag);
            frames.push(self.next_frame(p, at));
        }
        frames
    }

    fn next_frame(&self, p: &mut Progress, micros: u64) -> Message {
        let seq = p.next_seq;
        p.next_seq += 1;
        let client_id = ClientId {
            run: self.run.to_string(),
            stream: self.stream,
            seq,
            micros,
        };
        api::message_frame(
            self.to,
            &chat_text(self.stream, seq),
            &client_id.to_string(),
        )
    }

    async fn send(&self, sender: &mut Socket, p: &mut Progress, frames: Vec<Message>) {
        let count = frames.len() as u64;
        let mut sending = stream::iter(frames.into_iter().map(Ok));
        match sender.send_all(&mut sending).await {
            Ok(()) => {
                p.outstanding += count;
                p.out.sent += count;
            }
            Err(error) => self.sender_closed(p, format!("sending failed: {error}")),
        }
    }

    fn sender_closed(&self, p: &mut Progress, why: String) {
        if p.sender_open {
            p.sender_open = false;
            p.out.ledger.dropped_socket();
            p.out.closes.add(format!("sender {}: {why}", self.stream));
        }
    }

    /// Our own client id on a message of this lane, else `None` (and it is counted as odd).
    fn ours(&self, p: &mut Progress, message: &WireMessage) -> Option<ClientId> {
        let parsed = message
            .client_id
            .as_deref()
            .and_then(ClientId::parse)
            .filter(|id| *id.run == *self.run && id.stream == self.stream);
        if parsed.is_none() {
            p.out.unexpected += 1;
            p.out.odd.add(format!(
                "message {} with client_id {:?} on lane {}",
                message.id, message.client_id, self.stream
            ));
        }
        parsed
    }

    fn on_sender(&self, p: &mut Progress, incoming: Incoming) {
        let clock = &self.clock;
        let now = clock.now_micros();
        match incoming {
            Incoming::Event(ServerEvent::MessageSent { message }) => {
                let Some(id) = self.ours(p, &message) else {
                    return;
                };
                p.outstanding = p.outstanding.saturating_sub(1);
                match p.last_acked {
                    Some(last) if id.seq < last => p.out.acks_out_of_order += 1,
                    _ => p.last_acked = Some(id.seq),
                }
                p.out.ledger.acked(
                    Key {
                        stream: id.stream,
                        seq: id.seq,
                    },
                    message.id,
                );
                if clock.in_window(now) {
                    p.out.acked_in_window += 1;
                }
                if clock.in_window(id.micros) {
                    p.out.ack.record_micros(now.saturating_sub(id.micros));
                }
                match p.early_receipts.remove(&message.id) {
                    Some(at) if clock.in_window(id.micros) => {
                        p.out.receipt.record_micros(at.saturating_sub(id.micros));
                    }
                    Some(_) => {}
                    None => {
                        p.sent_at.insert(message.id, id.micros);
                    }
                }
            }
            Incoming::Event(ServerEvent::MessageDelivered { message_id }) => {
                p.out.ledger.receipted(message_id);
                match p.sent_at.remove(&message_id) {
                    Some(sent) if clock.in_window(sent) => {
                        p.out.receipt.record_micros(now.saturating_sub(sent));
                    }
                    Some(_) => {}
                    None => {
                        p.early_receipts.insert(message_id, now);
                    }
                }
            }
            Incoming::Event(ServerEvent::Error { code, client_id }) => {
                p.out.ledger.error(&code);
                let ours = client_id
                    .as_deref()
                    .and_then(ClientId::parse)
                    .is_some_and(|id| *id.run == *self.run);
                if ours {
                    p.outstanding = p.outstanding.saturating_sub(1);
                }
            }
            Incoming::Event(ServerEvent::NewMessage { message }) => {
                p.out.unexpected += 1;
                p.out.odd.add(format!(
                    "sender {} got new_message {}",
                    self.stream, message.id
                ));
            }
            Incoming::Event(ServerEvent::UserConnected { .. } | ServerEvent::Other)
            | Incoming::Control => {}
            Incoming::Unexpected(what) => {
                p.out.unexpected += 1;
                p.out.odd.add(what);
            }
            Incoming::Closed(why) => self.sender_closed(p, why),
        }
    }

    fn on_recipient(&self, p: &mut Progress, incoming: Incoming) {
        let clock = &self.clock;
        let now = clock.now_micros();
        match incoming {
            Incoming::Event(ServerEvent::NewMessage { message }) => {
                let Some(id) = self.ours(p, &message) else {
                    return;
                };
                let key = Key {
                    stream: id.stream,
                    seq: id.seq,
                };
                let reception = p.out.ledger.received(self.stream, key, message.id);
                if let Reception::Reordered { after } = reception {
                    p.out.disorder.add(format!(
                        "lane {}: seq {} (message {}) after seq {after}",
                        self.stream, id.seq, message.id
                    ));
                }
                if reception.is_first() {
                    if clock.in_window(now) {
                        p.out.delivered_in_window += 1;
                    }
                    if clock.in_window(id.micros) {
                        p.out.delivery.record_micros(now.saturating_sub(id.micros));
                    }
                }
            }
            Incoming::Event(ServerEvent::Error { code, .. }) => p.out.ledger.error(&code),
            Incoming::Event(
                ServerEvent::MessageSent { .. } | ServerEvent::MessageDelivered { .. },
            ) => {
                p.out.unexpected += 1;
                p.out
                    .odd
                    .add(format!("recipient {} got a sender's event", self.stream));
            }
            Incoming::Event(ServerEvent::UserConnected { .. } | ServerEvent::Other)
            | Incoming::Control => {}
            Incoming::Unexpected(what) => {
                p.out.unexpected += 1;
                p.out.odd.add(what);
            }
            Incoming::Closed(why) => {
                if p.recipient_open {
                    p.recipient_open = false;
                    p.out.ledger.dropped_socket();
                    p.out
                        .closes
                        .add(format!("recipient {}: {why}", self.stream));
                }
            }
        }
    }
}
