//! `teachlyd`: parse the command line, run the subcommand, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use teachlyd::{
    cli::{AdminCommand, Cli, Command, ConfigCommand, MessagesCommand},
    commands::{self, CommandError},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("teachlyd: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome: Result<Option<String>, CommandError> = runtime.block_on(async {
        match &cli.command {
            Command::Serve(args) => commands::serve::run(args).await.map(|()| None),
            Command::Migrate(args) => commands::migrate::run(args).await.map(Some),
            Command::Admin(AdminCommand::Connections(args)) => {
                commands::admin::connections(args).await.map(Some)
            }
            Command::Admin(AdminCommand::Stats(args)) => {
                commands::admin::stats(args).await.map(Some)
            }
            Command::Admin(AdminCommand::Kick(args)) => commands::admin::kick(args).await.map(Some),
            Command::Messages(MessagesCommand::Purge(args)) => {
                commands::messages::purge(args).await.map(Some)
            }
            // The export writes its rows itself, as they are read.
            Command::Messages(MessagesCommand::Export(args)) => {
                commands::messages::export(args).await.map(|()| None)
            }
            Command::Config(ConfigCommand::Check(file)) => {
                commands::config_check::run(file).map(Some)
            }
        }
    });
    // A task still blocked on a stalled database must not keep the process alive past shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(output) => {
            if let Some(output) = output {
                print!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("teachlyd: {error}");
            error.exit_code()
        }
    }
}
