//! Controller overhead: one run over 200 simulated hosts × 5 trivial
//! containers; the controller-side time per step (its journal writes and
//! bookkeeping, as `Run.overhead` records them, excluding the agent's
//! work), the run's wall time, and the store's size per run. Goal: the
//! controller is never the bottleneck, under 2 ms per step on 2 cores.
//!
//! The agents are simulated: `SimulatedAgent` stands in only because 200
//! real hosts cannot exist on this machine. Each one is served on its own
//! listener over real mTLS, behind the agent's own authorization layer, and
//! answers every step at once. The controller, its store, its agent pool
//! and the operator's gRPC API are the real ones, in this process.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_controller::ControllerConfig;
use fleet_controller::inventory::{Host, HostSource};
use fleet_controller::run::model::{ContainerState, RunPhase, RunSummary, RunView};
use fleet_controller::store::{LogEntry, Store};
use fleet_core::CancellationToken;
use fleet_core::auth::AuthLayer;
use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::agent::v1 as pb;
use fleet_proto::agent::v1::agent_server::{Agent, AgentServer};
use fleet_proto::controller::v1 as cpb;
use fleet_proto::controller::v1::controller_client::ControllerClient;
use futures::Stream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tonic::{Request, Response, Status};

use super::median;
use crate::pki::TestPki;

/// The goal: controller-side time per step.
const GOAL: Duration = Duration::from_millis(2);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated hosts (one agent endpoint each).
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Root containers each simulated host reports.
    #[arg(long, default_value_t = 5)]
    containers_per_host: usize,
    /// Canary hosts (the first wave).
    #[arg(long, default_value_t = 1)]
    canary: u32,
    /// Batch size of the following waves.
    #[arg(long, default_value = "10%")]
    batch: String,
    /// Hosts migrated at once within a wave.
    #[arg(long, default_value_t = 20)]
    max_parallel: u32,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// One flushed write to a store on the same filesystem as the controller's:
