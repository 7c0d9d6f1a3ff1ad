//! What the Debian package (`[package.metadata.deb]`, packaging/) promises before `cargo deb` runs:
//! packaging/check-deb builds the package itself in CI and installs it.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::common::binary::{teachlyd, text};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("Cargo.toml has [package.metadata.deb]")
        .clone()
}

/// The files an asset's source names: a path, or a `*` pattern in its last component.
fn expand(source: &str) -> Vec<PathBuf> {
    let path = repo().join(source);
    let pattern = path.file_name().unwrap().to_str().unwrap().to_owned();
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return vec![path];
    };
    let mut matches: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|file| {
            let name = file.file_name().unwrap().to_str().unwrap();
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
        .collect();
    matches.sort();
    matches
}

fn asset_sources() -> Vec<(String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|asset| {
            let asset = asset.as_array().unwrap();
            (
                asset[0].as_str().unwrap().to_owned(),
                asset[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_asset_exists_and_every_man_page_and_completion_is_packaged() {
    let mut packaged = BTreeSet::new();
    for (source, _) in asset_sources() {
        // cargo deb builds the binary itself.
        if source.starts_with("target/") {
            continue;
        }
        let files = expand(&source);
        assert!(
            !files.is_empty() && files.iter().all(|file| file.is_file()),
            "asset {source} names no file"
        );
        packaged.extend(files);
    }
    for dir in ["man", "completions"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let file = entry.unwrap().path();
            assert!(
                packaged.contains(&file),
                "{} is not in the package's assets",
                file.display()
            );
        }
    }
    let destinations: Vec<String> = asset_sources().into_iter().map(|(_, to)| to).collect();
    for expected in [
        "usr/bin/",
        "etc/teachlyd/config.toml",
        "usr/share/bash-completion/completions/teachlyd",
        "usr/share/zsh/vendor-completions/_teachlyd",
        "usr/share/fish/vendor_completions.d/teachlyd.fish",
    ] {
        assert!(
            destinations.iter().any(|to| to == expected),
            "nothing is installed to {expected}"
        );
    }
}

#[test]
fn the_maintainer_scripts_hand_over_to_the_generated_systemd_snippets() {
    let metadata = deb_metadata();
    let scripts = repo().join(metadata["maintainer-scripts"].as_str().unwrap());
    for name in ["postinst", "postrm"] {
        let path = scripts.join(name);
        let script = std::fs::read_to_string(&path).unwrap();
        assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{name}");
        // cargo deb puts its unit enable/start/stop snippets where this token stands.
        assert!(
            script.contains("\n#DEBHELPER#\n"),
            "{name} lacks #DEBHELPER#"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{name} is not executable");
        let check = std::process::Command::new("sh")
            .args(["-n", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(check.status.success(), "{name}: {}", text(&check.stderr));
    }
    let units = repo().join(metadata["systemd-units"]["unit-scripts"].as_str().unwrap());
    assert!(units.join("teachlyd.service").is_file());

    let changelog = std::fs::read_to_string(repo().join("packaging/debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap();
    let version = format!("teachlyd ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&version),
        "the changelog's newest entry `{first}` is not the package's version"
    );
}

#[test]
fn the_packaged_configuration_is_valid_and_keeps_state_where_the_unit_puts_it() {
    let config = repo().join("packaging/config.toml");
    let output = teachlyd(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[],
    );
    let shown = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for line in [
        "url = \"sqlite:///var/lib/teachlyd/teachlyd.db\"",
        "socket = \"/run/teachlyd/admin.sock\"",
        "listen = \"127.0.0.1:8000\"",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line} missing in:\n{shown}"
        );
    }
    // The unit's directories are the ones the configuration names.
    let unit = std::fs::read_to_string(repo().join("systemd/teachlyd.service")).unwrap();
    for line in [
        "StateDirectory=teachlyd",
        "RuntimeDirectory=teachlyd",
        "WorkingDirectory=/var/lib/teachlyd",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
}
