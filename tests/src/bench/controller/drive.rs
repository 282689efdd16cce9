//! The real controller, in this process, driven through its operator API:
//! started on the simulated inventory, one run started and followed to its
//! end, and timed from the operator's side.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_controller::ControllerConfig;
use fleet_controller::inventory::Host;
use fleet_controller::run::model::{RunPhase, RunSummary, RunView};
use fleet_core::CancellationToken;
use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::controller::v1 as cpb;
use fleet_proto::controller::v1::controller_client::ControllerClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::pki::TestPki;

/// The controller under measure, serving until `stop`.
pub(super) struct Controller {
    pub(super) address: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), fleet_controller::ControllerError>>,
}

impl Controller {
    /// Starts the controller on `hosts`, its store in `state_dir`.
    pub(super) async fn start(
        pki: &TestPki,
        state_dir: PathBuf,
        hosts: Vec<Host>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let config = ControllerConfig {
            listen: listener.local_addr()?,
            tls: pki.files("controller"),
            state_dir,
            hosts,
            audit_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            agent_deadline: Duration::from_secs(60),
            reconcile_grace: Duration::from_secs(60),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fleet_controller::run(config, listener, shutdown.clone()));
        Ok(Controller {
            address,
            shutdown,
            task,
        })
    }

    /// Stops it and waits (a while) for it to end: sled locks its files.
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// An operator's client of the controller at `address`, once it answers.
pub(super) async fn connect(
    pki: &TestPki,
    address: &str,
) -> anyhow::Result<ControllerClient<Channel>> {
    let operator = TlsMaterial::load(&pki.files("alice"))?.client_config(Role::Controller)?;
    let channel = tls::channel(address, operator, Duration::from_secs(5))?;
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
    Ok(client)
}

/// A run driven to its end, as the operator saw it.
pub(super) struct Driven {
    pub(super) id: String,
    pub(super) view: RunView,
    /// StartRun's answer (the plan: an audit of every agent).
    pub(super) start_latency: Duration,
    /// From StartRun to the run read back, ended.
    pub(super) observed: Duration,
}

/// Starts one run of everything with `options` and follows it to its end;
/// a run that does not succeed is an error.
pub(super) async fn drive(
    client: &mut ControllerClient<Channel>,
    options: cpb::RunOptions,
) -> anyhow::Result<Driven> {
    let started = Instant::now();
    let info = client
        .start_run(cpb::StartRunRequest {
            selection: Some(cpb::Selection::default()),
            plan_json: String::new(),
            options: Some(options),
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
    Ok(Driven {
        id,
        view,
        start_latency,
        observed,
    })
}
