//! Parse, run on a multi-thread runtime, print, and turn the verdict into the exit code.

use std::process::ExitCode;

use clap::Parser;
use teachly_load::{Cli, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.common.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("teachly-load: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(teachly_load::run(cli)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("teachly-load: {error:#}");
            return if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    // Sockets still closing in the background must not hold the exit.
    runtime.shutdown_background();
    if json {
        println!("{}", report.to_json());
    } else {
        report.print_table();
    }
    let wrong = report.exactly_once.wrong();
    if wrong.is_empty() {
        ExitCode::SUCCESS
    } else {
        let counts: Vec<String> = wrong
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        eprintln!(
            "teachly-load: the exactly-once check failed: {}",
            counts.join(", ")
        );
        ExitCode::FAILURE
    }
}
