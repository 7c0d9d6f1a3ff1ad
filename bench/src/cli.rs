//! The command line: clap types and the duration parser, nothing that does I/O.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Drives the real HTTP and WebSocket API of a running teachlyd and prints what it measured.
#[derive(Debug, Clone, Parser)]
#[command(name = "teachly-load", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N sender→recipient pairs in a closed loop: each sender keeps up to --window messages unacknowledged.
    Pairs(PairsArgs),
    /// N pairs in an open loop: a fixed total rate, each message sent at its scheduled instant.
    Rate(RateArgs),
    /// Opens many authenticated sockets, holds them, and measures the server's memory per socket.
    Idle(IdleArgs),
    /// Recipients with an undelivered backlog all reconnect at once.
    Storm(StormArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Pairs(_) => "pairs",
            Scenario::Rate(_) => "rate",
            Scenario::Idle(_) => "idle",
            Scenario::Storm(_) => "storm",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Sender→recipient pairs (two users, one socket each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: u32,
    /// Messages each sender keeps unacknowledged (1 = one at a time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
}

#[derive(Debug, Clone, Args)]
pub struct RateArgs {
    /// Sender→recipient pairs (two users, one socket each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: u32,
    /// Total messages per second over all pairs, spread evenly.
    #[arg(long, default_value_t = 2000.0, value_parser = positive_rate)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Authenticated sockets to open and hold.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sockets: u32,
    /// Sockets per user (the server allows `limits.max_connections_per_user`, 5 by default).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub per_user: u32,
    /// Sockets opened per second.
    #[arg(long, default_value_t = 2000.0, value_parser = positive_rate)]
    pub ramp: f64,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Recipients that reconnect at once.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: u32,
    /// Undelivered messages waiting for each recipient.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub backlog: u32,
    /// Sender users that send the backlog beforehand (one socket each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub senders: u32,
    /// Messages each sender keeps unacknowledged while sending the backlog.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
}

/// Options every scenario takes; they may stand before or after the scenario's name.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of a running teachlyd (repeatable). Senders use the first, recipients the last.
    #[arg(long = "url", value_name = "URL", global = true)]
    pub urls: Vec<String>,
    /// Without --url: the teachlyd binary to start with `serve` [default: target/release/teachlyd].
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "urls")]
    pub spawn: Option<PathBuf>,
    /// With --spawn: `sqlite` (a fresh file), `postgres` (a fresh database on --postgres-admin,
    /// dropped at the end) or a full database URL [default: sqlite].
    #[arg(long, value_name = "DB", global = true, conflicts_with = "urls")]
    pub database: Option<String>,
    /// With --database postgres: the server to create the database on
    /// [default: $TEST_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/postgres].
    #[arg(long, value_name = "URL", global = true, conflicts_with = "urls")]
    pub postgres_admin: Option<String>,
    /// A server process whose CPU and memory are reported (repeatable; known when spawned).
    #[arg(long = "pid", value_name = "PID", global = true)]
    pub pids: Vec<u32>,
    /// Load before the measured window (pairs, rate).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, global = true)]
    pub warmup: Duration,
    /// The measured window (pairs, rate), the hold (idle), the longest wait for the backlog (storm).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub duration: Duration,
    /// The longest the final exactly-once check waits for late deliveries and receipts.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub settle: Duration,
    /// Read /metrics of each server this often for the whole run, as Prometheus would, to measure
    /// what being scraped costs (compare a run without it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub scrape: Option<Duration>,
    /// Print one JSON line with every figure instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: give a positive number per second"
        )),
    }
}

/// Reads `500ms`, `2s`, `1m`, `1h` (a whole number and a unit; `0s` is allowed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a duration: write it like 500ms, 2s, 1m or 1h");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    if millis > 24 * 3_600_000 {
        return Err(format!("`{text}` is longer than a day"));
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_readme_says() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "", "s", "2", "2 s", "1.5s", "-1s", "2sec", "10d", "ms5", "25h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn common_options_stand_on_either_side_of_the_scenario() {
        let cli = Cli::try_parse_from([
            "teachly-load",
            "--json",
            "pairs",
            "--pairs",
            "3",
            "--duration",
            "500ms",
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:2",
        ])
        .unwrap();
        assert!(cli.common.json);
        assert_eq!(cli.common.duration, Duration::from_millis(500));
        assert_eq!(cli.common.urls.len(), 2);
        let Scenario::Pairs(pairs) = cli.scenario else {
            panic!("not pairs")
        };
        assert_eq!((pairs.pairs, pairs.window), (3, 8));
    }

    #[test]
    fn a_url_and_a_server_to_spawn_conflict() {
        let both = Cli::try_parse_from([
            "teachly-load",
            "idle",
            "--url",
            "http://127.0.0.1:1",
            "--spawn",
            "x",
        ]);
        assert!(both.is_err());
        let defaults = Cli::try_parse_from(["teachly-load", "idle", "--url", "http://h:1"]);
        assert!(defaults.is_ok());
        assert!(Cli::try_parse_from(["teachly-load", "rate", "--rate", "0"]).is_err());
        assert!(Cli::try_parse_from(["teachly-load", "pairs", "--window", "0"]).is_err());
    }
}
