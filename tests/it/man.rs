//! `man/`: the pages of teachlyd(1) and its subcommands are generated from the clap definitions
//! and checked in; teachlyd.toml(5) is written by hand. Both are tested against what they describe.
//!
//! After changing the command line: `TEACHLYD_WRITE_MAN=1 cargo test --test it man::` rewrites the
//! generated pages.

use std::{collections::BTreeMap, path::Path};

use clap::CommandFactory;
use teachlyd::cli::Cli;

fn generated_pages() -> BTreeMap<String, String> {
    let dir = std::env::temp_dir().join(format!("teachlyd-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    clap_mangen::generate_to(Cli::command(), &dir).expect("the pages render");
    let pages = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    pages
}

#[test]
fn the_command_pages_in_man_are_those_the_command_line_generates() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let generated = generated_pages();
    assert!(
        generated.contains_key("teachlyd.1") && generated.contains_key("teachlyd-serve.1"),
        "{:?}",
        generated.keys()
    );
    if std::env::var_os("TEACHLYD_WRITE_MAN").is_some() {
        for (name, page) in &generated {
            std::fs::write(man.join(name), page).unwrap();
        }
    }
    let checked_in: BTreeMap<String, String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "1"))
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect();
    let stale: Vec<&String> = generated
        .keys()
        .filter(|name| checked_in.get(*name) != generated.get(*name))
        .collect();
    let extra: Vec<&String> = checked_in
        .keys()
        .filter(|name| !generated.contains_key(*name))
        .collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "man/ is stale (missing or different: {stale:?}; no longer generated: {extra:?}); \
         run TEACHLYD_WRITE_MAN=1 cargo test --test it man:: and delete what is no longer generated"
    );
}

/// Every key of `config.toml.example` (which a config test keeps true to the code) is in the page.
#[test]
fn teachlyd_toml_5_describes_every_key_of_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config.toml.example")).unwrap();
    let page = std::fs::read_to_string(root.join("man/teachlyd.toml.5")).unwrap();
    let mut section = String::new();
    let mut missing = Vec::new();
    for line in example.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.to_owned();
            assert!(
                page.contains(&format!(".SH [{section}]")),
                "no section [{section}] in the page"
            );
            continue;
        }
        let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && !page.contains(&format!("\\fB{key}\\fR"))
        {
            missing.push(format!("{section}.{key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "keys of config.toml.example missing from man/teachlyd.toml.5: {missing:?}"
    );
}
