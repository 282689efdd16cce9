//! The agent's errors, and their one mapping to gRPC statuses.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no container engine socket found (tried {tried}); start the engine or pass --engine-socket"
    )]
    NoSocket { tried: String },
    #[error("cannot reach the container engine at {socket}: {message}")]
    Unreachable { socket: String, message: String },
    #[error("container {0} does not exist (it may have just been removed)")]
    NoSuchContainer(String),
    #[error("engine call {call} failed: {message}")]
    Api { call: String, message: String },
}

impl EngineError {
    /// Classifies a bollard error from a call about `container`.
    pub fn from_bollard(call: &str, container: &str, error: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match error {
            B::DockerResponseServerError {
                status_code: 404, ..
            } => EngineError::NoSuchContainer(container.to_string()),
            other => EngineError::Api {
                call: call.to_string(),
                message: other.to_string(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] fleet_core::tls::TlsError),
    #[error("the agent's certificate must carry the agent role, but {0}")]
    WrongOwnRole(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match error {
            EngineError::NoSocket { .. } | EngineError::Unreachable { .. } => {
                tonic::Status::unavailable(message)
            }
            EngineError::NoSuchContainer(_) => tonic::Status::not_found(message),
            EngineError::Api { .. } => tonic::Status::internal(message),
        }
    }
}

impl From<crate::steps::StepError> for tonic::Status {
    fn from(error: crate::steps::StepError) -> Self {
        use crate::backup::BackupError;
        use crate::container::ContainerError;
        use crate::journal::JournalError;
        use crate::remap::RemapError;
        use crate::steps::StepError as E;
        use crate::users::UserError;
        let message = error.to_string();
        match error {
            E::Engine(e) => e.into(),
            E::Invalid(_)
            | E::KindMismatch { .. }
            | E::Journal(JournalError::InvalidId { .. })
            | E::Remap(RemapError::InvalidMapping(_))
            | E::User(UserError::InvalidName { .. }) => tonic::Status::invalid_argument(message),
            E::NoSuchStep { .. }
            | E::Journal(JournalError::NoSuchRun(_))
            | E::Container(ContainerError::NotFound(_))
            | E::Backup(BackupError::NotFound(_)) => tonic::Status::not_found(message),
            E::AlreadyUndone { .. }
            | E::Pruned { .. }
            | E::NotSettled { .. }
            | E::Container(ContainerError::Refused(_))
            | E::Container(ContainerError::CreateFailed { .. })
            | E::Container(ContainerError::Verify(_))
            | E::Remap(RemapError::ReadOnly { .. })
            | E::Remap(RemapError::NotPermitted { .. })
            | E::Remap(RemapError::ManifestMismatch { .. })
            | E::User(UserError::Conflict(_))
            | E::User(UserError::RangeExhausted(..)) => tonic::Status::failed_precondition(message),
            E::Backup(BackupError::NoSpace { .. }) => tonic::Status::resource_exhausted(message),
            E::Container(ContainerError::Unreachable(_)) => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}
