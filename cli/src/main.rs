//! fleetctl: parse, run, exit with the documented code.

use std::process::ExitCode;

use clap::Parser;
use fleetctl::args::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    fleet_core::process::init_tracing("warn");
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match fleetctl::run(cli, &mut stdout).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            fleetctl::report_error(&error);
            ExitCode::from(error.code)
        }
    }
}
