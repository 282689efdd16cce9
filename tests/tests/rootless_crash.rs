//! Crash safety of the rootless move (invariant 2 for the new steps):
//! `kill -9` (an abort at an armed FLEET_FAULT point) of the agent at every
//! boundary of the move's steps and in the middle of the remap, and of the
//! controller at the new steps' boundaries; after a restart the run ends
//! with the container moved under its account, and its rollback gives back
//! the very same rootful container with its data exact and the account
//! gone: never anything in between, nothing the run made left behind.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use fleet_core::role::Role;
use fleet_core::tls::TlsFiles;
use fleet_tests::cli::{CliOutput, fleetctl};
use fleet_tests::engine::{Scope, body, docker, test_image};
use fleet_tests::fleet::{AccountCleanup, HOST_LABEL, user_exists, write_policy};
use fleet_tests::pki::TestPki;
use fleet_tests::process::{free_port, spawn_agent, spawn_controller, wait_died};
use fleet_tests::tree::snapshot;
use fleet_tests::{TEST_LABEL, unique};

const SIGABRT: i32 = 6;

struct Setup {
    docker: bollard::Docker,
    _scope: Scope,
    pki: TestPki,
    operator: TlsFiles,
    label: String,
    base: tempfile::TempDir,
    policy: PathBuf,
    name: String,
    id: String,
    account: String,
    bind: PathBuf,
    volume: String,
    _cleanup: AccountCleanup,
}

