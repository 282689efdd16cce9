//! What the run cost the store: its size once the controller has stopped,
//! the store's files on disk, and the floor under every journaled step
//! (one flushed write on the same filesystem).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_controller::store::{LogEntry, Store};
use fleet_core::now_ms;

use crate::bench::median;

/// The store's share of one run.
pub(super) struct Stored {
    /// The run's bytes in the store (header, container records, events).
    pub(super) run_bytes: u64,
    pub(super) events: usize,
    /// The sled files on disk.
    pub(super) disk: u64,
}

/// Reads run `id` from the stopped controller's store at `state_dir`
/// (waiting a while for its lock to go).
pub(super) async fn read_stopped(state_dir: &Path, id: &str) -> anyhow::Result<Stored> {
    let store = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(state_dir) {
                Ok(store) => break store,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("opening the stopped controller's store");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let run_bytes = store.run_size(id)?;
    let events = store.events(id, 0)?.len();
    drop(store);
    Ok(Stored {
        run_bytes,
        events,
        disk: dir_bytes(state_dir),
    })
}

/// One flushed write to a store on the same filesystem as the controller's:
/// the floor under every journaled step (the median of `writes`).
pub(super) fn flushed_write(dir: &Path, writes: usize) -> anyhow::Result<Duration> {
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

fn dir_bytes(dir: &Path) -> u64 {
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
