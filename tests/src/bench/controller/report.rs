//! The figures of one measured run, against the goal, as markdown.

use std::time::Duration;

use fleet_controller::run::model::{ContainerState, RunView};

use super::store::Stored;

/// The goal: controller-side time per step.
const GOAL: Duration = Duration::from_millis(2);

/// What was run, and what was measured.
pub(super) struct Measured<'a> {
    pub(super) hosts: usize,
    pub(super) containers_per_host: usize,
    pub(super) canary: u32,
    pub(super) batch: &'a str,
    pub(super) max_parallel: u32,
    pub(super) view: &'a RunView,
    pub(super) start_latency: Duration,
    pub(super) observed: Duration,
    pub(super) stored: &'a Stored,
    /// One flushed store write on this disk.
    pub(super) flush: Duration,
}

/// Prints the figures: wall time, controller-side time per step against
/// [`GOAL`], the agent calls not counted in it, the store's size.
pub(super) fn print(m: &Measured<'_>) {
    let view = m.view;
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
    let (run_bytes, events) = (m.stored.run_bytes, m.stored.events);

    println!(
        "## controller overhead: {} simulated hosts × {} containers ({} waves: canary {}, batches {}, max-parallel {}; {cores} cores)",
        m.hosts,
        m.containers_per_host,
        run.waves.len(),
        m.canary,
        m.batch,
        m.max_parallel
    );
    println!(
        "- run: {migrated} of {containers} containers migrated, {} steps in **{:.1} s** wall ({:.0} steps/s); StartRun (plan: audit of {} agents) {:.1} s; observed end to end {:.1} s",
        overhead.steps,
        wall.as_secs_f64(),
        overhead.steps as f64 / wall.as_secs_f64().max(1e-9),
        m.hosts,
        m.start_latency.as_secs_f64(),
        m.observed.as_secs_f64()
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
        bytes(m.stored.disk)
    );
    println!(
        "- one flushed store write on this disk: {} (median of 200, scratch store); each step makes two (intent, outcome)",
        us(m.flush.as_micros() as f64)
    );
}

/// Microseconds, shown in milliseconds.
fn us(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}

/// A size in B, KiB or MiB.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}
