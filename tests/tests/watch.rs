//! `fleetctl runs watch` as a separate process, following a run through a
//! `kill -9` of the controller and its restart on the same store and
//! port: it says once that it reconnects, resumes from the last event it
//! showed (none twice, none lost) and ends with the run's exit code. What
//! cannot get better by asking again (a refused certificate, an unknown
//! run) is not asked again, and the reconnecting is bounded.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use fleet_tests::cli::{fleetctl, start_detached};
use fleet_tests::fleet::{TestFleet, UsersCleanup};
use fleet_tests::process::{Process, fleetctl_command, free_port, spawn_controller};
use fleet_tests::wait_for;

/// Verify waits this long: the window in which the controller is killed.
const POLICY: &str = "[defaults]\nmin_healthy_secs = 3\ndeadline_secs = 30\n";

/// The event lines of fleetctl's table output (the summary follows the
/// first empty line).
fn event_lines(stdout: &str) -> Vec<String> {
    let mut lines: Vec<String> = stdout
        .lines()
        .take_while(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_rides_out_a_controller_killed_mid_run_and_shows_every_event_once() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..200 {
        std::fs::write(data.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let db = fleet.with_data(1, "db", &data).await;
    let _users = UsersCleanup(vec![fleet_core::names::derive_user_name(&db)]);
    let policy = base.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    // The controller as a process of its own (the fleet's in-process one
    // stays idle), driving the fleet's agent.
    let tls = fleet.pki.files("controller");
    let state = base.path().join("controller");
    let port = free_port();
    let hosts = [("h1", fleet.agents[0].address.as_str())];
    let controller = spawn_controller(&tls, &state, port, &hosts, None);
    let address = controller.address.clone();
    let policy = policy.to_str().unwrap();
    let migrate = ["migrate", "--host", "h1", "--policy", policy];
    let run = start_detached(&address, &fleet.operator, &migrate).await;

    let (stdout_path, stderr_path) = (base.path().join("out"), base.path().join("err"));
    let op = &fleet.operator;
    let child = fleetctl_command(&address, op)
        .args(["runs", "watch", &run, "--reconnect-for", "60"])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop if the test fails on the way.
    let mut watch = Process {
        child,
        address: String::new(),
    };
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    wait_for(
        "the watch to show the verify step starting",
        Duration::from_secs(60),
        || async {
            read(&stdout_path)
                .contains(" verify: step-started")
                .then_some(())
        },
    )
    .await;
    drop(controller);
    wait_for(
        "the watch to notice the controller is gone",
        Duration::from_secs(20),
        || async { read(&stderr_path).contains("reconnecting").then_some(()) },
    )
    .await;
    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "still following: {}",
        read(&stderr_path)
    );
    let restarted = spawn_controller(&tls, &state, port, &hosts, None);
    let ended = Instant::now();
    let status = wait_for("the watch to end", Duration::from_secs(90), || {
        let status = watch.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    let code = status.code();
    let (stdout, stderr) = (read(&stdout_path), read(&stderr_path));
    assert_eq!(code, Some(0), "the run's own exit code: {stdout}\n{stderr}");
    println!(
        "watch ended {:?} after the restart\n{stdout}\n{stderr}",
        ended.elapsed()
    );
    assert_eq!(
        stderr.matches("reconnecting").count(),
        1,
        "one line per outage: {stderr}"
    );
    assert!(
        stderr.contains("controller unreachable ("),
        "says why: {stderr}"
    );
    // Against a fresh watch of the finished run (the store's events in
    // order): the same events, none twice, none missing.
    let replay = fleetctl(
        &restarted.address,
        &fleet.operator,
        &["runs", "watch", &run],
    )
    .await;
    assert_eq!(replay.code, 0, "{replay:?}");
    assert_eq!(
        event_lines(&stdout),
        event_lines(&replay.stdout),
        "{stdout}"
    );
    for step in ["backup", "user", "stop", "ownership", "recreate", "verify"] {
        let done = format!(" {step}: step-done");
        assert_eq!(stdout.matches(&done).count(), 1, "{step}: {stdout}");
    }
    assert!(stdout.contains(&format!("run {run} succeeded")), "{stdout}");

    // What asking again cannot fix ends at once: a certificate the
    // controller refuses, a run that does not exist.
    let refused_at = Instant::now();
    let agent_cert = fleet.pki.files("agent");
    let refused = fleetctl(&restarted.address, &agent_cert, &["runs", "watch", &run]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.error.unwrap().contains("refused"));
    let unknown = fleetctl(&restarted.address, op, &["runs", "watch", "no-such-run"]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(refused_at.elapsed() < Duration::from_secs(5), "no retries");
    // A controller that stays away: given up after --reconnect-for.
    drop(restarted);
    let away_since = Instant::now();
    let away = fleetctl(
        &address,
        op,
        &["runs", "watch", &run, "--reconnect-for", "2"],
    )
    .await;
    assert_eq!(away.code, 1, "{away:?}");
    assert!(
        away.error
            .unwrap()
            .contains("gave up reconnecting after 2 s"),
        "bounded"
    );
    assert!(away_since.elapsed() < Duration::from_secs(10));
}
