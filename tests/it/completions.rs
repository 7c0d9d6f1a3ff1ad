//! `completions/`: bash, zsh and fish completions generated from the clap definitions and checked
//! in, so a package can install them without running the binary.
//!
//! After changing the command line: `TEACHLYD_WRITE_MAN=1 cargo test --test it completions::`
//! rewrites them (the same switch as the man pages).

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::{Shell, generate};
use teachlyd::cli::Cli;

const SCRIPTS: [(Shell, &str); 3] = [
    (Shell::Bash, "teachlyd.bash"),
    (Shell::Zsh, "_teachlyd"),
    (Shell::Fish, "teachlyd.fish"),
];

fn completions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("completions")
}

fn generated(shell: Shell) -> String {
    let mut script = Vec::new();
    generate(shell, &mut Cli::command(), "teachlyd", &mut script);
    String::from_utf8(script).expect("scripts are text")
}

#[test]
fn the_checked_in_completions_are_those_the_command_line_generates() {
    let dir = completions_dir();
    for (shell, file) in SCRIPTS {
        let script = generated(shell);
        if std::env::var_os("TEACHLYD_WRITE_MAN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), &script).unwrap();
        }
        let checked_in = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            checked_in == script,
            "completions/{file} is stale; run TEACHLYD_WRITE_MAN=1 cargo test --test it completions::"
        );
    }
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let script = completions_dir().join("teachlyd.bash");
    let complete = |words: &str| {
        let count = words.split_whitespace().count() - usize::from(!words.ends_with(' '));
        let program = format!(
            "source '{}'; COMP_WORDS=({words} ''); COMP_CWORD={count}; \
             _teachlyd teachlyd; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let output = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let top = complete("teachlyd ");
    for subcommand in ["serve", "migrate", "admin", "config"] {
        assert!(
            top.lines().any(|line| line == subcommand),
            "{subcommand} in {top}"
        );
    }
    let admin = complete("teachlyd admin ");
    for subcommand in ["connections", "stats", "kick"] {
        assert!(
            admin.lines().any(|line| line == subcommand),
            "{subcommand} in {admin}"
        );
    }
    let kick = complete("teachlyd admin kick 7 ");
    assert!(kick.lines().any(|line| line == "--revoke"), "{kick}");
}
