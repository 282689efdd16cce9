//! The agent's edge to the wire: its one mapping from the agent's errors
//! to gRPC statuses.

use tonic::Status;

use crate::backup::BackupError;
use crate::container::ContainerError;
use crate::engine::EngineError;
use crate::journal::JournalError;
use crate::remap::RemapError;
use crate::steps::StepError;
use crate::users::UserError;

impl From<EngineError> for Status {
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match error {
            EngineError::NoSocket { .. } | EngineError::Unreachable { .. } => {
                Status::unavailable(message)
            }
            EngineError::NoSuchContainer(_) => Status::not_found(message),
            EngineError::Api { .. } => Status::internal(message),
        }
    }
}

impl From<StepError> for Status {
    fn from(error: StepError) -> Self {
        use StepError as E;
        let message = error.to_string();
        match error {
            E::Engine(e) => e.into(),
            E::Invalid(_)
            | E::KindMismatch { .. }
            | E::Journal(JournalError::InvalidId { .. })
            | E::Remap(RemapError::InvalidMapping(_))
            | E::User(UserError::InvalidName { .. }) => Status::invalid_argument(message),
            E::NoSuchStep { .. }
            | E::Journal(JournalError::NoSuchRun(_))
            | E::Container(ContainerError::NotFound(_))
            | E::Backup(BackupError::NotFound(_)) => Status::not_found(message),
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
            | E::User(UserError::RangeExhausted(..)) => Status::failed_precondition(message),
            E::Backup(BackupError::NoSpace { .. }) => Status::resource_exhausted(message),
            E::Container(ContainerError::Unreachable(_)) => Status::unavailable(message),
            _ => Status::internal(message),
        }
    }
}
