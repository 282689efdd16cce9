//! Shell completions and man pages, generated from the clap definitions.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::args::Cli;
use crate::exit::CliError;

pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "fleetctl", out);
}

pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> Result<(), CliError> {
    let command = Cli::command();
    match dir {
        None => clap_mangen::Man::new(command)
            .render(out)
            .map_err(|e| CliError::error(e.to_string())),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::error(format!("{}: {e}", dir.display())))?;
            clap_mangen::generate_to(command, dir)
                .map_err(|e| CliError::error(format!("{}: {e}", dir.display())))?;
            let _ = writeln!(out, "man pages written to {}", dir.display());
            Ok(())
        }
    }
}
