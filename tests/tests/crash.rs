//! Invariant 2 through the whole product: `kill -9` of the controller at
//! every step boundary of a container's migration, and of the agent
//! before and inside the ownership walk; after a restart the run ends with
//! the container migrated or exactly as before — never in between. The
//! exact points are hit with FLEET_FAULT (a documented test aid that only
//! a process's own environment can arm).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use fleet_core::role::Role;
use fleet_core::tls::TlsFiles;
use fleet_tests::cli::{CliOutput, fleetctl};
use fleet_tests::engine::{Scope, body, docker, test_image};
use fleet_tests::fleet::{HOST_LABEL, UsersCleanup, seen};
use fleet_tests::host::bind;
use fleet_tests::pki::TestPki;
use fleet_tests::process::{free_port, spawn_agent, spawn_controller, wait_died};
use fleet_tests::servers::{AgentOptions, start_agent};
use fleet_tests::tree::snapshot;
use fleet_tests::unique;
use serde_json::Value;
use tempfile::TempDir;

const POLICY: &str = "[defaults]\nmin_healthy_secs = 1\ndeadline_secs = 30\n";
const SIGABRT: i32 = 6;

fn data_tree(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir.join("d/e")).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("d/e/f{i}")), format!("{i}")).unwrap();
    }
    std::fs::write(dir.join("d/app"), b"app").unwrap();
    std::os::unix::fs::lchown(dir.join("d/app"), Some(1000), Some(1000)).unwrap();
}

async fn ctl(address: &str, tls: &TlsFiles, args: &[&str]) -> CliOutput {
    fleetctl(address, tls, args).await
}

/// The newest run's id.
async fn newest_run(address: &str, tls: &TlsFiles) -> String {
    let runs = ctl(address, tls, &["runs", "list", "-o", "json"])
        .await
        .json();
    runs[0]["id"].as_str().unwrap().to_string()
}

struct Subject {
    name: String,
    id: String,
    data: std::path::PathBuf,
    tree: std::collections::BTreeMap<String, fleet_tests::tree::Snap>,
}

impl Subject {
    /// Migrated, or exactly as before: nothing else is acceptable.
    async fn migrated_or_untouched(&self, docker: &bollard::Docker) -> bool {
        let now = seen(docker, &self.name).await;
        let tree = snapshot(&self.data);
        if now.id == self.id {
            assert_eq!(now.user, "", "the old container is back as it was");
            assert!(now.running, "the old container runs again");
            assert_eq!(tree, self.tree, "ownership exactly as before");
            false
        } else {
            assert!(now.running && now.is_non_root(), "{now:?}");
            assert_eq!(
                tree["d/e/f0"].uid,
                now.process_uid.unwrap(),
                "files moved with it"
            );
            assert_eq!(tree["d/app"].uid, 1000);
            true
        }
    }
}

/// What both tests start from: a CA and the operator alice, host `label`'s
/// container `{label}-db` with a data tree bind-mounted at /data (the
/// subject, as it is before any run), the policy file, and a work dir.
struct Setup {
    docker: bollard::Docker,
    _scope: Scope,
    pki: TestPki,
    operator: TlsFiles,
    label: String,
    base: TempDir,
    /// The policy file's path.
    policy: String,
    subject: Subject,
    _users: UsersCleanup,
}

/// The setup for host `unique(prefix)` with a data tree of `files` files.
async fn setup(prefix: &str, files: usize) -> Setup {
    setup_running(prefix, files, &["sleep", "3600"]).await
}

/// The same, the subject running `cmd`.
async fn setup_running(prefix: &str, files: usize, cmd: &[&str]) -> Setup {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let pki = TestPki::new();
    let operator = pki.issue(Role::Operator, "alice", &[]);
    let label = unique(prefix);
    let base = tempfile::tempdir().unwrap();
    let policy = base.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.to_str().unwrap().to_string();
    let data = base.path().join("data");
    data_tree(&data, files);
    let name = format!("{label}-db");
    let mut create = body(&image, cmd);
    create.labels = Some([(HOST_LABEL.to_string(), label.clone())].into());
    create.stop_timeout = Some(1);
    create.host_config = Some(bind(&data, "/data"));
    let id = scope.run(&name, create).await;
    let _users = UsersCleanup(vec![fleet_core::names::derive_user_name(&name)]);
    Setup {
        docker,
        _scope: scope,
        pki,
        operator,
        label,
        base,
        policy,
        subject: Subject {
            name,
            id,
            tree: snapshot(&data),
            data,
        },
        _users,
    }
}

impl Setup {
    /// An agent in this test's process, scoped to the subject's host.
    async fn in_process_agent(&self) -> fleet_tests::servers::RunningAgent {
        start_agent(
            self.pki.files("agent"),
            AgentOptions {
                scope: Some((HOST_LABEL.into(), self.label.clone())),
                ..AgentOptions::default()
            },
        )
        .await
    }

