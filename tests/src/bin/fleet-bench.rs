//! fleet-bench: the performance figures of the issues, measured side by
//! side against the tool an operator would otherwise use (the controller's
//! overhead, which has no counterpart, against its goal). Run it with
//! `scripts/bench.sh [SUBCOMMAND]` (a release build).

use clap::{Parser, Subcommand};
use fleet_tests::bench;

#[derive(Debug, Parser)]
#[command(about = "fleet's benchmarks, as ratios against the usual tools")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspection vs docker inspect; fleet-wide audit; agent RSS.
    Audit(bench::audit::Args),
    /// Ownership remap and its undo vs chown -R.
    Remap(bench::remap::Args),
    /// Checkpoint backup vs tar | zstd.
    Backup(bench::backup::Args),
    /// Recreate downtime vs docker stop && rm && run.
    Recreate(bench::recreate::Args),
    /// Rootless move downtime vs docker stop && docker start.
    Rootless(bench::rootless::Args),
    /// Controller overhead per step over 200 simulated hosts, against its 2 ms goal.
    Controller(bench::controller::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleet_core::tls::install_crypto_provider();
    fleet_core::process::raise_descriptor_limit();
    match Cli::parse().command {
        Some(Command::Audit(args)) => bench::audit::run(args).await,
        Some(Command::Remap(args)) => bench::remap::run(args),
        Some(Command::Backup(args)) => bench::backup::run(args),
        Some(Command::Recreate(args)) => bench::recreate::run(args).await,
        Some(Command::Controller(args)) => bench::controller::run(args).await,
        Some(Command::Rootless(args)) => bench::rootless::run(args).await,
        None => {
            bench::audit::run(defaults()).await?;
            bench::remap::run(defaults())?;
            bench::backup::run(defaults())?;
            bench::recreate::run(defaults()).await?;
            bench::rootless::run(defaults()).await?;
            bench::controller::run(defaults()).await
        }
    }
}

/// A subcommand's arguments with every default.
fn defaults<T: clap::Args>() -> T {
    #[derive(Parser)]
    struct Only<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Only::<T>::parse_from(["fleet-bench"]).args
}
