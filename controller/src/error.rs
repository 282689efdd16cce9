//! The controller's errors, and their one mapping to gRPC statuses.

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("controller store: {0}")]
    Store(String),
    #[error(transparent)]
    Tls(#[from] fleet_core::tls::TlsError),
    #[error("the controller's certificate must carry the controller role, but {0}")]
    WrongOwnRole(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl From<serde_json::Error> for ControllerError {
    fn from(e: serde_json::Error) -> Self {
        ControllerError::Store(format!("corrupt record: {e}"))
    }
}
