//! `systemd/teachlyd.service`, checked by systemd's own tools. `systemd-analyze verify` refuses a
//! unit whose `ExecStart` binary does not exist, so a copy points at the binary this build made.

use std::{path::Path, process::Command};

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/teachlyd.service"))
        .unwrap()
}

/// The unit with `ExecStart` pointing at the built binary, in a directory of its own.
fn installable_copy(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("teachlyd-unit-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("teachlyd.service");
    std::fs::write(
        &path,
        unit().replace("/usr/bin/teachlyd", env!("CARGO_BIN_EXE_teachlyd")),
    )
    .unwrap();
    path
}

#[test]
fn the_unit_verifies_cleanly() {
    let path = installable_copy("verify");
    // The man pages it names are checked below: they are not installed on a build machine.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze runs (.ci/run installs it)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    // Unknown keys and bad values are only warnings with exit code 0.
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn the_unit_is_a_notify_service_with_reload_watchdog_and_its_own_user() {
    let unit = unit();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "User=teachlyd",
        "StateDirectory=teachlyd",
        "RuntimeDirectory=teachlyd",
        "ConfigurationDirectory=teachlyd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        // A bad configuration (exit 78) fails the unit instead of restarting it forever.
        "RestartPreventExitStatus=78",
        // The admin socket is handed to admin.group, which @privileged alone would forbid.
        "SystemCallFilter=@chown",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for page in ["teachlyd.1", "teachlyd.toml.5"] {
        assert!(
            man.join(page).exists(),
            "Documentation= names {page}, which man/ lacks"
        );
    }
}

#[test]
fn the_unit_keeps_its_hardening() {
    let path = installable_copy("security");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze runs");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for teachlyd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    // 1.4 when written; "OK" in systemd's words ends at 2.0.
    assert!(exposure <= 2.0, "exposure {exposure}: {report}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
