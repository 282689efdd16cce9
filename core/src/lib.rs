//! What every fleet component shares: the audit domain model, certificates
//! and roles, and the mTLS plumbing. No component-specific logic lives here.

pub mod audit;
pub mod auth;
pub mod config;
pub mod pki;
pub mod role;
pub mod tls;

pub use tokio_util::sync::CancellationToken;
