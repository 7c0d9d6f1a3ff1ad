//! `teachlyd` itself as a process, for the tests whose subject is the command line: its output,
//! its exit status, and nothing of the test's own environment but `PATH`.

use std::process::{Command, Output};

/// `teachlyd ARGS` with only `PATH` and `env` set, and `TEACHLYD_CONFIG` pointing at an empty file
/// unless `env` names another (no stray /etc/teachlyd/config.toml).
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_teachlyd"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    let empty = std::env::temp_dir().join("teachlyd-empty-config.toml");
    std::fs::write(&empty, "").unwrap();
    command.env("TEACHLYD_CONFIG", &empty);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `teachlyd ARGS` to the end and answers what it printed and how it ended.
pub fn teachlyd(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("teachlyd runs")
}

/// [`teachlyd`] from an async test, without holding up its runtime.
pub async fn teachlyd_async(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::from(command(args, env))
        .output()
        .await
        .expect("teachlyd runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
