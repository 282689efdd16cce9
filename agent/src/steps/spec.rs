//! What a caller asks of the step runner: one spec type per kind of step,
//! and `StepSpec`, which is one of them.

use fleet_core::step::{Probe, StepKind};
use fleet_core::userns::UsernsMode;
use serde::{Deserialize, Serialize};

use crate::recreate::RecreateRequest;
use crate::remap::IdMapping;
use crate::users::UserRequest;

/// A backup of the container's mounts, after its hooks ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    pub container: String,
    /// Commands run in the container first, each with its timeout (s).
    pub hooks: Vec<(Vec<String>, u64)>,
    pub retention_days: u64,
}

/// A dedicated user on the host.
pub type UserSpec = UserRequest;

/// A stop of the container (its own stop signal and timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSpec {
    pub container: String,
}

/// An ownership change of the container's mounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnershipSpec {
    pub container: String,
    pub mapping: IdMapping,
    pub skip_if_root_matches: bool,
    pub allow_protected_hardlinks: bool,
    /// Destinations to change; all bind and volume mounts when empty.
    pub mounts: Vec<String>,
    /// A rootless move: `mapping` is left empty and made from every id the
    /// mounts use, carried from the rootful engine to the account's
    /// namespace (`userns::carry`).
    #[serde(default)]
    pub carry: Option<Carry>,
}

/// Where a rootless move's data goes: the account, and how the container's
/// ids sit on its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    pub account: String,
    pub userns: UsernsMode,
    /// The container's user after the move when it is not root: what the
    /// container's root owned becomes its (then carried), as in place.
    #[serde(default)]
    pub inside: Option<(u32, u32)>,
}

/// A faithful recreate under a new user.
pub type RecreateSpec = RecreateRequest;

/// The health gate after a recreate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySpec {
    pub container: String,
    pub deadline_secs: u64,
    pub min_running_secs: u64,
    pub probe: Option<Probe>,
    /// The container runs under this rootless account's engine.
    #[serde(default)]
    pub account: Option<String>,
}

/// The container's image loaded into its rootless account's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub container: String,
    pub account: String,
}

/// The stopped container's named volumes handed to its rootless account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesSpec {
    pub container: String,
    pub account: String,
}

/// The container created under its rootless account's engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceSpec {
    pub container: String,
    pub account: String,
    pub userns: UsernsMode,
    /// The user inside the container; the old container's when unset (root
    /// inside is the account's own uid outside).
    #[serde(default)]
    pub user: Option<(u32, u32)>,
}

/// A restore of a checkpoint backup (not a step of a migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub backup_id: String,
    /// Sources or destinations to restore; every mount when empty.
    pub mounts: Vec<String>,
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepSpec {
    Backup(BackupSpec),
    User(UserSpec),
    Stop(StopSpec),
    Ownership(OwnershipSpec),
    Recreate(RecreateSpec),
    Verify(VerifySpec),
    Image(ImageSpec),
    Volumes(VolumesSpec),
    Place(PlaceSpec),
    Restore(RestoreSpec),
}

impl StepSpec {
    pub fn kind(&self) -> StepKind {
        match self {
            StepSpec::Backup(_) => StepKind::Backup,
            StepSpec::User(_) => StepKind::User,
            StepSpec::Stop(_) => StepKind::Stop,
            StepSpec::Ownership(_) => StepKind::Ownership,
            StepSpec::Recreate(_) => StepKind::Recreate,
            StepSpec::Verify(_) => StepKind::Verify,
            StepSpec::Image(_) => StepKind::Image,
            StepSpec::Volumes(_) => StepKind::Volumes,
            StepSpec::Place(_) => StepKind::Place,
            StepSpec::Restore(_) => StepKind::Restore,
        }
    }
}

/// The spec of one kind, taken out of a `StepSpec` of that kind: how the
/// runner's one table from kind to step hands each step its own spec.
pub trait KindSpec: Sized {
    fn of(spec: &StepSpec) -> Option<&Self>;
}

macro_rules! kind_spec {
    ($($variant:ident($spec:ty)),* $(,)?) => {$(
        impl KindSpec for $spec {
            fn of(spec: &StepSpec) -> Option<&Self> {
                match spec {
                    StepSpec::$variant(spec) => Some(spec),
                    _ => None,
                }
            }
        }
    )*};
}

kind_spec!(
    Backup(BackupSpec),
    User(UserSpec),
    Stop(StopSpec),
    Ownership(OwnershipSpec),
    Recreate(RecreateSpec),
    Verify(VerifySpec),
    Image(ImageSpec),
    Volumes(VolumesSpec),
    Place(PlaceSpec),
    Restore(RestoreSpec),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_as_before_the_split_and_hands_each_kind_its_own() {
        // The form of the enum of struct variants the specs replaced.
        let spec: StepSpec =
            serde_json::from_str(r#"{"kind":"restore","backup_id":"b","mounts":["/data"]}"#)
                .unwrap();
        assert_eq!(
            spec,
            StepSpec::Restore(RestoreSpec {
                backup_id: "b".into(),
                mounts: vec!["/data".into()],
            })
        );
        assert_eq!(spec.kind(), StepKind::Restore);
        assert!(RestoreSpec::of(&spec).is_some());
        assert!(StopSpec::of(&spec).is_none());
        let stop = StepSpec::Stop(StopSpec {
            container: "c".into(),
        });
        assert_eq!(
            serde_json::to_value(&stop).unwrap(),
            serde_json::json!({"kind": "stop", "container": "c"})
        );
    }
}
