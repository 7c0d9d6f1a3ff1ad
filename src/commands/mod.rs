//! One function per subcommand. Each answers an `ExitCode` of SPEC §1 through `CommandError`.

use std::process::ExitCode;

use crate::{
    config::{Config, ConfigError, ConfigSource},
    server::StartError,
    store::{Store, StoreError},
};

pub mod admin;
pub mod config_check;
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
