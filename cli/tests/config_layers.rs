//! The real fleetctl binary: where it takes its settings from (flags >
//! FLEETCTL_* env > ~/.config/fleetctl/config.toml), and its generated docs.

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use fleet_core::pki::{self, IssueRequest, Validity};
use fleet_core::role::Role;

fn certs(dir: &Path) {
    pki::init_ca(dir, false).unwrap();
    let request = IssueRequest {
        role: Role::Operator,
        name: "alice".into(),
        sans: vec![],
        validity: Validity::days_from_now(1).unwrap(),
    };
    pki::issue(dir, dir, &request, false).unwrap();
}

fn fleetctl(config_home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    command
        .env_clear()
        .env("XDG_CONFIG_HOME", config_home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// Runs `whoami`, which fails (nothing listens on port 1-3 of 127.0.0.1):
/// the error names the address that was used.
fn address_used(command: &mut Command) -> String {
    let out = command.arg("whoami").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let port = stderr
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.chars().next())
        .unwrap_or_else(|| panic!("no address in: {stderr}"));
    format!("127.0.0.1:{port}")
}

#[test]
fn flags_win_over_env_which_wins_over_the_config_file() {
    let home = tempfile::tempdir().unwrap();
    let pki_dir = home.path().join("pki");
    certs(&pki_dir);
    let config_dir = home.path().join("fleetctl");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "controller = \"127.0.0.1:1\"\nca = \"{0}/ca.pem\"\ncert = \"{0}/alice.pem\"\nkey = \"{0}/alice.key\"\n",
            pki_dir.display()
        ),
    )
    .unwrap();

    assert_eq!(
        address_used(&mut fleetctl(home.path())),
        "127.0.0.1:1",
        "from the file"
    );
    assert_eq!(
        address_used(fleetctl(home.path()).env("FLEETCTL_CONTROLLER", "127.0.0.1:2")),
        "127.0.0.1:2",
        "env over file"
    );
    assert_eq!(
        address_used(
            fleetctl(home.path())
                .env("FLEETCTL_CONTROLLER", "127.0.0.1:2")
                .args(["--controller", "127.0.0.1:3"])
        ),
        "127.0.0.1:3",
        "flag over env"
    );

    // With no setting anywhere, say where one could come from.
    let empty = tempfile::tempdir().unwrap();
    let out = fleetctl(empty.path()).arg("whoami").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no controller given") && stderr.contains("FLEETCTL_CONTROLLER"),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let out = fleetctl(home.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("fleetctl") && script.contains("--fail-on"),
        "bash completion"
    );
    let out = fleetctl(home.path()).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH fleetctl"),
        "{page}"
    );
    let dir = home.path().join("man");
    let out = fleetctl(home.path())
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        dir.join("fleetctl-audit.1").exists(),
        "one page per subcommand"
    );
}
