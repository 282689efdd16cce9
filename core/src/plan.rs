//! The plan: per host, per container, what a migration would do (or why
//! not), in the order it would do it. The controller makes it from a
//! policy and an audit and records it in runs and saved plans; fleetctl
//! reads the same types.

use serde::{Deserialize, Serialize};

use crate::migration::{IdCollision, MountPlan, RuntimeDirPlan};
use crate::step::Probe;
use crate::target::Target;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub created_unix_ms: u64,
    pub hosts: Vec<HostPlan>,
}

/// A plan as `fleetctl plan` shows and saves it: the plan, and what it was
/// made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanDocument {
    #[serde(flatten)]
    pub plan: Plan,
    /// Absent from plans an older controller made.
    #[serde(default)]
    pub basis: Option<PlanBasis>,
}

/// Everything besides the audit that the plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanBasis {
    pub policy: PolicySource,
    /// Of the policy's text: to compare with the operator's file
    /// (`sha256sum policy.toml`), and to catch an edited copy in the plan.
    pub policy_sha256: String,
    /// `--container` globs; every container if empty.
    pub containers: Vec<String>,
    pub include_pods: bool,
    /// `--target rootless` (absent from older plans: in place).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rootless: bool,
}

/// The text a policy was read from. A saved plan carries it, so applying
/// the plan can make it again from the very same rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    /// The operator's file, for error messages only.
    pub path: String,
    /// Empty: the default policy.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    /// Why the host could not be planned (unreachable...), if so.
    pub error: Option<String>,
    pub containers: Vec<ContainerPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub id: String,
    pub image: String,
    /// The configuration this plan was made against.
    pub fingerprint: String,
    /// Who it runs as now (the audit's verdict).
    pub current: String,
    pub action: Action,
    /// Ordering class (stateless, cache, queue, database, stateful, or the
    /// policy's).
    pub class: String,
    /// Position within the host, from 1; linked containers share a group.
    pub order: u32,
    pub group: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Migrate(Migration),
    Exempt {
        reason: String,
    },
    Refused {
        reasons: Vec<String>,
    },
    /// Nothing to do.
    Skip {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// Where the container goes and as whom (a new user's ids are
    /// allocated by its host's agent when it is made, unless given).
    pub target: Target,
    /// Old uid/gid whose files move to the target.
    pub from_ids: Vec<u32>,
    pub mounts: Vec<MountPlan>,
    pub backup_bytes: u64,
    pub hooks: Vec<Vec<String>>,
    pub probe: Option<Probe>,
    pub min_healthy_secs: u64,
    pub deadline_secs: u64,
    pub retention_days: u64,
    pub expected_downtime_ms: u64,
    /// Target ids that already belong to a host account or group
    /// (`on_host_id_collision = "warn"`): the service shares its files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_id_collisions: Vec<IdCollision>,
    /// `on_host_id_collision = "dedicated"` chose this dedicated account
    /// instead of what the strategy gave: what, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead_of: Option<String>,
    /// Directories of the writable layer outside the mounts that the
    /// recreate gives to the target ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_dirs: Vec<RuntimeDirPlan>,
    /// Writable-layer content the recreate loses, with the rule's leave
    /// (`allow_layer_loss = true`); the recreate is told it is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_loss_allowed: Vec<String>,
    /// What the engine makes this migration do differently.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_notes: Vec<String>,
}
