//! The host's own tools (shadow-utils, loginctl), run and their failures
//! reported with what they printed.

use std::path::Path;
use std::process::Command;

use super::error::UserError;

pub(super) fn run(program: &str, args: &[&str]) -> Result<(), UserError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| UserError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(UserError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

pub(super) fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}
