//! The command line (SPEC §1). Only clap types live here; the man-page test reads them too.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "teachlyd",
    version,
    about = "Real-time 1:1 chat backend for Teachly",
    long_about = "teachlyd serves Teachly's chat: an HTTP and WebSocket API over PostgreSQL or an \
                  embedded SQLite database, with Google sign-in, delivery and read receipts and \
                  content checks."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP and WebSocket API (applies pending migrations first unless database.auto_migrate = false)
    Serve(ServeArgs),
    /// Apply pending database migrations, or list them with --status
    Migrate(MigrateArgs),
    /// Work with the configuration file
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
pub struct ConfigFile {
    /// The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// Listen on this address instead of server.listen (e.g. 127.0.0.1:8000)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// List applied and pending migrations instead of applying them
    #[arg(long)]
    pub status: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values, secrets masked
    Check(ConfigFile),
}