    /// `fleetctl migrate` of host h1 under the policy, detached.
    async fn migrate(&self, address: &str) -> CliOutput {
        ctl(
            address,
            &self.operator,
            &[
                "migrate",
                "--host",
                "h1",
                "--policy",
                &self.policy,
                "--yes",
                "--detach",
                "-o",
                "json",
            ],
        )
        .await
    }

    /// Rolls back the finished run `run` (after fault `point`) and checks
    /// the subject is exactly as before.
    async fn roll_back(&self, address: &str, run: &str, point: &str) {
        let back = ctl(
            address,
            &self.operator,
            &["rollback", run, "--yes", "-o", "json"],
        )
        .await;
        assert_eq!(back.code, 0, "{point}: {back:?}");
        assert!(
            !self.subject.migrated_or_untouched(&self.docker).await,
            "{point}: rolled back"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_at_every_step_boundary_resumes_to_a_whole_migration() {
    let t = setup("crash", 20_000).await;
    let agent = t.in_process_agent().await;
    let tls = t.pki.files("controller");
    let state = t.base.path().join("controller");
    let port = free_port();
    let hosts = [("h1", agent.address.as_str())];
    let mut points = Vec::new();
    for kind in ["backup", "user", "stop", "ownership", "recreate", "verify"] {
        points.push(format!("controller:after-intent:{kind}"));
        points.push(format!("controller:after-done:{kind}"));
    }
    // Once in the middle of the ownership walk (the agent reports progress
    // every 4,096 entries; the tree has 20,000).
    points.push("controller:ownership-entries:4096".to_string());
    for point in &points {
        let mut crashing = spawn_controller(&tls, &state, port, &hosts, Some(point));
        let address = crashing.address.clone();
        let started = t.migrate(&address).await;
        let signal = wait_died(&mut crashing.child, Duration::from_secs(90));
        assert_eq!(
            signal,
            Some(SIGABRT),
            "{point}: the controller aborted at the armed point ({started:?})"
        );
        drop(crashing);
        let restarted = spawn_controller(&tls, &state, port, &hosts, None);
        let run = match started.code {
            0 => started.json()["run"]["id"].as_str().unwrap().to_string(),
            _ => newest_run(&restarted.address, &t.operator).await,
        };
        let watched = ctl(
            &restarted.address,
            &t.operator,
            &["runs", "watch", &run, "-o", "json"],
        )
        .await;
        let view: Value = watched.json();
        assert!(
            t.subject.migrated_or_untouched(&t.docker).await,
            "{point}: a resumed run finishes the migration: {view}"
        );
        assert_eq!(view["run"]["phase"], "succeeded", "{point}: {view}");
        assert_eq!(watched.code, 0);
        // Reset for the next point: the rollback of the finished run.
        t.roll_back(&restarted.address, &run, point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_at_every_step_boundary_and_inside_the_walk_ends_whole() {
    let t = setup("acrash", 20_000).await;
    let tls = t.pki.files("agent");
    let agent_state = t.base.path().join("agent");
    let agent_port = free_port();
    let scope_label = format!("{HOST_LABEL}={}", t.label);
    let first = spawn_agent(&tls, &agent_state, agent_port, &scope_label, None);
    let agent_address = first.address.clone();
    drop(first);
    let controller = fleet_tests::servers::start_controller(
        t.pki.files("controller"),
        &[("h1", agent_address.as_str())],
    )
    .await;
    let mut points = Vec::new();
    for kind in ["backup", "user", "stop", "ownership", "recreate", "verify"] {
        points.push(format!("agent:after-intent:{kind}"));
        points.push(format!("agent:after-done:{kind}"));
    }
    points.push("agent:ownership-entries:5000".to_string());
    for point in &points {
        let mut crashing = spawn_agent(&tls, &agent_state, agent_port, &scope_label, Some(point));
        let started = t.migrate(&controller.address).await;
        assert_eq!(started.code, 0, "{point}: {started:?}");
        let run = started.json()["run"]["id"].as_str().unwrap().to_string();
        let signal = wait_died(&mut crashing.child, Duration::from_secs(90));
        assert_eq!(
            signal,
            Some(SIGABRT),
            "{point}: the agent aborted at the armed point"
        );
        drop(crashing);
        // The agent comes back (as systemd would restart it) within the
        // controller's agent deadline.
        let _agent = spawn_agent(&tls, &agent_state, agent_port, &scope_label, None);
        let watched = ctl(
            &controller.address,
            &t.operator,
            &["runs", "watch", &run, "-o", "json"],
        )
        .await;
        let view = watched.json();
        let migrated = t.subject.migrated_or_untouched(&t.docker).await;
        assert!(
            migrated,
            "{point}: the step was reconciled and the migration finished: {view}"
        );
        assert_eq!(view["run"]["phase"], "succeeded", "{point}: {view}");
        t.roll_back(&controller.address, &run, point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_away_past_its_deadline_fails_the_step_and_is_reconciled_when_it_returns() {
    let t = setup("away", 50).await;
    let tls = t.pki.files("agent");
    let agent_state = t.base.path().join("agent");
    let agent_port = free_port();
    let scope_label = format!("{HOST_LABEL}={}", t.label);
    let point = "agent:after-intent:verify";
    let mut crashing = spawn_agent(&tls, &agent_state, agent_port, &scope_label, Some(point));
    let controller_tls = t.pki.files("controller");
    let controller_state = t.base.path().join("controller");
    let port = free_port();
    let hosts = [("h1", crashing.address.clone())];
    let hosts: Vec<(&str, &str)> = hosts.iter().map(|(n, a)| (*n, a.as_str())).collect();
    // The controller waits reconcile_grace_secs (5 here) for the agent, then
    // ends the run and goes on trying in the background.
    let controller = spawn_controller(&controller_tls, &controller_state, port, &hosts, None);
    let started = ctl(
        &controller.address,
        &t.operator,
        &[
            "migrate",
            "--host",
            "h1",
            "--policy",
            &t.policy,
            "--agent-deadline",
            "2",
            "--yes",
            "--detach",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(started.code, 0, "{started:?}");
    let run = started.json()["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_died(&mut crashing.child, Duration::from_secs(90)),
        Some(SIGABRT)
    );
    drop(crashing);
    // Past the deadline the step counts as failed; the undo cannot reach
    // the agent either: the run ends (halted: one failed host, budget 0)
    // with the container still to be put back.
    let watched = ctl(
        &controller.address,
        &t.operator,
        &["runs", "watch", &run, "-o", "json"],
    )
    .await;
    let view = watched.json();
    assert_eq!(watched.code, 6, "{view}");
    assert_eq!(view["containers"][0]["state"], "needs-reconcile", "{view}");
    assert!(
        view["containers"][0]["steps"]
            .to_string()
            .contains("verify step: agent unreachable"),
        "{view}"
    );
    assert!(
        view["run"]["note"]
            .as_str()
            .unwrap()
            .contains("keeps trying"),
        "{view}"
    );
    // The controller restarts while the agent is still away; then the agent
    // returns: the restarted controller puts the container back.
    drop(controller);
    let controller = spawn_controller(&controller_tls, &controller_state, port, &hosts, None);
    let _agent = spawn_agent(&tls, &agent_state, agent_port, &scope_label, None);
    let show_args = ["runs", "show", run.as_str(), "-o", "json"];
    let view = fleet_tests::wait_for(
        "the container to be put back",
        Duration::from_secs(90),
        || async {
            let view = ctl(&controller.address, &t.operator, &show_args)
                .await
                .json();
            (view["containers"][0]["state"] == "rolled-back").then_some(view)
        },
    )
    .await;
    assert_eq!(view["run"]["hosts"][0]["state"], "rolled-back", "{view}");
    assert!(
        view["run"]["note"]
            .as_str()
            .unwrap()
            .contains("since reconciled"),
        "{view}"
    );
    assert!(
        !t.subject.migrated_or_untouched(&t.docker).await,
        "exactly as before"
    );
    let log = ctl(&controller.address, &t.operator, &["log", "-o", "json"])
        .await
        .json();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "run.reconciled" && e["target"] == run.as_str()),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_mid_rollback_finishes_putting_it_back() {
    // The subject insists on root: its verify fails, and the run undoes
    // every step; the controller dies after each undo's intent.
    let t = setup_running(
        "ucrash",
        2_000,
        &[
            "sh",
            "-c",
            "[ \"$(id -u)\" = 0 ] && exec sleep 3600; exit 3",
        ],
    )
    .await;
    let agent = t.in_process_agent().await;
    let tls = t.pki.files("controller");
    let state = t.base.path().join("controller");
    let port = free_port();
    let hosts = [("h1", agent.address.as_str())];
    for kind in ["recreate", "ownership", "stop", "user"] {
        let point = format!("controller:after-undo-intent:{kind}");
        let mut crashing = spawn_controller(&tls, &state, port, &hosts, Some(&point));
        let started = t.migrate(&crashing.address.clone()).await;
        assert_eq!(started.code, 0, "{point}: {started:?}");
        let run = started.json()["run"]["id"].as_str().unwrap().to_string();
        assert_eq!(
            wait_died(&mut crashing.child, Duration::from_secs(90)),
            Some(SIGABRT),
            "{point}: the controller aborted mid-rollback"
        );
        drop(crashing);
        let restarted = spawn_controller(&tls, &state, port, &hosts, None);
        let watched = ctl(
            &restarted.address,
            &t.operator,
            &["runs", "watch", &run, "-o", "json"],
        )
        .await;
        let view = watched.json();
        assert_eq!(watched.code, 6, "{point}: halted after the failure: {view}");
        assert_eq!(
            view["containers"][0]["state"], "rolled-back",
            "{point}: {view}"
        );
        assert!(
            !t.subject.migrated_or_untouched(&t.docker).await,
            "{point}: exactly as before"
        );
        let user = fleet_core::names::derive_user_name(&t.subject.name);
        let known = std::process::Command::new("getent")
            .args(["passwd", &user])
            .output()
            .unwrap();
        assert!(!known.status.success(), "{point}: {user} removed");
    }
}
