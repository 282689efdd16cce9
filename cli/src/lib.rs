//! fleetctl: the operators' CLI. Talks only to the controller.
//!
//! `run` is the whole program minus process setup, so tests can drive it
//! in-process; `main.rs` only parses, runs and exits with the code.

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
pub mod render;

use std::io::Write;

use crate::args::{Cli, Command};
use crate::exit::CliError;

/// Runs one command, writing its output to `out`; returns the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<u8, CliError> {
    match cli.command {
        Command::Certs(command) => commands::certs::run(command, out).map(|()| exit::OK),
        Command::Completions { shell } => {
            commands::docs::completions(shell, out);
            Ok(exit::OK)
        }
        Command::Man { dir } => commands::docs::man(dir.as_deref(), out).map(|()| exit::OK),
        Command::Hosts(command) => {
            let mut controller = client::connect(&config::resolve(&cli.connect)?)?;
            commands::hosts::run(&mut controller, command, out)
                .await
                .map(|()| exit::OK)
        }
        Command::Whoami => {
            let mut controller = client::connect(&config::resolve(&cli.connect)?)?;
            commands::hosts::whoami(&mut controller, out)
                .await
                .map(|()| exit::OK)
        }
        Command::Audit(args) => {
            let mut controller = client::connect(&config::resolve(&cli.connect)?)?;
            commands::audit::run(&mut controller, args, out).await
        }
        Command::Plan(args) => commands::plan::run(&mut connect(&cli.connect)?, args, out).await,
        Command::Migrate(args) => {
            commands::runs::migrate(&mut connect(&cli.connect)?, args, out).await
        }
        Command::Runs(command) => {
            commands::runs::runs(&mut connect(&cli.connect)?, command, out).await
        }
        Command::Rollback(args) => {
            commands::runs::rollback(&mut connect(&cli.connect)?, args, out).await
        }
        Command::Prune { run, yes } => {
            commands::runs::prune(&mut connect(&cli.connect)?, &run, yes, out).await
        }
        Command::Log { limit, output } => {
            commands::runs::log(&mut connect(&cli.connect)?, limit, output, out).await
        }
    }
}

fn connect(flags: &args::ConnectFlags) -> Result<client::Controller, CliError> {
    client::connect(&config::resolve(flags)?)
}

/// Prints an error the way every fleetctl error is printed.
pub fn report_error(error: &CliError) {
    let _ = writeln!(std::io::stderr(), "fleetctl: {}", error.message);
}
