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
        Command::Inspect {
            mut flags,
            skip_ownership,
        } => {
            // Local inspection needs no certificates.
            flags.ca = flags.ca.or_else(|| Some("-".into()));
            flags.cert = flags.cert.or_else(|| Some("-".into()));
            flags.key = flags.key.or_else(|| Some("-".into()));
            flags.no_inspect_cache = true;
            let config = flags.resolve()?;
            let shutdown = CancellationToken::new();
            let inspector = fleet_agent::start_inspector(&config, &shutdown);
            let report = inspector
                .inspect(&InspectOptions {
                    containers: Vec::new(),
                    skip_ownership,
                })
                .await?;
            shutdown.cancel();
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
