//! What a run found: every figure, as one JSON object or as a table for a person.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::{
    ledger::ExactlyOnce,
    measure::{Cpu, Percentiles},
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `pairs`, `rate`, `idle` or `storm`.
    pub scenario: String,
    /// `sqlite`, `postgres`, the database URL given, or `external` (--url).
    pub database: String,
    /// The scenario's sizes and the durations it ran with.
    pub parameters: Value,
    pub exactly_once: ExactlyOnce,
    /// `error` events by code.
    pub error_codes: BTreeMap<String, u64>,
    /// Frames that were no server event this tool knows (not JSON, binary, a foreign client id).
    pub unexpected_frames: u64,
    /// `message_sent` events that came after the ack of a later message of the same socket (the
    /// server answers in send order, so this should be 0; not part of the verdict).
    pub acks_out_of_order: u64,
    /// Messages sent but answered neither by `message_sent` nor by `error` before the end.
    pub unanswered: u64,
    pub throughput: Option<Throughput>,
    pub latency: Latencies,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub schedule: Option<Schedule>,
    pub sockets: Option<Sockets>,
    pub storm: Option<Storm>,
    /// The server processes whose CPU and memory are reported.
    pub server_pids: Vec<u32>,
    /// How the spawned server exited after SIGTERM (`None` with --url).
    pub server_exit: Option<String>,
    /// Warnings and the first examples of what went wrong (close reasons, odd frames).
    pub notes: Vec<String>,
}

/// Messages in the measured window (pairs, rate).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub window_seconds: f64,
    /// Messages sent in the whole run (warm-up and window).
    pub sent: u64,
    /// `message_sent` events that arrived in the window.
    pub acked: u64,
    /// `new_message` events (first receptions) that arrived in the window.
    pub delivered: u64,
    pub acked_per_second: f64,
    pub delivered_per_second: f64,
}

/// Latency percentiles; each is absent when the scenario has nothing to measure for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Rate: the scheduled instant → the frame handed to the socket (the generator's own lag, part
    /// of every other latency of the run).
    pub lag: Option<Percentiles>,
    /// Send (or the scheduled instant) → `message_sent` at the sender.
    pub ack: Option<Percentiles>,
    /// Send → `new_message` at the recipient.
    pub delivery: Option<Percentiles>,
    /// Send → `message_delivered` at the sender.
    pub receipt: Option<Percentiles>,
    /// Start of the TCP connect → the server's hello on the socket.
    pub connect: Option<Percentiles>,
    /// Storm: a recipient's connect → the last message of its backlog.
    pub backlog: Option<Percentiles>,
}

/// Resident memory of the server processes, summed.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Idle: (after − before) / sockets opened.
    pub per_socket_kib: Option<f64>,
}

/// Rate: how well the open loop kept to its schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Messages that were due (and so sent).
    pub scheduled: u64,
    /// Sent more than `late_after_ms` after their scheduled instant.
    pub late: u64,
    pub late_after_ms: f64,
    pub max_lag_ms: f64,
}

/// Idle and storm: the sockets opened and what became of them.
#[derive(Debug, Clone, Serialize)]
pub struct Sockets {
    pub requested: u64,
    pub opened: u64,
    pub failed_to_open: u64,
    /// Closed by the server (or broken) while the scenario held them.
    pub closed_by_server: u64,
    pub users: u64,
}

/// Storm: recipients with a backlog reconnecting at once.
#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    pub recipients: u64,
    /// Messages acknowledged for the recipients before they reconnected.
    pub expected: u64,
    /// Of those, received after the reconnect.
    pub delivered: u64,
    pub backlog_send_seconds: f64,
    /// The first connect → the last expected `new_message`.
    pub first_connect_to_last_delivery_ms: f64,
    pub deliveries_per_second: f64,
}

