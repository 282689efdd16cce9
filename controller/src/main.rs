//! fleet-controller: parse the configuration, set up logging and TLS, serve.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fleet_controller::ControllerFlags;
use fleet_core::CancellationToken;
use fleet_core::process::{cancel_on_signal, init_tracing};

#[derive(Debug, Parser)]
#[command(name = "fleet-controller", version, about = "The fleet controller")]
struct Cli {
    #[command(flatten)]
    flags: ControllerFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.flags.resolve()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    fleet_controller::run(config, listener, shutdown).await?;
    Ok(())
}
