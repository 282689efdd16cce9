//! What the controller and the agent both say about a migration step: its
//! kind (the journal's, the run record's and the event stream's), the
//! health probe the verify step runs, and the counters a long step streams.

use serde::{Deserialize, Serialize};

/// What kind of step a record is about; decides how it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Backup,
    User,
    Stop,
    Ownership,
    Recreate,
    Verify,
    /// The exact image loaded into a rootless account's own storage.
    Image,
    /// Named volumes handed to a rootless account's engine.
    Volumes,
    /// The container created under a rootless account's engine, the
    /// rootful one kept stopped as the checkpoint.
    Place,
    /// A checkpoint's restore: an agent step of its own, not a step of a
    /// migration.
    Restore,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Backup => "backup",
            StepKind::User => "user",
            StepKind::Stop => "stop",
            StepKind::Ownership => "ownership",
            StepKind::Recreate => "recreate",
            StepKind::Verify => "verify",
            StepKind::Image => "image",
            StepKind::Volumes => "volumes",
            StepKind::Place => "place",
            StepKind::Restore => "restore",
        }
    }
}

/// How the verify step knows the service answers, beyond running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    Tcp { address: String },
    Http { url: String },
    Exec { argv: Vec<String> },
}

/// The counters a long step (backup, ownership) streams while it works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub entries: u64,
    pub changed: u64,
    pub bytes: u64,
}
