//! One function per subcommand. Each answers an `ExitCode` of SPEC §1 through `CommandError`.

use std::process::ExitCode;

use crate::{
    config::{Config, ConfigError, ConfigSource},
    server::StartError,
    store::{ExistingError, Store, StoreError},
};

pub mod admin;
pub mod config_check;
pub mod messages;
pub mod migrate;
pub mod serve;
mod systemd;

/// A failure and the exit code it maps to (SPEC §1).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the database is unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The daemon, or something it needs, cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Runtime(String),
    /// Arguments that parse one by one but not together.
    #[error("{0}")]
    Usage(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Config(_) => ExitCode::from(78),
            CommandError::DatabaseUnavailable(_) | CommandError::Unavailable(_) => {
                ExitCode::from(69)
            }
            CommandError::PermissionDenied(_) => ExitCode::from(77),
            CommandError::Runtime(_) => ExitCode::from(1),
            CommandError::Usage(_) => ExitCode::from(2),
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            ref unavailable if unavailable.is_unavailable() => {
                CommandError::DatabaseUnavailable(error.to_string())
            }
            other => CommandError::Runtime(other.to_string()),
        }
    }
}

impl From<StartError> for CommandError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Config(error) => CommandError::Config(error),
            StartError::Database(ref store) if store.is_unavailable() => {
                CommandError::DatabaseUnavailable(error.to_string())
            }
            other => CommandError::Runtime(other.to_string()),
        }
    }
}

/// Loads and validates the configuration for a subcommand.
pub fn load_config(file: &crate::cli::ConfigFile) -> Result<(Config, ConfigSource), CommandError> {
    Ok(Config::load(file.config.as_deref())?)
}

pub async fn open_store(config: &Config) -> Result<Store, CommandError> {
    Store::connect(&config.database.url, 2, config.database.write_timeout.0)
        .await
        .map_err(|error| match error {
            StoreError::Other(_) | StoreError::Unavailable(_) => {
                CommandError::DatabaseUnavailable(format!(
                    "cannot open {}: {error}",
                    crate::config::mask_url_password(&config.database.url)
                ))
            }
            other => other.into(),
        })
}

/// Opens a database that exists and is migrated, for commands that work on stored data: they never
/// create a database (a mistyped path would leave an empty one behind) nor migrate one.
pub async fn open_existing_store(config: &Config) -> Result<Store, CommandError> {
    let url = crate::config::mask_url_password(&config.database.url);
    Store::connect_existing(&config.database.url, 2, config.database.write_timeout.0)
        .await
        .map_err(|error| match error {
            ExistingError::NoFile(path) => CommandError::DatabaseUnavailable(format!(
                "cannot open {url}: there is no database file at {}; check database.url \
                 (or DATABASE_URL), or create the database with `teachlyd migrate`",
                path.display()
            )),
            ExistingError::Unmigrated { pending, known } if pending == known => {
                CommandError::Runtime(format!(
                    "the database at {url} has no teachlyd schema; run `teachlyd migrate` first"
                ))
            }
            ExistingError::Unmigrated { pending, .. } => CommandError::Runtime(format!(
                "the database at {url} lacks {pending} migration(s) of this teachlyd; run \
                 `teachlyd migrate` first"
            )),
            ExistingError::Store(error @ (StoreError::Other(_) | StoreError::Unavailable(_))) => {
                CommandError::DatabaseUnavailable(format!("cannot open {url}: {error}"))
            }
            ExistingError::Store(other) => other.into(),
        })
}
