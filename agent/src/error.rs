//! The agent's own error: what stops it from serving. Every module's
//! errors live with their module; `wire.rs` maps them to gRPC statuses.

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] fleet_core::tls::TlsError),
    #[error("the agent's certificate must carry the agent role, but {0}")]
    WrongOwnRole(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}
