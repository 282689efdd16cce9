//! fleetctl: parse, run, exit with the documented code.

use std::process::ExitCode;

use clap::Parser;
use fleetctl::args::Cli;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    fleet_core::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: cannot start the runtime: {e}");
            return ExitCode::from(fleetctl::exit::ERROR);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(fleetctl::run(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            fleetctl::report_error(&error);
            ExitCode::from(error.code)
        }
    }
}
