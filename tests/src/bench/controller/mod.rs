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
//!
//! `agents` simulates and serves the agents; `drive` starts the controller
//! and follows the run through the operator API; `store` reads what the
//! run cost the store; `report` prints the figures against the goal.

mod agents;
mod drive;
mod report;
mod store;

use fleet_proto::controller::v1 as cpb;

use crate::pki::TestPki;
use drive::Controller;
use report::Measured;

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

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pki = TestPki::new();
    let (hosts, agents_shutdown) =
        agents::start(&pki, args.hosts, args.containers_per_host).await?;

    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let controller = Controller::start(&pki, state_dir.clone(), hosts).await?;
    let mut client = drive::connect(&pki, &controller.address).await?;

    eprintln!(
        "planning and running {} hosts × {} containers...",
        args.hosts, args.containers_per_host
    );
    let driven = drive::drive(
        &mut client,
        cpb::RunOptions {
            canary: args.canary,
            batches: vec![args.batch.clone()],
            max_parallel: args.max_parallel,
            ..Default::default()
        },
    )
    .await?;

    // sled locks its files: stop the controller before reading its store.
    drop(client);
    controller.stop().await;
    agents_shutdown.cancel();
    let stored = store::read_stopped(&state_dir, &driven.id).await?;
    let scratch = tempfile::tempdir_in(dir.path())?;
    let flush = store::flushed_write(scratch.path(), 200)?;

    report::print(&Measured {
        hosts: args.hosts,
        containers_per_host: args.containers_per_host,
        canary: args.canary,
        batch: &args.batch,
        max_parallel: args.max_parallel,
        view: &driven.view,
        start_latency: driven.start_latency,
        observed: driven.observed,
        stored: &stored,
        flush,
    });
    Ok(())
}