impl Report {
    /// Every figure, plus the verdict (`exactly_once_holds`).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert(
                "exactly_once_holds".into(),
                Value::Bool(self.exactly_once.holds()),
            );
        }
        value
    }

    pub fn print_table(&self) {
        print!("{}", self.table());
    }

    /// The table `print_table` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "teachly-load {} — database {}, {}",
            self.scenario,
            self.database,
            parameters_text(&self.parameters)
        ));
        if let Some(t) = &self.throughput {
            line(format!(
                "throughput     {:.0} delivered/s, {:.0} acked/s ({} delivered, {} acked in the {:.1} s window; {} sent in all)",
                t.delivered_per_second,
                t.acked_per_second,
                t.delivered,
                t.acked,
                t.window_seconds,
                t.sent
            ));
        }
        if let Some(s) = &self.storm {
            line(format!(
                "storm          {} of {} backlog messages to {} recipients in {:.0} ms from the first connect = {:.0} deliveries/s (backlog sent in {:.1} s)",
                s.delivered,
                s.expected,
                s.recipients,
                s.first_connect_to_last_delivery_ms,
                s.deliveries_per_second,
                s.backlog_send_seconds
            ));
        }
        if let Some(s) = &self.schedule {
            line(format!(
                "schedule       {} sent, {} more than {} ms late, worst {:.1} ms behind",
                s.scheduled, s.late, s.late_after_ms, s.max_lag_ms
            ));
        }
        if let Some(s) = &self.sockets {
            line(format!(
                "sockets        {} of {} opened ({} users), {} failed to open, {} closed by the server",
                s.opened, s.requested, s.users, s.failed_to_open, s.closed_by_server
            ));
        }
        let rows = [
            ("due → sent (generator)", &self.latency.lag),
            ("send → message_sent", &self.latency.ack),
            ("send → new_message", &self.latency.delivery),
            ("send → message_delivered", &self.latency.receipt),
            ("connect → hello", &self.latency.connect),
            ("connect → last of backlog", &self.latency.backlog),
        ];
        if rows.iter().any(|(_, p)| p.is_some()) {
            line(format!(
                "latency (ms)               {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "count", "p50", "p90", "p99", "p99.9", "max"
            ));
            for (name, percentiles) in rows {
                if let Some(p) = percentiles {
                    line(format!(
                        "  {name:<25}{:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
                    ));
                }
            }
        }
        if let Some(c) = &self.cpu {
            let per = c
                .us_per_message
                .map(|us| format!("{us:.1} µs per delivered message, "))
                .unwrap_or_default();
            line(format!(
                "server CPU     {per}{:.0} % of one core ({:.2} CPU s)",
                c.utilisation_percent, c.cpu_seconds
            ));
        }
        if let Some(m) = &self.memory {
            let per = m
                .per_socket_kib
                .map(|kib| format!(" = {kib:.1} KiB per socket"))
                .unwrap_or_default();
            line(format!(
                "server memory  RSS {:.1} MiB → {:.1} MiB{per}",
                m.rss_before_kib as f64 / 1024.0,
                m.rss_after_kib as f64 / 1024.0
            ));
        }
        let e = &self.exactly_once;
        line(format!(
            "exactly once   acknowledged {}, received {}, lost {}, duplicated {}, reordered {}, unreceipted {}, errors {}, dropped sockets {} — {}",
            e.acknowledged,
            e.received,
            e.lost,
            e.duplicated,
            e.reordered,
            e.unreceipted,
            e.errors,
            e.dropped_sockets,
            if e.holds() { "holds" } else { "DOES NOT HOLD" }
        ));
        if !self.error_codes.is_empty() {
            let codes: Vec<String> = self
                .error_codes
                .iter()
                .map(|(code, count)| format!("{code} × {count}"))
                .collect();
            line(format!("error codes    {}", codes.join(", ")));
        }
        if self.unanswered > 0 || self.unexpected_frames > 0 || self.acks_out_of_order > 0 {
            line(format!(
                "also           {} messages never answered, {} unexpected frames, {} acks out of send order",
                self.unanswered, self.unexpected_frames, self.acks_out_of_order
            ));
        }
        if let Some(exit) = &self.server_exit {
            line(format!("server         {exit}"));
        }
        for note in &self.notes {
            line(format!("note           {note}"));
        }
        out
    }
}

fn parameters_text(parameters: &Value) -> String {
    match parameters {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => format!("{key} {text}"),
                other => format!("{key} {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_is_one_object_with_the_verdict() {
        let report = Report {
            scenario: "idle".into(),
            parameters: serde_json::json!({"sockets": 3}),
            ..Report::default()
        };
        let json = report.to_json();
        assert_eq!(json["scenario"], "idle");
        assert_eq!(json["exactly_once_holds"], true);
        assert_eq!(json["exactly_once"]["dropped_sockets"], 0);
        let line = serde_json::to_string(&json).unwrap();
        assert!(!line.contains('\n'));
        assert!(report.table().contains("holds"));
    }
}
