//! The four scenarios. Each signs its users in, drives sockets for a bounded time, and fills a
//! `Report`; `pairs` and `rate` share one driver (closed and open loop).

mod idle;
mod pairs;
mod storm;

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{
    Report,
    api::{self, BaseUrl, Session},
    cli::{Cli, Scenario},
    measure::Processes,
    target::Target,
};

/// What every scenario gets: the options, where to connect, an HTTP client, and the run's tag.
pub(crate) struct Context<'a> {
    pub cli: &'a Cli,
    pub senders: &'a BaseUrl,
    pub recipients: &'a BaseUrl,
    pub processes: &'a Processes,
    pub http: reqwest::Client,
    /// Random, in every user name and client id, so runs can share one database.
    pub run: String,
}

impl Context<'_> {
    /// Signs in `count` users named `load <run> <role><n>` (short, and no email address).
    pub async fn users(&self, role: &str, count: u32) -> anyhow::Result<Vec<Session>> {
        let names = (0..count)
            .map(|n| format!("load {} {role}{n}", self.run))
            .collect();
        api::login_all(&self.http, self.senders, names)
            .await
            .with_context(|| format!("signing in {count} {role} users"))
    }
}

pub(crate) async fn run(cli: &Cli, target: &Target) -> anyhow::Result<Report> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let context = Context {
        cli,
        senders: &target.senders,
        recipients: &target.recipients,
        processes: &target.processes,
        http,
        run: format!("{:08x}", crate::random_u64() as u32),
    };
    let mut report = match &cli.scenario {
        Scenario::Pairs(args) => {
            pairs::run(
                &context,
                args.pairs,
                pairs::Loop::Closed {
                    window: args.window,
                },
            )
            .await?
        }
        Scenario::Rate(args) => {
            pairs::run(&context, args.pairs, pairs::Loop::Open { rate: args.rate }).await?
        }
        Scenario::Idle(args) => idle::run(&context, args).await?,
        Scenario::Storm(args) => storm::run(&context, args).await?,
    };
    report.scenario = cli.scenario.name().into();
    report.database = target.database.clone();
    report.server_pids = target.processes.pids().to_vec();
    Ok(report)
}

/// The sockets a run opens, for the open-file limit (with room for the rest of the process).
pub(crate) fn sockets_needed(cli: &Cli) -> u64 {
    let sockets = match &cli.scenario {
        Scenario::Pairs(args) => 2 * u64::from(args.pairs),
        Scenario::Rate(args) => 2 * u64::from(args.pairs),
        Scenario::Idle(args) => u64::from(args.sockets),
        Scenario::Storm(args) => u64::from(args.users) + u64::from(args.senders),
    };
    // A spawned server inherits the limit and needs a descriptor per socket too, plus its own.
    sockets + 256
}

/// The instants of a pairs/rate run, and µs since its origin (what client ids carry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub origin: Instant,
    pub measure_from: Instant,
    pub measure_until: Instant,
    pub settle_until: Instant,
}

impl Clock {
    pub fn new(warmup: Duration, duration: Duration, settle: Duration) -> Clock {
        let origin = Instant::now();
        Clock {
            origin,
            measure_from: origin + warmup,
            measure_until: origin + warmup + duration,
            settle_until: origin + warmup + duration + settle,
        }
    }

    pub fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    pub fn now_micros(&self) -> u64 {
        self.micros(Instant::now())
    }

    /// Whether an instant, in µs since the origin, lies in the measured window.
    pub fn in_window(&self, micros: u64) -> bool {
        (self.micros(self.measure_from)..self.micros(self.measure_until)).contains(&micros)
    }
}

/// Keeps the first few examples of something that went wrong, and counts the rest.
#[derive(Debug, Default)]
pub(crate) struct Examples {
    first: Vec<String>,
    more: u64,
}

impl Examples {
    const KEPT: usize = 5;

    pub fn add(&mut self, what: impl Into<String>) {
        if self.first.len() < Self::KEPT {
            self.first.push(what.into());
        } else {
            self.more += 1;
        }
    }

    pub fn merge(&mut self, other: Examples) {
        for example in other.first {
            self.add(example);
        }
        self.more += other.more;
    }

    /// One note, e.g. `sockets closed: closed with 1011 …; … (and 12 more)`.
    pub fn note(&self, title: &str) -> Option<String> {
        if self.first.is_empty() {
            return None;
        }
        let more = if self.more > 0 {
            format!(" (and {} more)", self.more)
        } else {
            String::new()
        };
        Some(format!("{title}: {}{more}", self.first.join("; ")))
    }
}
