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
    /// Ask the running daemon over its admin socket
    #[command(subcommand)]
    Admin(AdminCommand),
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

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List this instance's live WebSocket connections
    Connections(AdminArgs),
    /// Show uptime, version, connections, online users and messages stored since start
    Stats(AdminArgs),
    /// Close a user's sockets with close code 4001 (the client may reconnect unless --revoke)
    Kick(KickArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// The daemon's admin socket (default: admin.socket of the configuration)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON for scripts instead of a table for people
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KickArgs {
    /// The user whose sockets to close
    #[arg(value_name = "USER_ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub user_id: i64,
    /// Also revoke the user's refresh tokens: they must sign in again once their access token expires
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}
