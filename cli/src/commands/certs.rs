//! `fleetctl certs init|issue`.

use std::io::Write;

use fleet_core::pki::{self, IssueRequest, Validity};

use crate::args::CertsCommand;
use crate::exit::CliError;

pub fn run(command: CertsCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let fail = |e: pki::PkiError| match e {
        pki::PkiError::Io { .. } | pki::PkiError::Rcgen(_) => CliError::error(e.to_string()),
        _ => CliError::usage(e.to_string()),
    };
    match command {
        CertsCommand::Init { dir, force } => {
            let cert = pki::init_ca(&dir, force).map_err(fail)?;
            let _ = writeln!(
                out,
                "fleet CA created: {} (key {} is mode 0600; keep it offline when you can)",
                cert.display(),
                dir.join(pki::CA_KEY_FILE).display()
            );
        }
        CertsCommand::Issue {
            dir,
            role,
            name,
            sans,
            days,
            out: out_dir,
            force,
        } => {
            let request = IssueRequest {
                role: role.into(),
                name,
                sans,
                validity: Validity::days_from_now(days).map_err(fail)?,
            };
            let out_dir = out_dir.unwrap_or_else(|| dir.clone());
            let paths = pki::issue(&dir, &out_dir, &request, force).map_err(fail)?;
            let _ = writeln!(
                out,
                "issued {} certificate '{}': {} (key {}, mode 0600), valid {days} days",
                request.role,
                request.name,
                paths.cert.display(),
                paths.key.display()
            );
        }
    }
    Ok(())
}
