//! `fleet-agent rollback --run RUN`: the host undoes a run from its own
//! journal with no controller, through the real binary.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use fleet_agent::engine::{Engine, EngineChoice};
use fleet_agent::steps::{StepRunner, StepSpec};
use fleet_agent::users::{UserRequest, UserSettings};

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_binary_rolls_a_run_back_on_its_own() {
    let state = tempfile::tempdir().unwrap();
    let homes = tempfile::tempdir().unwrap();
    let name = format!("svc-fleet-bg-{}", std::process::id() % 100000);
    let users = UserSettings {
        home_root: homes.path().to_path_buf(),
        uid_range: (61600, 61699),
        id_record: Some(homes.path().join(".allocated-ids")),
        ..Default::default()
    };
    let config = fleet_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: fleet_core::tls::TlsFiles {
            ca: "-".into(),
            cert: "-".into(),
            key: "-".into(),
        },
        engine: EngineChoice::Auto,
        engine_socket: None,
        state_dir: state.path().to_path_buf(),
        hostname: "t".into(),
        walk: Default::default(),
        inspect_cache: false,
        ownership_cache_ttl: Default::default(),
        users: users.clone(),
        scope: None,
        rootless_runtime: None,
    };
    let shutdown = fleet_core::CancellationToken::new();
    let inspector = fleet_agent::start_inspector(&config, &shutdown);
    let _ = Engine::new(EngineChoice::Auto, None);
    let steps = Arc::new(StepRunner::new(
        state.path(),
        inspector.engine(),
        inspector,
        users,
    ));
    let spec = StepSpec::User(UserRequest {
        name: name.clone(),
        uid: None,
        gid: None,
        rootless: false,
    });
    steps.run("bg-run", "user", spec, None).await.unwrap();
    shutdown.cancel();
    let exists = || {
        Command::new("getent")
            .args(["passwd", &name])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(exists());

    let out = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["rollback", "--run", "bg-run", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("undone user (user)") && stdout.contains("1 steps undone"),
        "{stdout}"
    );
    assert!(!exists(), "the user the run created is gone");

    let again = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["rollback", "--run", "bg-run", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(again.status.success(), "a second rollback is harmless");
    let missing = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["rollback", "--run", "no-such-run", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no journal for run 'no-such-run'"));
}
