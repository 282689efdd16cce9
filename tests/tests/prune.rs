//! Pruning a run on the agent, against the real engine: the checkpoints
//! (the old container a recreate kept, the backups) are released, the
//! migrated container is untouched, a second prune removes nothing, and
//! afterwards the run refuses to be rolled back before changing anything.
//! And the agent's fault points, through the real binary: killed right
//! after a step's intent is journaled, restarted, the step is finished.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use fleet_proto::agent::v1 as pb;
use fleet_tests::agent_client::{Client, collect, connect, key};
use fleet_tests::engine::{Scope, body, docker, engine_socket, test_image};
use fleet_tests::host::{
    backup, backups, bind, host, inspect, ownership, recreate, roll_back, stop, verify,
};
use fleet_tests::pki::TestPki;
use fleet_tests::process::{Process, free_port, server_args, workspace_binary};
use fleet_tests::unique;

/// Removes the container a migration made (the scope knows only the ones
/// the test made) even when the test fails, before the scope's volume.
struct RemoveOnDrop(bollard::Docker, String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (docker, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let options = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&name, Some(options)).await;
            });
        })
        .join();
    }
}

async fn backup_ids(c: &mut Client) -> Vec<String> {
    backups(c)
        .await
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

async fn prune(c: &mut Client, run: &str) -> Result<serde_json::Value, tonic::Status> {
    let response = c
        .prune(pb::PruneRequest {
            run_id: run.to_string(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&response.outcome_json).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_releases_the_checkpoints_once_and_then_the_run_refuses_rollback() {
    let mut h = host().await;
    let volume = unique("prune-vol");
    h.scope.track_volume(&volume);
    let name = unique("pruned");
    let old_id = h
        .scope
        .run(
            &name,
            ContainerCreateBody {
                host_config: Some(bind(Path::new(&volume), "/data")),
                ..body(
                    &h.image,
                    &[
                        "sh",
                        "-c",
                        "mkdir -p /data/d && echo kept > /data/d/f && exec sleep 3600",
                    ],
                )
            },
        )
        .await;
    let _migrated = RemoveOnDrop(h.scope.docker().clone(), name.clone());
    let run = unique("run");
    let c = &mut h.client;

    let backup = collect(c.backup(backup(&run, &name, vec![], 7)).await)
        .await
        .unwrap();
    let backup_id = backup.json()["id"].as_str().unwrap().to_string();
    collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap();
    collect(
        c.change_ownership(ownership(&run, "ownership", &name, &[0], 1000))
            .await,
    )
    .await
    .unwrap();
    let recreated = collect(c.recreate(recreate(&run, &name, 1000)).await)
        .await
        .unwrap();
    let new_id = recreated.json()["new_id"].as_str().unwrap().to_string();
    let checked = collect(c.verify(verify(&run, "verify", &name, 30, 2, None)).await)
        .await
        .unwrap();
    assert_eq!(checked.json()["verdict"], "non-root");

    // Before: the checkpoint container and the backup are there.
    let checkpoint = format!("{name}.fleet-pre-{run}");
    assert_eq!(
        inspect(&h.scope, &checkpoint).await.id.as_deref(),
        Some(old_id.as_str())
    );
    assert!(backup_ids(c).await.contains(&backup_id));

    let pruned = prune(c, &run).await.unwrap();
    assert_eq!(pruned["replayed"], false, "{pruned}");
    assert_eq!(pruned["run"], run.as_str());
    assert_eq!(
        pruned["removed_containers"],
        serde_json::json!([{ "step": "recreate", "id": old_id, "name": checkpoint }]),
        "{pruned}"
    );
    assert_eq!(
        pruned["removed_backups"],
        serde_json::json!([{ "step": "backup", "id": backup_id }]),
        "{pruned}"
    );
    assert_eq!(pruned["already_gone"], serde_json::json!([]), "{pruned}");
    assert_eq!(pruned["kept"], serde_json::json!([]), "{pruned}");
    assert!(pruned["pruned_at_ms"].as_u64().unwrap() > 0);

    // The checkpoints are gone; the migrated container and its volume are not.
    assert!(
        h.scope
            .docker()
            .inspect_container(&checkpoint, None)
            .await
            .is_err(),
        "the checkpoint container is removed"
    );
    assert!(
        h.scope
            .docker()
            .inspect_container(&old_id, None)
            .await
            .is_err()
    );
    assert!(!backup_ids(c).await.contains(&backup_id));
    let migrated = inspect(&h.scope, &name).await;
    assert_eq!(migrated.id.as_deref(), Some(new_id.as_str()));
    assert_eq!(migrated.state.as_ref().unwrap().running, Some(true));
    assert_eq!(
        migrated.config.as_ref().unwrap().user.as_deref(),
        Some("1000:1000")
    );
    assert!(
        h.scope.docker().inspect_volume(&volume).await.is_ok(),
        "the volume the migrated container uses is kept"
    );

    // A second prune changes nothing and says so.
    let again = prune(c, &run).await.unwrap();
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["removed_containers"], pruned["removed_containers"]);
    assert_eq!(again["removed_backups"], pruned["removed_backups"]);
    assert_eq!(again["pruned_at_ms"], pruned["pruned_at_ms"]);

    // The run can no longer be rolled back, and nothing is touched trying.
    let refused = roll_back(c, &run).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains(&format!("run {run} was pruned on this host at"))
            && refused.message().contains("cannot be rolled back"),
        "{}",
        refused.message()
    );
    let undo = collect(
        c.undo(pb::UndoRequest {
            key: key(&run, "recreate"),
        })
        .await,
    )
    .await
    .unwrap_err();
    assert_eq!(undo.code(), tonic::Code::FailedPrecondition, "{undo:?}");
    assert!(undo.message().contains("pruned"), "{}", undo.message());
    // Nor does it take new steps; a recorded one is still answered.
    let new_step = collect(c.stop(stop(&run, "stop-again", &name)).await)
        .await
        .unwrap_err();
    assert_eq!(new_step.code(), tonic::Code::FailedPrecondition);
    assert!(
        new_step.message().contains("takes no new steps"),
        "{}",
        new_step.message()
    );
    let replayed = collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap();
    assert!(replayed.result.replayed);

    let after = inspect(&h.scope, &name).await;
    assert_eq!(
        after.id.as_deref(),
        Some(new_id.as_str()),
        "the same container"
    );
    assert_eq!(after.state.as_ref().unwrap().running, Some(true));
    assert_eq!(
        after.state.as_ref().unwrap().started_at,
        migrated.state.as_ref().unwrap().started_at,
        "never restarted"
    );
    assert_eq!(
        after.config.as_ref().unwrap().user.as_deref(),
        Some("1000:1000")
    );

    // The journal says so, under the prune's own records.
    let journal = c
        .journal(pb::JournalRequest {
            run_id: run.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let records: Vec<serde_json::Value> = serde_json::from_str(&journal.records_json).unwrap();
    let events: Vec<&str> = records
        .iter()
        .filter(|r| r["step"] == "prune")
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["prune-intent", "pruned"], "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_refuses_an_unknown_run_and_an_unsettled_one() {
    let mut h = host().await;
    let unknown = prune(&mut h.client, "no-such-run-here").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    assert!(
        unknown
            .message()
            .contains("no journal for run 'no-such-run-here'"),
        "{}",
        unknown.message()
    );
    let invalid = prune(&mut h.client, "../etc").await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");

    // A step that failed and was neither retried nor rolled back.
    let name = unique("unsettled");
    let id = h.scope.run(&name, body(&h.image, &["sleep", "3600"])).await;
    let run = unique("run");
    let c = &mut h.client;
    let failed = collect(
        c.verify(verify(
            &run,
            "verify",
            &name,
            2,
            1,
            Some(pb::Probe {
                kind: Some(pb::probe::Kind::TcpAddress("127.0.0.1:1".into())),
            }),
        ))
        .await,
    )
    .await;
    assert!(failed.is_err());
    let unsettled = prune(c, &run).await.unwrap_err();
    assert_eq!(unsettled.code(), tonic::Code::FailedPrecondition);
    assert!(
        unsettled.message().contains("not settled")
            && unsettled.message().contains("verify step 'verify' failed"),
        "{}",
        unsettled.message()
    );
    // Rolled back, it is settled; then pruned, it is not rolled back again.
    roll_back(c, &run).await.unwrap();
    let pruned = prune(c, &run).await.unwrap();
    assert_eq!(pruned["removed_containers"], serde_json::json!([]));
    assert_eq!(pruned["removed_backups"], serde_json::json!([]));
    let refused = roll_back(c, &run).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let back = inspect(&h.scope, &name).await;
    assert_eq!(back.id.as_deref(), Some(id.as_str()));
    assert_eq!(back.state.unwrap().running, Some(true));
}

/// The `fleet-agent` binary next to this test's executable
/// (`target/debug/deps/prune-…` → `target/debug/fleet-agent`), or
/// `$FLEET_AGENT_BIN`.
fn agent_binary() -> PathBuf {
    std::env::var_os("FLEET_AGENT_BIN")
        .map_or_else(|| workspace_binary("fleet-agent"), PathBuf::from)
}

/// A `fleet-agent serve` process (killed on drop) and the file its stderr
/// goes to.
struct AgentProcess {
    process: Process,
    log: PathBuf,
}

impl AgentProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn spawn_agent(
    pki: &TestPki,
    state: &Path,
    work: &Path,
    fault: Option<&str>,
) -> AgentProcess {
    let address = format!("127.0.0.1:{}", free_port());
    let files = pki.files("agent");
    let log = work.join(format!("agent-{}.log", unique("log")));
    // No core file from the abort, whatever this machine's limits.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -c 0; exec \"$0\" \"$@\"")
        .arg(agent_binary())
        .arg("serve");
    server_args(&mut command, &files, &address, state, fault)
        .arg("--engine-socket")
        .arg(engine_socket())
        .arg("--hostname")
        .arg("fault-host")
        .arg("--no-inspect-cache")
        .env_remove("FLEET_AGENT_CONFIG")
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = AgentProcess {
        process: Process {
            child: command.spawn().unwrap(),
            address,
        },
        log,
    };
    // Ready when it answers the controller.
    let controller = pki.files("controller");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.process.child.try_wait().unwrap() {
            panic!("the agent exited at start ({status}): {}", agent.log());
        }
        let mut client = connect(&agent.process.address, &controller);
        if client.list_backups(pb::ListBackupsRequest {}).await.is_ok() {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not answer within 30 s: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exit_status(agent: &mut AgentProcess, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = agent.process.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent is still alive after {within:?}: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_after_a_stop_intent_finishes_the_stop_after_restart() {
    use std::os::unix::process::ExitStatusExt;

    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let pki = TestPki::new();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let name = unique("faulted");
    let id = scope.run(&name, body(&image, &["sleep", "3600"])).await;
    let run = unique("run");
    let controller = pki.files("controller");

    let mut agent = spawn_agent(
        &pki,
        state.path(),
        work.path(),
        Some("agent:after-intent:stop"),
    )
    .await;
    let mut c = connect(&agent.process.address, &controller);
    let cut = collect(c.stop(stop(&run, "stop", &name)).await).await;
    assert!(cut.is_err(), "the agent died mid-step: {cut:?}");
    let status = exit_status(&mut agent, Duration::from_secs(20)).await;
    assert_eq!(
        status.signal(),
        Some(6),
        "killed by SIGABRT at the fault point ({status}): {}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("armed fault point agent:after-intent:stop"),
        "{}",
        agent.log()
    );
    // The intent is journaled; the stop never happened.
    let journal =
        std::fs::read_to_string(state.path().join("runs").join(&run).join("journal.jsonl"))
            .unwrap();
    let events: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            format!(
                "{}:{}",
                r["step"].as_str().unwrap(),
                r["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(events, ["stop:intent"], "{journal}");
    let running = |doc: bollard::models::ContainerInspectResponse| {
        doc.state.and_then(|s| s.running).unwrap_or(false)
    };
    assert!(running(docker.inspect_container(&id, None).await.unwrap()));

    // Restarted with no fault armed, on the same state: the same call
    // finishes the step.
    drop(agent);
    let agent = spawn_agent(&pki, state.path(), work.path(), None).await;
    let mut c = connect(&agent.process.address, &controller);
    let stopped = collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap_or_else(|e| panic!("{e:?}: {}", agent.log()));
    assert!(!stopped.result.replayed, "done now, not before the crash");
    assert_eq!(stopped.json()["was_running"], true);
    assert!(!running(docker.inspect_container(&id, None).await.unwrap()));

    let undone = roll_back(&mut c, &run).await.unwrap();
    assert_eq!(undone.len(), 1);
    assert!(undone[0].undone);
    let back = docker.inspect_container(&id, None).await.unwrap();
    assert_eq!(back.id.as_deref(), Some(id.as_str()));
    assert!(running(back), "running again after the rollback");
}
