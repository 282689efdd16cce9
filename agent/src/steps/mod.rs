//! The agent's steps: the runner (`runner.rs`: journal, replay, recovery,
//! undo, rollback, and the one table from kind to step), what a step is
//! (`step.rs`), what a caller asks (`spec.rs`), one file per kind of step,
//! the mounts the ownership and backup steps touch (`mounts.rs`), prune
//! (`prune.rs`) and the run listing (`runs.rs`).

mod backup;
mod image;
mod mounts;
mod ownership;
mod place;
mod prune;
mod recreate;
mod restore;
mod runner;
mod runs;
mod spec;
mod step;
mod stop;
mod user;
mod verify;
mod volumes;

pub use mounts::OwnedMount;
pub use ownership::OwnershipOutcome;
pub use prune::{PruneOutcome, PrunedBackup, PrunedContainer};
pub use runner::StepRunner;
pub use runs::{RunSummary, rfc3339};
pub use spec::{
    BackupSpec, Carry, ImageSpec, OwnershipSpec, PlaceSpec, RecreateSpec, RestoreSpec, StepSpec,
    StopSpec, UserSpec, VerifySpec, VolumesSpec,
};
pub use step::{ProgressTx, StepError, StepProgress, StepResult};
