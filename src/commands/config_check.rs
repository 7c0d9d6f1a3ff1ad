use crate::{cli::ConfigFile, config::ConfigSource};

use super::{CommandError, load_config};

/// Validates the configuration and prints the effective values with secrets masked.
pub fn run(file: &ConfigFile) -> Result<String, CommandError> {
    let (config, source) = load_config(file)?;
    let modes = config.login_modes()?;
    let source = match source {
        ConfigSource::File(path) => format!("file {}", path.display()),
        ConfigSource::Defaults => "built-in defaults".into(),
    };
    let mut logins = Vec::new();
    if modes.google {
        logins.push("google");
    }
    if modes.dev_login {
        logins.push("dev");
    }
    Ok(format!(
        "# configuration is valid (from {source}, with environment overrides)\n# sign-in: {}\n{}",
        logins.join(", "),
        config.to_masked_toml()
    ))
}
