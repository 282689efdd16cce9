//! One agent in this process, talked to over gRPC as the controller would,
//! with the engine scope and test image the step tests build containers in.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerInspectResponse, HostConfig};
use fleet_proto::agent::v1 as pb;

use crate::agent_client::{Client, collect_all, connect, key};
use crate::engine::{Scope, docker, test_image};
use crate::pki::TestPki;
use crate::servers::{AgentOptions, RunningAgent, start_agent};

/// A running agent, a controller-certificate client to it, and a scope.
pub struct Host {
    _pki: TestPki,
    _agent: RunningAgent,
    pub client: Client,
    pub scope: Scope,
    pub image: String,
}

impl Host {
    /// The agent's state directory (its journals), for break-glass commands.
    pub fn agent_state(&self) -> &Path {
        self._agent.state.path()
    }
}

/// Starts an agent with the default options and connects to it.
pub async fn host() -> Host {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let pki = TestPki::new();
    let agent = start_agent(pki.files("agent"), AgentOptions::default()).await;
    let client = connect(&agent.address, &pki.files("controller"));
    Host {
        _pki: pki,
        _agent: agent,
        client,
        scope: Scope::new(&docker),
        image,
    }
}

/// A `HostConfig` mounting `source` (a host path or a volume name) at `at`.
pub fn bind(source: &Path, at: &str) -> HostConfig {
    HostConfig {
        binds: Some(vec![format!("{}:{at}", source.display())]),
        ..Default::default()
    }
}

/// An ownership step mapping every uid and gid in `from` to `to`.
pub fn ownership(
    run: &str,
    step: &str,
    container: &str,
    from: &[u32],
    to: u32,
) -> pb::ChangeOwnershipRequest {
    let map: HashMap<u32, u32> = from.iter().map(|f| (*f, to)).collect();
    pb::ChangeOwnershipRequest {
        key: key(run, step),
        container: container.to_string(),
        uids: map.clone(),
        gids: map,
        ..Default::default()
    }
}

/// What the engine says about container `name`; panics if it has none.
pub async fn inspect(scope: &Scope, name: &str) -> ContainerInspectResponse {
    scope
        .docker()
        .inspect_container(name, None)
        .await
        .unwrap_or_else(|e| panic!("inspect {name}: {e}"))
}

/// The backup step of run `run` for `container`, with its hooks and retention.
pub fn backup(
    run: &str,
    container: &str,
    hooks: Vec<pb::Hook>,
    retention_days: u32,
) -> pb::BackupRequest {
    pb::BackupRequest {
        key: key(run, "backup"),
        container: container.to_string(),
        hooks,
        retention_days,
    }
}

/// A stop step `step` of run `run` for `container`.
pub fn stop(run: &str, step: &str, container: &str) -> pb::StopRequest {
    pb::StopRequest {
        key: key(run, step),
        container: container.to_string(),
    }
}

/// The recreate step of run `run`: `container` again as `uid:uid`, no layer loss.
pub fn recreate(run: &str, container: &str, uid: u32) -> pb::RecreateRequest {
    pb::RecreateRequest {
        key: key(run, "recreate"),
        container: container.to_string(),
        uid,
        gid: uid,
        allow_layer_loss: false,
        together: Vec::new(),
    }
}

/// A verify step `step` of run `run` for `container`, with limits and a probe.
pub fn verify(
    run: &str,
    step: &str,
    container: &str,
    deadline_secs: u32,
    min_running_secs: u32,
    probe: Option<pb::Probe>,
) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key: key(run, step),
        container: container.to_string(),
        deadline_secs,
        min_running_secs,
        probe,
        account: String::new(),
    }
}

/// Rolls back run `run`: the result of every step undone, or the refusal.
pub async fn roll_back(
    client: &mut Client,
    run: &str,
) -> Result<Vec<pb::StepResult>, tonic::Status> {
    collect_all(
        client
            .rollback(pb::RollbackRequest {
                run_id: run.to_string(),
            })
            .await,
    )
    .await
}

/// The backups the agent lists, as JSON objects.
pub async fn backups(client: &mut Client) -> Vec<serde_json::Value> {
    let listed = client
        .list_backups(pb::ListBackupsRequest {})
        .await
        .expect("list backups")
        .into_inner();
    serde_json::from_str(&listed.backups_json).expect("backups JSON")
}
