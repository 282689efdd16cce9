//! The simulated agents: `SimulatedAgent` stands in only because 200 real
//! hosts cannot exist on this machine. Each one is served on its own
//! listener over real mTLS, behind the agent's own authorization layer, and
//! answers every step at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fleet_controller::inventory::{Host, HostSource};
use fleet_core::auth::AuthLayer;
use fleet_core::tls;
use fleet_core::{CancellationToken, now_ms};
use fleet_proto::agent::v1 as pb;
use fleet_proto::agent::v1::agent_server::{Agent, AgentServer};
use futures::Stream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tonic::{Request, Response, Status};

use crate::pki::TestPki;

/// Starts `hosts` simulated agents of `containers` containers each, until
/// the token returned is cancelled; returns them as the controller's
/// inventory names them.
pub(super) async fn start(
    pki: &TestPki,
    hosts: usize,
    containers: usize,
) -> anyhow::Result<(Vec<Host>, CancellationToken)> {
    let agents_shutdown = CancellationToken::new();
    let server_tls = fleet_agent::server_tls(&pki.files("agent"))?;
    let mut inventory = Vec::with_capacity(hosts);
    for index in 0..hosts {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        inventory.push(Host {
            name: host_name(index),
            address: listener.local_addr()?.to_string(),
            labels: Default::default(),
            source: HostSource::Config,
        });
        tokio::spawn(serve(
            SimulatedAgent::new(index, containers),
            server_tls.clone(),
            listener,
            agents_shutdown.clone(),
        ));
    }
    Ok((inventory, agents_shutdown))
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::StepEvent, Status>> + Send>>;

/// A step's stream: its one result, at once.
fn result(
    key: Option<pb::StepKey>,
    kind: &str,
    outcome: Value,
    undone: bool,
) -> Result<Response<Events>, Status> {
    let event = pb::StepEvent {
        event: Some(pb::step_event::Event::Result(pb::StepResult {
            step_id: key.map(|k| k.step_id).unwrap_or_default(),
            kind: kind.into(),
            replayed: false,
            outcome_json: outcome.to_string(),
            undone,
        })),
    };
    Ok(Response::new(Box::pin(futures::stream::iter([Ok(event)]))))
}

/// One simulated host: `containers` root containers, each with one small
/// volume, so the planner plans every one of them (a dedicated user, all
/// six steps); every step succeeds at once with the outcome the real agent
/// would journal.
#[derive(Debug)]
struct SimulatedAgent {
    index: usize,
    host: String,
    containers: usize,
    next_uid: AtomicU32,
}

impl SimulatedAgent {
    fn new(index: usize, containers: usize) -> Self {
        SimulatedAgent {
            index,
            host: host_name(index),
            containers,
            next_uid: AtomicU32::new(10_001),
        }
    }

    fn container(&self, i: usize) -> pb::ContainerReport {
        let name = format!("svc{i}");
        // The controller's step ids use the first 12 characters of the id.
        let id = format!("{:08x}{i:04x}{}", self.index, "5a".repeat(26));
        pb::ContainerReport {
            id: id.clone(),
            name: name.clone(),
            image: format!("registry.example/svc{i}:1.4"),
            image_id: format!("sha256:{}", "c3".repeat(32)),
            state: "running".into(),
            identity: Some(pb::Identity {
                configured_user: String::new(),
                uid: Some(0),
                gid: Some(0),
                resolution: "empty".into(),
                processes: vec![pb::ProcessIdentity {
                    pid: 4000 + i as i32,
                    ppid: 3990,
                    command: format!("svc{i} --serve"),
                    uids: vec![0; 4],
                    gids: vec![0; 4],
                    host_uids: vec![0; 4],
                }],
                verdict: Some(pb::Verdict {
                    kind: pb::verdict::Kind::Root as i32,
                    reason: "the configuration names no user: the image default, root".into(),
                    ..Default::default()
                }),
            }),
            mounts: vec![pb::MountReport {
                kind: "volume".into(),
                source: format!("/var/lib/docker/volumes/{name}-data/_data"),
                destination: "/data".into(),
                read_only: false,
                volume_name: format!("{name}-data"),
                ownership: Some(pb::OwnershipSummary {
                    top_owners: vec![pb::OwnerCount {
                        uid: 0,
                        gid: 0,
                        entries: 12,
                    }],
                    entries: 12,
                    bytes: 48 * 1024,
                    ..Default::default()
                }),
            }],
            config_fingerprint: format!("{:016x}{}", self.index * 64 + i, "0f".repeat(24)),
            stop_timeout_secs: 10,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Agent for SimulatedAgent {
    async fn inspect(
        &self,
        _request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::HostReport>, Status> {
        Ok(Response::new(pb::HostReport {
            engine: Some(pb::EngineFacts {
                kind: "docker".into(),
                version: "27.5.1".into(),
                api_version: "1.47".into(),
                rootless: false,
                userns_remap: false,
                socket: "/var/run/docker.sock".into(),
            }),
            containers: (0..self.containers).map(|i| self.container(i)).collect(),
            warnings: Vec::new(),
            inspected_at_unix_ms: now_ms(),
            hostname: self.host.clone(),
            ..Default::default()
        }))
    }

    type BackupStream = Events;
    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let id = format!("{}-{}", now_ms(), &r.container[..12.min(r.container.len())]);
        let outcome = json!({
            "backup_id": id,
            "container_id": r.container,
            "mounts": [{ "destination": "/data", "entries": 12, "bytes": 49152, "archive_bytes": 3180 }],
            "retention_days": r.retention_days,
        });
        result(r.key, "backup", outcome, false)
    }

    type EnsureUserStream = Events;
    async fn ensure_user(
        &self,
        request: Request<pb::EnsureUserRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let uid = r
            .uid
            .unwrap_or_else(|| self.next_uid.fetch_add(1, Ordering::Relaxed));
        let outcome = json!({
            "name": r.name,
            "uid": uid,
            "gid": r.gid.unwrap_or(uid),
            "home": "/nonexistent",
            "created_user": true,
            "created_group": true,
            "created_home": false,
            "subuids": null,
            "subgids": null,
            "linger_enabled": false,
            "notes": [],
        });
        result(r.key, "user", outcome, false)
    }

    type StopStream = Events;
    async fn stop(&self, request: Request<pb::StopRequest>) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let outcome =
            json!({ "container_id": r.container, "was_running": true, "stopped_at_ms": now_ms() });
        result(r.key, "stop", outcome, false)
    }

    type ChangeOwnershipStream = Events;
    async fn change_ownership(
        &self,
        request: Request<pb::ChangeOwnershipRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let outcome = json!({
            "mounts": r.mounts.iter().map(|m| json!([
                { "destination": m, "source": format!("/var/lib/docker/volumes{m}") },
                { "entries": 12, "changed": 12, "skipped": 0, "elapsed_ms": 1 },
            ])).collect::<Vec<_>>(),
            "refusals": [],
        });
        result(r.key, "ownership", outcome, false)
    }

    type RecreateStream = Events;
    async fn recreate(
        &self,
        request: Request<pb::RecreateRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let now = now_ms();
        let outcome = json!({
            "plan": { "old_id": r.container, "user": format!("{}:{}", r.uid, r.gid) },
            "new_id": format!("{}{}", "7e".repeat(6), &r.container[12.min(r.container.len())..]),
            "stopped_at_ms": now,
            "started_at_ms": now,
        });
        result(r.key, "recreate", outcome, false)
    }

    type VerifyStream = Events;
    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        let outcome = json!({
            "container_id": r.container,
            "gate": "running",
            "healthy_at_ms": now_ms(),
            "downtime_ms": 850,
            "verdict": "non-root",
            "probe": null,
        });
        result(r.key, "verify", outcome, false)
    }

    type RestoreStream = Events;
    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<Events>, Status> {
        let r = request.into_inner();
        result(r.key, "restore", json!({ "backup_id": r.backup_id }), false)
    }

    // The benchmark plans in place only: the rootless steps are refused.
    type LoadImageStream = Events;
    async fn load_image(
        &self,
        _request: Request<pb::LoadImageRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented(
            "the simulated agent moves nothing rootless",
        ))
    }

    type MoveVolumesStream = Events;
    async fn move_volumes(
        &self,
        _request: Request<pb::MoveVolumesRequest>,
    ) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented(
            "the simulated agent moves nothing rootless",
        ))
    }

    type PlaceStream = Events;
    async fn place(&self, _request: Request<pb::PlaceRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented(
            "the simulated agent moves nothing rootless",
        ))
    }

    type UndoStream = Events;
    async fn undo(&self, request: Request<pb::UndoRequest>) -> Result<Response<Events>, Status> {
        result(request.into_inner().key, "undo", json!("undone"), true)
    }

    type RollbackStream = Events;
    async fn rollback(
        &self,
        _request: Request<pb::RollbackRequest>,
    ) -> Result<Response<Events>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }

    async fn prune(
        &self,
        _request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        Ok(Response::new(pb::PruneResponse {
            outcome_json: json!({ "removed": [], "gone": [], "kept": [], "replayed": false })
                .to_string(),
        }))
    }

    async fn verify_backup(
        &self,
        _request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        Ok(Response::new(pb::VerifyBackupResponse {
            ok: true,
            outcome_json: "[]".into(),
        }))
    }

    async fn list_backups(
        &self,
        _request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        Ok(Response::new(pb::ListBackupsResponse {
            backups_json: "[]".into(),
        }))
    }

    async fn journal(
        &self,
        _request: Request<pb::JournalRequest>,
    ) -> Result<Response<pb::JournalResponse>, Status> {
        Ok(Response::new(pb::JournalResponse {
            records_json: "[]".into(),
        }))
    }
}

fn host_name(index: usize) -> String {
    format!("sim{index:04}")
}

/// Serves one simulated agent as the real one is served: `tls::incoming`
/// (mTLS) and the agent's authorization rule in front.
async fn serve(
    agent: SimulatedAgent,
    server_tls: Arc<ServerConfig>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let incoming = tls::incoming(listener, server_tls, shutdown.clone());
    let served = tonic::transport::Server::builder()
        .layer(AuthLayer::new(
            fleet_proto::AGENT_SERVICE,
            fleet_agent::service::decide,
        ))
        .add_service(AgentServer::new(agent))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        eprintln!("simulated agent stopped: {e}");
    }
}
