//! fleet-agent: parse the configuration, set up logging and TLS, serve.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_agent::{AgentFlags, inspect::InspectOptions};
use fleet_core::CancellationToken;

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    fleet_core::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
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

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
