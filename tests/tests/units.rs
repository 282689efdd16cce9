//! The units a rootless move writes, checked by the real tools: every
//! Quadlet `.container` by Debian trixie's Quadlet generator (5.4.2,
//! unpacked by scripts/quadlet.sh, never installed: ROOTLESS.md §9.6) for
//! the Podman versions fleet gates keys by, and the user `.service` of
//! Podman < 4.4 by `systemd-analyze verify`. Each generated command must
//! carry what the container was placed with.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use fleet_agent::rootless::install::validate;
use fleet_agent::rootless::unit::{UnitDirs, UnitSource, render};
use fleet_core::capabilities::UnitFlavour;
use serde_json::json;

/// The newer generator: fetched once into a cache; a failure fails loudly.
fn generator() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/quadlet.sh");
    let out = std::process::Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} could not provide a Quadlet generator: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A create request as the place step makes it (`rootless::place::rootless_body`).
fn body() -> serde_json::Value {
    json!({
        "Image": "docker.io/library/web:1.2",
        "Cmd": ["sh", "-c", "echo \"a b\" > /data/x; exec httpd -f -p 8080"],
        "Entrypoint": ["/bin/entry"],
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello world", "PCT=100%"],
        "User": "999:999",
        "WorkingDir": "/srv",
        "Labels": {"app": "web", "PODMAN_SYSTEMD_UNIT": "old.service"},
        "StopTimeout": 20,
        "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/ || exit 1"], "Interval": 10_000_000_000i64, "Retries": 3},
        "HostConfig": {
            "NetworkMode": "slirp4netns",
            "UsernsMode": "keep-id:uid=999,gid=999",
            "Binds": ["/srv/web:/data"],
            "Mounts": [{"Type": "volume", "Source": "webvol", "Target": "/vol"}],
            "Tmpfs": {"/run": "rw,size=64m"},
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]},
            "CapDrop": ["NET_RAW"],
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
            "ReadonlyRootfs": true
        }
    })
}

fn source<'a>(body: &'a serde_json::Value, release: (u32, u32)) -> UnitSource<'a> {
    UnitSource {
        name: "web",
        account: "svc-web",
        uid: 61000,
        podman: Path::new("/usr/bin/podman"),
        global_args: vec!["--runtime".into(), "runc".into()],
        body,
        restart_policy: "unless-stopped",
        stop_timeout: Some(20),
        release,
    }
}

#[test]
fn quadlet_units_pass_the_real_generator_for_each_gated_podman_version() {
    let generator = generator();
    let body = body();
    let dirs = UnitDirs::default();
    for release in [(4, 6), (4, 8), (5, 4)] {
        let unit = render(UnitFlavour::Quadlet, &source(&body, release), &dirs);
        assert_eq!(
            unit.path,
            PathBuf::from("/etc/containers/systemd/users/61000/web.container")
        );
        let said = validate(&unit, &generator)
            .unwrap_or_else(|e| panic!("{release:?}: {e}\n{}", unit.text));
        let exec = said
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in {said}"));
        for needle in [
            "--userns keep-id:uid=999,gid=999",
            "--user 999:999",
            "--publish 127.0.0.1:18080:8080",
            "--network slirp4netns",
            "-v /srv/web:/data",
            "--runtime runc",
            "--read-only",
            "docker.io/library/web:1.2",
        ] {
            assert!(
                exec.contains(needle),
                "{release:?}: {needle} not in {exec}\n{}",
                unit.text
            );
        }
        assert!(said.contains("Restart=always"), "{said}");
        assert!(
            !unit.text.contains("old.service"),
            "the old unit label is dropped"
        );
        // Keys the version lacks go through PodmanArgs, never as keys.
        if release < (5, 0) {
            assert!(
                !unit.text.contains("\nStopTimeout=") && !unit.text.contains("\nEntrypoint="),
                "{}",
                unit.text
            );
            assert!(exec.contains("--stop-timeout 20"), "{exec}");
        }
        if release < (4, 8) {
            assert!(!unit.text.contains("GlobalArgs="), "{}", unit.text);
        }
    }
}

#[test]
fn a_bad_key_is_refused_by_the_generator_before_anything_is_installed() {
    let generator = generator();
    let body = body();
    let mut unit = render(
        UnitFlavour::Quadlet,
        &source(&body, (5, 4)),
        &UnitDirs::default(),
    );
    unit.text = unit
        .text
        .replace("[Container]\n", "[Container]\nMemory=512m\n");
    let e = validate(&unit, &generator).unwrap_err().to_string();
    assert!(e.contains("Memory"), "{e}");
}

#[test]
fn the_user_service_of_older_podman_passes_systemd_analyze() {
    let body = body();
    let dir = tempfile::tempdir().unwrap();
    let dirs = UnitDirs {
        systemd_user: dir.path().to_path_buf(),
        quadlet_users: dir.path().join("q"),
    };
    let unit = render(UnitFlavour::UserService, &source(&body, (4, 3)), &dirs);
    assert_eq!(unit.service, "fleet-web.service");
    std::fs::write(&unit.path, &unit.text).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit.path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| l.contains(unit.path.to_str().unwrap()))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "{said}\n{}",
        unit.text
    );
    for needle in [
        "ConditionUser=svc-web",
        "Restart=always",
        "TimeoutStopSec=80",
        "--replace",
        "--rm",
        "/usr/bin/podman --runtime runc run",
        "--env \"GREETING=hello world\"",
        "--env PCT=100%%",
        "--publish 127.0.0.1:18080:8080",
        "WantedBy=default.target",
    ] {
        assert!(unit.text.contains(needle), "{needle} not in\n{}", unit.text);
    }
}