/// the floor under every journaled step (the median of `writes`).
fn flushed_write(dir: &std::path::Path, writes: usize) -> anyhow::Result<Duration> {
    let store = Store::open(dir)?;
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let entry = LogEntry {
            unix_ms: now_ms(),
            who: "fleet-bench".into(),
            role: "operator".into(),
            action: "bench.write".into(),
            target: format!("write {i}"),
            result: "ok".into(),
        };
        let started = Instant::now();
        store.append_log(&entry)?;
        samples.push(started.elapsed());
    }
    Ok(median(samples))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn us(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pki = TestPki::new();
    let agents_shutdown = CancellationToken::new();
    let server_tls = fleet_agent::server_tls(&pki.files("agent"))?;
    let mut hosts = Vec::with_capacity(args.hosts);
    for index in 0..args.hosts {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        hosts.push(Host {
            name: host_name(index),
            address: listener.local_addr()?.to_string(),
            labels: Default::default(),
            source: HostSource::Config,
        });
        tokio::spawn(serve(
            SimulatedAgent::new(index, args.containers_per_host),
            server_tls.clone(),
            listener,
            agents_shutdown.clone(),
        ));
    }

    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let config = ControllerConfig {
        listen: listener.local_addr()?,
        tls: pki.files("controller"),
        state_dir: state_dir.clone(),
        hosts,
        audit_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        agent_deadline: Duration::from_secs(60),
        reconcile_grace: Duration::from_secs(60),
    };
    let shutdown = CancellationToken::new();
    let controller = tokio::spawn(fleet_controller::run(config, listener, shutdown.clone()));

    let operator = TlsMaterial::load(&pki.files("alice"))?.client_config(Role::Controller)?;
    let channel = tls::channel(&address, operator, Duration::from_secs(5))?;
    let mut client = ControllerClient::new(channel).max_decoding_message_size(1 << 30);
    let mut ready = false;
    for _ in 0..50 {
        if client.who_am_i(cpb::WhoAmIRequest::default()).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!("the controller never answered");
    }

    eprintln!(
        "planning and running {} hosts × {} containers...",
        args.hosts, args.containers_per_host
    );
    let started = Instant::now();
    let info = client
        .start_run(cpb::StartRunRequest {
            selection: Some(cpb::Selection::default()),
            plan_json: String::new(),
            options: Some(cpb::RunOptions {
                canary: args.canary,
                batches: vec![args.batch.clone()],
                max_parallel: args.max_parallel,
                ..Default::default()
            }),
            dry_run: false,
        })
        .await
        .context("StartRun")?
        .into_inner();
    let start_latency = started.elapsed();
    let id = serde_json::from_str::<RunView>(&info.run_json)?.run.id;
    // Poll the summaries (a GetRun of 1,000 container records would cost
    // the controller more than the steps it measures), then read the run once.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let list = client
            .list_runs(cpb::ListRunsRequest { limit: 10 })
            .await
            .context("ListRuns")?
            .into_inner();
        let mut phase = None;
        for json in &list.runs_json {
            let summary: RunSummary = serde_json::from_str(json)?;
            if summary.id == id {
                phase = Some(summary.phase);
            }
        }
        match phase {
            Some(RunPhase::Running) => {}
            Some(_) => break,
            None => bail!("run {id} is not listed"),
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("run {id} still running after 30 minutes");
        }
    }
    let info = client
        .get_run(cpb::RunRef { run_id: id.clone() })
        .await
        .context("GetRun")?
        .into_inner();
    let view: RunView = serde_json::from_str(&info.run_json)?;
    let observed = started.elapsed();
    if view.run.phase != RunPhase::Succeeded {
        bail!(
            "run {id} ended {:?}, not succeeded: {}",
            view.run.phase,
            view.run.note.unwrap_or_default()
        );
    }

    // sled locks its files: stop the controller before reading its store.
    drop(client);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    agents_shutdown.cancel();
    let store = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(&state_dir) {
                Ok(store) => break store,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("opening the stopped controller's store");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let run_bytes = store.run_size(&id)?;
    let events = store.events(&id, 0)?.len();
    drop(store);
    let disk = dir_bytes(&state_dir);
    let scratch = tempfile::tempdir_in(dir.path())?;
    let flush = flushed_write(scratch.path(), 200)?;

    let run = &view.run;
    let overhead = run.overhead;
    let steps = overhead.steps.max(1);
    let mean_us = overhead.total_us as f64 / steps as f64;
    let containers = view.containers.len();
    let migrated = view
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::Migrated)
        .count();
    let agent_ms: Vec<u64> = view
        .containers
        .iter()
        .flat_map(|c| c.steps.iter().map(|s| s.agent_ms))
        .collect();
    let agent_mean = agent_ms.iter().sum::<u64>() as f64 / agent_ms.len().max(1) as f64;
    let wall_ms = run
        .finished_unix_ms
        .unwrap_or(run.created_unix_ms)
        .saturating_sub(run.created_unix_ms);
    let wall = Duration::from_millis(wall_ms);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let met = Duration::from_micros(mean_us as u64) < GOAL;

    println!(
        "## controller overhead: {} simulated hosts × {} containers ({} waves: canary {}, batches {}, max-parallel {}; {cores} cores)",
        args.hosts,
        args.containers_per_host,
        run.waves.len(),
        args.canary,
        args.batch,
        args.max_parallel
    );
    println!(
        "- run: {migrated} of {containers} containers migrated, {} steps in **{:.1} s** wall ({:.0} steps/s); StartRun (plan: audit of {} agents) {:.1} s; observed end to end {:.1} s",
        overhead.steps,
        wall.as_secs_f64(),
        overhead.steps as f64 / wall.as_secs_f64().max(1e-9),
        args.hosts,
        start_latency.as_secs_f64(),
        observed.as_secs_f64()
    );
    println!(
        "- controller-side time per step: **{}** mean, {} max (goal < {} per step: {})",
        us(mean_us),
        us(overhead.max_us as f64),
        us(GOAL.as_micros() as f64),
        if met { "met" } else { "NOT met" }
    );
    println!(
        "- agent call per step, not counted above (a simulated agent answering at once: the mTLS round trip, both ends on the same cores): {agent_mean:.2} ms mean"
    );
    println!(
        "- store: **{}** for the run ({} per step, {} per container; header, {containers} container records, {events} events); sled files on disk {}",
        bytes(run_bytes),
        bytes(run_bytes / steps),
        bytes(run_bytes / containers.max(1) as u64),
        bytes(disk)
    );
    println!(
        "- one flushed store write on this disk: {} (median of 200, scratch store); each step makes two (intent, outcome)",
        us(flush.as_micros() as f64)
    );
    Ok(())
}
