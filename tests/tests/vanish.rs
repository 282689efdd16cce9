//! An agent that vanishes mid-step, as the operator sees it: the step gets
//! `--agent-deadline`, then the run waits `reconcile_grace_secs` for the
//! agent in all (not one deadline per call it still has to make), ends
//! with the container named by its name and host, and says how to follow
//! what it still puts back; that watch ends when it is back. The binaries
//! run as processes (`cargo build --workspace --bins` first).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleet_core::role::Role;
use fleet_tests::cli::fleetctl;
use fleet_tests::engine::{Scope, body, docker, test_image};
use fleet_tests::fleet::HOST_LABEL;
use fleet_tests::host::bind;
use fleet_tests::pki::TestPki;
use fleet_tests::process::{fleetctl_command, free_port, spawn_agent, spawn_controller, wait_died};
use fleet_tests::unique;

const SIGABRT: i32 = 6;
/// `--agent-deadline` of the run.
const DEADLINE_SECS: u64 = 6;
/// `reconcile_grace_secs` of `spawn_controller`.
const GRACE_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_agent_holds_the_run_one_deadline_and_one_grace_and_its_container_is_followed_back()
 {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let pki = TestPki::new();
    let operator = pki.issue(Role::Operator, "alice", &[]);
    let label = unique("vanish");
    let base = tempfile::tempdir().unwrap();
    let policy = base.path().join("policy.toml");
    // Fixed ids: no account to create.
    std::fs::write(
        &policy,
        "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"*\"\nstrategy = \"61550:61550\"\n",
    )
    .unwrap();
    let data = base.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("table"), b"rows").unwrap();
    let name = format!("{label}-db");
    let mut create = body(&image, &["sleep", "3600"]);
    create.labels = Some([(HOST_LABEL.to_string(), label.clone())].into());
    create.stop_timeout = Some(1);
    create.host_config = Some(bind(&data, "/data"));
    let id = scope.run(&name, create).await;

    let agent_tls = pki.files("agent");
    let agent_state = base.path().join("agent");
    let agent_port = free_port();
    let scope_label = format!("{HOST_LABEL}={label}");
    // The agent dies once it has journaled the verify step's intent.
    let mut crashing = spawn_agent(
        &agent_tls,
        &agent_state,
        agent_port,
        &scope_label,
        Some("agent:after-intent:verify"),
    );
    let hosts = [("h1", crashing.address.as_str())];
    let controller_port = free_port();
    let controller = spawn_controller(
        &pki.files("controller"),
        &base.path().join("controller"),
        controller_port,
        &hosts,
        None,
    );
    let ctl = |args: Vec<String>| {
        let address = controller.address.clone();
        let tls = operator.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fleetctl(&address, &tls, &args).await
        }
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let deadline = DEADLINE_SECS.to_string();
    let started = ctl(args(&[
        "migrate",
        "--policy",
        policy.to_str().unwrap(),
        "--agent-deadline",
        &deadline,
        "--yes",
        "--detach",
        "-o",
        "json",
    ]))
    .await;
    assert_eq!(started.code, 0, "{started:?}");
    let run = started.json()["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_died(&mut crashing.child, Duration::from_secs(90)),
        Some(SIGABRT)
    );
    let died_ms = fleet_core::now_ms();
    drop(crashing);

    let watched = ctl(args(&["runs", "watch", &run])).await;
    assert_eq!(watched.code, 6, "halted: {watched:?}");
    let view = ctl(args(&["runs", "show", &run, "-o", "json"]))
        .await
        .json();
    assert_eq!(view["containers"][0]["state"], "needs-reconcile", "{view}");
    // One deadline for the step, then one grace for everything after it.
    let waited = view["run"]["finished_unix_ms"].as_u64().unwrap() - died_ms;
    assert!(
        (GRACE_SECS * 1000..=(DEADLINE_SECS + GRACE_SECS + 4) * 1000).contains(&waited),
        "the run ended {waited} ms after its agent vanished (deadline {DEADLINE_SECS} s, grace {GRACE_SECS} s)"
    );
    // The note names the container as the operator knows it.
    let note = view["run"]["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("({name} on h1)")) && !note.contains("h1/"),
        "{note}"
    );
    // The last line of the watch says how to follow what is still stuck.
    let seq = view["run"]["finished_seq"].as_u64().unwrap();
    let follow = format!("`fleetctl runs watch {run} --after {seq}`");
    assert_eq!(
        watched.stdout.lines().last().unwrap(),
        format!(
            "1 container(s) still to be put back ({name} on h1): the controller keeps trying; follow it with {follow}"
        ),
        "{}",
        watched.stdout
    );

    // That watch (a fleetctl of its own) follows the put-back to its end
    // once the agent is back.
    let mut watch = fleetctl_command(&controller.address, &operator);
    watch.args(["runs", "watch", &run, "--after", &seq.to_string()]);
    let following = tokio::task::spawn_blocking(move || watch.output().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!following.is_finished(), "it waits for the reconciliation");
    let _agent = spawn_agent(&agent_tls, &agent_state, agent_port, &scope_label, None);
    let followed = tokio::time::timeout(Duration::from_secs(120), following)
        .await
        .expect("the watch ends once the container is back")
        .unwrap();
    let stdout = String::from_utf8_lossy(&followed.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&format!("{name} container-rolled-back"))),
        "{stdout}"
    );
    assert!(stdout.contains(" reconciled reconciled: "), "{stdout}");
    assert!(
        !stdout.contains("still to be put back"),
        "nothing is left: {stdout}"
    );
    let back = fleet_tests::fleet::seen(&docker, &name).await;
    assert_eq!(back.id, id, "the very container, back");
    assert!(back.running && back.user.is_empty(), "{back:?}");
}
