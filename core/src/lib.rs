//! What every fleet component shares: the one typed model the components
//! speak (audit, plan, target, run, step), certificates and roles, and the
//! mTLS plumbing. No component-specific logic lives here.

pub mod audit;
pub mod auth;
pub mod capabilities;
pub mod config;
pub mod fault;
pub mod migration;
pub mod names;
pub mod pki;
pub mod plan;
pub mod process;
pub mod role;
pub mod run;
pub mod run_options;
pub mod step;
pub mod target;
pub mod text;
pub mod tls;
pub mod userns;

pub use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch (0 if the clock is before it): the one
/// timestamp every journal, event and log record carries.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The one rule for names fleet stores and puts in file names (hosts,
/// certificates): 1-64 of letters, digits, '.', '-', '_', not starting with
/// a dot (no hidden files, no "..").
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
