//! The command line (SPEC §1). Only clap types live here; the man-page test reads them too.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;

use crate::{config::HumanDuration, domain::selection::parse_instant};

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
    /// Purge or export stored messages, working on the database directly (the daemon may be running)
    #[command(subcommand)]
    Messages(MessagesCommand),
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
    /// Also end every session of the user: their refresh and access tokens stop working at once, so they must sign in again
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Delete messages older than a duration, in short batches, and print how many
    #[command(
        long_about = "Delete messages older than a duration, in short batches, and print how many \
                      (`purged N messages`, or `would purge N messages (dry run)` with --dry-run).\n\n\
                      Each batch is deleted by id in a transaction of its own that takes milliseconds, \
                      and the purge rests between batches, so a running `teachlyd serve` keeps \
                      committing messages meanwhile. The database must exist and be migrated; \
                      nothing is created or migrated."
    )]
    Purge(PurgeArgs),
    /// Write messages out as JSON lines or CSV, oldest first, in constant memory
    #[command(
        long_about = "Write messages out as JSON lines or CSV, oldest first (by id), in constant \
                      memory: rows are read from the database as they are written out.\n\n\
                      Each message has id, from_id, to_id, content (as stored: sanitized), \
                      timestamp, delivered_at, seen_at (RFC 3339 UTC, or null when unset) and \
                      client_id (or null). A reader that closes the output early (`| head`) ends \
                      the export quietly with exit status 0. The database must exist and be \
                      migrated; nothing is created or migrated."
    )]
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// Delete messages sent longer ago than this: a whole number and a unit, like 90d, 12h, 15m or 30s
    #[arg(long, value_name = "DURATION")]
    pub older_than: HumanDuration,
    /// Only messages this user sent or received
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub user: Option<i64>,
    /// Count the messages a purge would delete, and delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How many messages one transaction deletes
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::store::DEFAULT_PURGE_BATCH,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub batch_size: u32,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    /// Only messages this user sent or received
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub user: Option<i64>,
    /// Only messages sent at or after T: RFC 3339 (2026-01-31T12:00:00Z) or a date (2026-01-31, midnight UTC)
    #[arg(long, value_name = "T", value_parser = parse_instant)]
    pub since: Option<OffsetDateTime>,
    /// Only messages sent before T (not at T): RFC 3339 or a date, like --since
    #[arg(long, value_name = "T", value_parser = parse_instant)]
    pub until: Option<OffsetDateTime>,
    /// The output format
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Write to FILE (created, or truncated) instead of standard output; `-` is standard output
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line
    Jsonl,
    /// A header row, then one row per message (RFC 4180 quoting); an empty field is null
    Csv,
}
