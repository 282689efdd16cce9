//! fleet-agent: parse the configuration, set up logging and TLS, serve.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_agent::{AgentFlags, inspect::InspectOptions};
use fleet_core::CancellationToken;
use fleet_core::process::{cancel_on_signal, init_tracing};

#[derive(Debug, Parser)]
#[command(name = "fleet-agent", version, about = "The fleet host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent's gRPC API (mTLS; only the controller may call).
    Serve(AgentFlags),
    /// Inspect the local engine once and print the report as JSON (no network).
    Inspect {
        #[command(flatten)]
        flags: AgentFlags,
        /// Skip the ownership summary of mounts.
        #[arg(long)]
        skip_ownership: bool,
    },
    /// Break-glass: undo a run's steps on this host from the local journal,
    /// newest first, with no controller. Safe to repeat.
    Rollback {
        #[command(flatten)]
        flags: AgentFlags,
        /// The run id (see `fleet-agent runs`).
        #[arg(long)]
        run: String,
    },
    /// The runs this host has journaled, and where each step stands.
    Runs {
        #[command(flatten)]
        flags: AgentFlags,
    },
    /// The checkpoint backups kept on this host.
    Backups {
        #[command(flatten)]
        flags: AgentFlags,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Local commands need no certificates and no network.
fn local_config(mut flags: AgentFlags) -> anyhow::Result<fleet_agent::AgentConfig> {
    flags.ca = flags.ca.or_else(|| Some("-".into()));
    flags.cert = flags.cert.or_else(|| Some("-".into()));
    flags.key = flags.key.or_else(|| Some("-".into()));
    flags.no_inspect_cache = true;
    Ok(flags.resolve()?)
}

fn local_steps(
    flags: AgentFlags,
) -> anyhow::Result<(
    std::sync::Arc<fleet_agent::steps::StepRunner>,
    CancellationToken,
)> {
    let config = local_config(flags)?;
    let shutdown = CancellationToken::new();
    let inspector = fleet_agent::start_inspector(&config, &shutdown);
    let steps = std::sync::Arc::new(fleet_agent::steps_for(&config, inspector));
    Ok((steps, shutdown))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(flags) => {
            let config = flags.resolve()?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            fleet_agent::run(config, listener, shutdown).await?;
            Ok(())
        }
        Command::Rollback { flags, run } => {
            let (steps, shutdown) = local_steps(flags)?;
            let results = steps.rollback(&run, None).await;
            shutdown.cancel();
            let results = results?;
            for result in &results {
                println!(
                    "undone {} ({}): {}",
                    result.step,
                    result.kind.as_str(),
                    result.outcome
                );
            }
            println!("run {run}: {} steps undone on this host", results.len());
            Ok(())
        }
        Command::Runs { flags } => {
            let (steps, shutdown) = local_steps(flags)?;
            shutdown.cancel();
            println!("{}", serde_json::to_string_pretty(&steps.runs())?);
            Ok(())
        }
        Command::Backups { flags } => {
            let (steps, shutdown) = local_steps(flags)?;
            shutdown.cancel();
            println!("{}", serde_json::to_string_pretty(&steps.backups().list())?);
            Ok(())
        }
        Command::Inspect {
            flags,
            skip_ownership,
        } => {
            let config = local_config(flags)?;
            let shutdown = CancellationToken::new();
            let inspector = fleet_agent::start_inspector(&config, &shutdown);
            let report = inspector
                .inspect(&InspectOptions {
                    containers: Vec::new(),
                    skip_ownership,
                    with_users: true,
                })
                .await?;
            shutdown.cancel();
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
