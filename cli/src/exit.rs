//! Exit codes, documented in `fleetctl --help` and the README.

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
/// `--fail-on` found what it was told to fail on.
pub const GATE_TRIPPED: u8 = 3;
/// `--fail-on` was given but some host could not be audited.
pub const INCOMPLETE: u8 = 4;
/// A run finished, but some hosts failed and were rolled back (within the
/// budget), or on-failure=rollback-run undid the whole run.
pub const ROLLED_BACK: u8 = 5;
/// A run halted (failure budget exceeded, on-failure=halt) or was aborted.
pub const HALTED: u8 = 6;
/// A run is paused, waiting for `fleetctl runs resume`.
pub const PAUSED: u8 = 7;

/// An error that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: USAGE,
            message: message.into(),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        CliError {
            code: ERROR,
            message: message.into(),
        }
    }
}
