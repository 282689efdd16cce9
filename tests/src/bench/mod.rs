//! The benchmarks behind `scripts/bench.sh`: each measured side by side,
//! in one run, on the same data, against the tool an operator would
//! otherwise use, and reported as a ratio — except the controller's
//! overhead, which has no counterpart and is reported against its goal.

pub mod audit;
pub mod backup;
pub mod controller;
pub mod recreate;
pub mod remap;
pub mod rootless;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --release --bins` first",
            path.display()
        );
    }
    Ok(path)
}
