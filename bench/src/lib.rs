//! teachly-load: drives the real HTTP and WebSocket API of a running teachlyd (or one it starts)
//! and reports throughput, latency, the server's CPU and memory, and whether every acknowledged
//! message arrived exactly once. See bench/README.md.

mod api;
pub mod cli;
mod ledger;
mod measure;
mod report;
mod scenario;
mod target;
mod text;

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
};

pub use cli::Cli;
pub use ledger::ExactlyOnce;
pub use measure::{Cpu, Percentiles};
pub use report::{Latencies, Memory, Report, Schedule, Sockets, Storm, Throughput};

use crate::target::Target;

/// A command line that cannot run as given (exit code 2), as opposed to a run that failed.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the scenario against the URLs given, or against a teachlyd it starts and stops itself.
/// The spawned server and its database are cleaned up whether the scenario succeeds or not.
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    let mut notes = Vec::new();
    if let Some(warning) = raise_open_file_limit(scenario::sockets_needed(&cli)) {
        eprintln!("teachly-load: {warning}");
        notes.push(warning);
    }
    let target = Target::start(&cli.common).await?;
    let scraper = cli
        .common
        .scrape
        .map(|every| tokio::spawn(scrape(target.metrics_urls(), every)));
    let outcome = tokio::select! {
        report = scenario::run(&cli, &target) => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let exit = target.stop().await;
    let mut report = outcome?;
    report.server_exit = exit;
    report.notes.splice(0..0, notes);
    Ok(report)
}

/// Reads every URL of `urls` once per `every` until aborted, as Prometheus scrapes; a scrape that
/// fails or is refused is reported on stderr and the scraping goes on.
async fn scrape(urls: Vec<String>, every: std::time::Duration) {
    let http = reqwest::Client::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for url in &urls {
            let read = async {
                http.get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await
            };
            if let Err(error) = read.await {
                eprintln!("teachly-load: scraping {url} failed: {error}");
            }
        }
    }
}

/// Raises this process's open-file limit to its hard limit (a spawned server inherits it); answers
/// a warning when even that is below what the run needs.
fn raise_open_file_limit(needed: u64) -> Option<String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Some("cannot read the open-file limit (RLIMIT_NOFILE)".into());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    (soft < needed).then(|| {
        format!(
            "the open-file limit is {soft}, below the {needed} this run needs; raise the hard limit \
             (ulimit -Hn, LimitNOFILE) or open fewer sockets"
        )
    })
}

/// A random number for names that must not collide between runs sharing a server.
pub(crate) fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    RandomState::new().hash_one((nanos, std::process::id()))
}