async fn setup(tag: &str) -> Setup {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let pki = TestPki::new();
    let operator = pki.issue(Role::Operator, "alice", &[]);
    let label = unique(tag);
    let base = tempfile::Builder::new()
        .prefix("fleet-rlc")
        .tempdir_in("/var/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bind = base.path().join("bind");
    std::fs::create_dir_all(bind.join("d")).unwrap();
    for i in 0..20_000 {
        std::fs::write(bind.join(format!("d/f{i}")), format!("{i}")).unwrap();
    }
    std::os::unix::fs::lchown(bind.join("d/f7"), Some(999), Some(999)).unwrap();
    let volume = unique("rlc-vol");
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some([(TEST_LABEL.to_string(), "1".to_string())].into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let data = PathBuf::from(docker.inspect_volume(&volume).await.unwrap().mountpoint);
    std::fs::write(data.join("kept"), b"volume data\n").unwrap();
    let name = format!("{label}-web");
    let account = format!("svc-{tag}-{}", std::process::id() % 100000);
    let mut create = ContainerCreateBody {
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{}:/b", bind.display()),
                format!("{volume}:/data"),
            ]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..body(&image, &["sh", "-c", "cat /data/kept && exec sleep 3600"])
    };
    create.labels = Some([(HOST_LABEL.to_string(), label.clone())].into());
    create.stop_timeout = Some(1);
    let id = scope.run(&name, create).await;
    let policy = write_policy(
        base.path(),
        &format!(
            "[defaults]\nmin_healthy_secs = 1\ndeadline_secs = 30\n\n[[rule]]\nname = \"{name}\"\ntarget = \"rootless\"\naccount = \"{account}\"\n"
        ),
    );
    Setup {
        docker,
        _scope: scope,
        pki,
        operator,
        label,
        base,
        policy,
        name,
        id,
        _cleanup: AccountCleanup(account.clone()),
        account,
        bind,
        volume,
    }
}

impl Setup {
    async fn ctl(&self, address: &str, args: &[&str]) -> CliOutput {
        fleetctl(address, &self.operator, args).await
    }

    async fn migrate(&self, address: &str) -> CliOutput {
        let policy = self.policy.to_str().unwrap();
        self.ctl(
            address,
            &[
                "migrate", "--host", "h1", "--policy", policy, "--yes", "--detach", "-o", "json",
            ],
        )
        .await
    }

    /// Moved: the rootful container is the stopped checkpoint and the
    /// account's engine runs the container.
    async fn moved(&self) -> bool {
        let old = self.docker.inspect_container(&self.id, None).await.unwrap();
        let uid = String::from_utf8_lossy(
            &std::process::Command::new("id")
                .args(["-u", &self.account])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string();
        let running = std::process::Command::new("runuser")
            .args(["-u", &self.account, "--", "env"])
            .arg(format!("XDG_RUNTIME_DIR=/run/user/{uid}"))
            .args([
                "podman",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "inspect",
                "-f",
                "{{.State.Running}}",
                &self.name,
            ])
            .current_dir("/")
            .output()
            .unwrap();
        old.state.unwrap().running == Some(false)
            && old.name.unwrap().contains(".fleet-pre-")
            && String::from_utf8_lossy(&running.stdout).trim() == "true"
    }

    /// Exactly as before: the same container running under its name, the
    /// data's every inode as it was, the volume's data back, no account.
    async fn as_before(
        &self,
        bind_before: &std::collections::BTreeMap<String, fleet_tests::tree::Snap>,
    ) -> Result<(), String> {
        let now = self
            .docker
            .inspect_container(&self.name, None)
            .await
            .map_err(|e| e.to_string())?;
        if now.id.as_deref() != Some(self.id.as_str())
            || now.state.and_then(|s| s.running) != Some(true)
        {
            return Err("not the same rootful container, running".into());
        }
        if snapshot(&self.bind) != *bind_before {
            return Err("the bind's inodes differ".into());
        }
        let data = PathBuf::from(
            self.docker
                .inspect_volume(&self.volume)
                .await
                .unwrap()
                .mountpoint,
        );
        if std::fs::read(data.join("kept")).ok().as_deref() != Some(b"volume data\n".as_slice()) {
            return Err("the volume's data is not back".into());
        }
        if user_exists(&self.account) {
            return Err(format!("the account {} is left behind", self.account));
        }
        Ok(())
    }

    async fn watch_and_roll_back(
        &self,
        address: &str,
        run: &str,
        point: &str,
        bind_before: &std::collections::BTreeMap<String, fleet_tests::tree::Snap>,
    ) {
        let watched = self
            .ctl(address, &["runs", "watch", run, "-o", "json"])
            .await;
        let view = watched.json();
        assert_eq!(view["run"]["phase"], "succeeded", "{point}: {view}");
        assert!(
            self.moved().await,
            "{point}: the resumed run finished the move: {view}"
        );
        let back = self
            .ctl(address, &["rollback", run, "--yes", "-o", "json"])
            .await;
        assert_eq!(back.code, 0, "{point}: {back:?}");
        if let Err(why) = self.as_before(bind_before).await {
            panic!("{point}: after the rollback {why}");
        }
    }
}

fn agent_points() -> Vec<String> {
    let mut points = Vec::new();
    for kind in [
        "user",
        "image",
        "stop",
        "ownership",
        "volumes",
        "place",
        "verify",
    ] {
        points.push(format!("agent:after-intent:{kind}"));
        points.push(format!("agent:after-done:{kind}"));
    }
    points.push("agent:ownership-entries:5000".to_string());
    points
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_at_every_boundary_of_a_rootless_move_ends_moved_and_rolls_back_exactly() {
    let t = setup("rlcrash").await;
    let bind_before = snapshot(&t.bind);
    let tls = t.pki.files("agent");
    let state = t.base.path().join("agent");
    let port = free_port();
    let scope_label = format!("{HOST_LABEL}={}", t.label);
    let first = spawn_agent(&tls, &state, port, &scope_label, None);
    let agent_address = first.address.clone();
    drop(first);
    let controller = fleet_tests::servers::start_controller(
        t.pki.files("controller"),
        &[("h1", agent_address.as_str())],
    )
    .await;
    for point in agent_points() {
        let mut crashing = spawn_agent(&tls, &state, port, &scope_label, Some(&point));
        let started = t.migrate(&controller.address).await;
        assert_eq!(started.code, 0, "{point}: {started:?}");
        let run = started.json()["run"]["id"].as_str().unwrap().to_string();
        let signal = wait_died(&mut crashing.child, Duration::from_secs(120));
        assert_eq!(
            signal,
            Some(SIGABRT),
            "{point}: the agent aborted at the armed point"
        );
        drop(crashing);
        let _agent = spawn_agent(&tls, &state, port, &scope_label, None);
        t.watch_and_roll_back(&controller.address, &run, &point, &bind_before)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_at_the_new_steps_boundaries_resumes_to_a_whole_move() {
    let t = setup("rlccrash").await;
    let bind_before = snapshot(&t.bind);
    let agent = fleet_tests::servers::start_agent(
        t.pki.files("agent"),
        fleet_tests::servers::AgentOptions {
            scope: Some((HOST_LABEL.into(), t.label.clone())),
            ..Default::default()
        },
    )
    .await;
    let tls = t.pki.files("controller");
    let state = t.base.path().join("controller");
    let port = free_port();
    let hosts = [("h1", agent.address.as_str())];
    for kind in ["image", "volumes", "place"] {
        for when in ["after-intent", "after-done"] {
            let point = format!("controller:{when}:{kind}");
            let mut crashing = spawn_controller(&tls, &state, port, &hosts, Some(&point));
            let started = t.migrate(&crashing.address.clone()).await;
            let signal = wait_died(&mut crashing.child, Duration::from_secs(120));
            assert_eq!(
                signal,
                Some(SIGABRT),
                "{point}: the controller aborted ({started:?})"
            );
            drop(crashing);
            let restarted = spawn_controller(&tls, &state, port, &hosts, None);
            let run = match started.code {
                0 => started.json()["run"]["id"].as_str().unwrap().to_string(),
                _ => {
                    let runs = t
                        .ctl(&restarted.address, &["runs", "list", "-o", "json"])
                        .await
                        .json();
                    runs[0]["id"].as_str().unwrap().to_string()
                }
            };
            t.watch_and_roll_back(&restarted.address, &run, &point, &bind_before)
                .await;
        }
    }
}
