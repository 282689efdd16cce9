//! The audit domain model: what an agent reports about its host's containers.
//!
//! These are the types the agent computes and the CLI renders; the wire
//! format lives in `fleet-proto`, which converts to and from these.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub hostname: String,
    pub engine: EngineFacts,
    pub containers: Vec<ContainerReport>,
    /// Problems that did not stop the inspection (a container that vanished, ...).
    pub warnings: Vec<String>,
    pub inspected_at_unix_ms: u64,
    /// The host's own accounts and groups (its /etc/passwd and /etc/group):
    /// a target id that already belongs to one is someone else's id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_users: Vec<HostAccount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_groups: Vec<HostAccount>,
    /// What the host offers a rootless target.
    #[serde(default)]
    pub capabilities: crate::capabilities::HostCapabilities,
    /// The host's subordinate uid and gid ranges (`/etc/subuid`,
    /// `/etc/subgid`), when planning: a rootless account's must be its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_subuids: Vec<SubordinateRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_subgids: Vec<SubordinateRange>,
}

/// One line of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubordinateRange {
    pub owner: String,
    pub start: u32,
    pub count: u32,
}

impl SubordinateRange {
    /// The last id of the range.
    pub fn end(&self) -> u32 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }

    pub fn overlaps(&self, other: &SubordinateRange) -> bool {
        self.count > 0 && other.count > 0 && self.start <= other.end() && other.start <= self.end()
    }
}

/// An account or group of the host, by name and numeric id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAccount {
    pub name: String,
    pub id: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Docker,
    Podman,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineFacts {
    pub kind: EngineKind,
    pub version: String,
    pub api_version: String,
    pub rootless: bool,
    pub userns_remap: bool,
    pub socket: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: String,
    pub identity: Identity,
    pub findings: Vec<Finding>,
    pub mounts: Vec<MountReport>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub pod: Option<String>,
    /// Problems with this container that did not stop the inspection.
    pub errors: Vec<String>,
    /// A digest of the configuration (a saved plan against another is stale).
    #[serde(default)]
    pub config_fingerprint: String,
    /// The container's own users, when asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<ImageUser>,
    /// Containers it shares a namespace or volumes with, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<String>,
    /// Of those, the ones this container points at (its `container:` modes
    /// and `VolumesFrom` sources): they must exist, and be recreated, first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub stop_timeout_secs: i64,
    /// `Config.ExposedPorts`, e.g. `6379/tcp`: with the image, what kind of
    /// service this is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// Directories outside the mounts, in the writable layer, that the
    /// container's processes own or write (runtime, lock and socket
    /// directories): a recreate starts from the image, where they are not
    /// theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_dirs: Vec<RuntimeDir>,
    /// Writable-layer paths with content of their own that a recreate
    /// would lose (planning only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_loss: Vec<String>,
    /// What this engine makes a migration do differently (planning only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_notes: Vec<String>,
    /// The rootless account whose engine runs it; None: the host's engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// What a move under a rootless account cannot do for this container
    /// (planning only): each a blocker of `--target rootless`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rootless_blockers: Vec<String>,
    /// What such a move would do differently (planning only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rootless_changes: Vec<String>,
}

/// A directory the container's processes own or write outside its mounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDir {
    /// The path inside the container.
    pub path: String,
    /// Its owner and mode in the container now.
    pub now: FileOwner,
    /// Its owner and mode in the image the recreated container starts
    /// from; `None` when the image does not have it.
    pub image: Option<FileOwner>,
    /// Why it counts: "owned by uid 999", "written (3 entries)".
    pub why: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub mode: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl ContainerReport {
    pub fn worst_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `Config.User` exactly as written; empty means the image default (root).
    pub configured_user: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// How uid:gid was obtained, or why it could not be.
    pub resolution: String,
    pub processes: Vec<ProcessIdentity>,
    pub verdict: Verdict,
}

/// One process of a running container, with its four ids (real, effective,
/// saved, filesystem) as seen inside the container and on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub ppid: i32,
    pub command: String,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub host_uids: [u32; 4],
}

impl ProcessIdentity {
    /// Any of the four uids being 0 inside the container means the process
    /// holds (or can get back) root: a saved uid of 0 can be restored.
    pub fn is_root(&self) -> bool {
        self.uids.contains(&0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Verdict {
    Root,
    StartsAsRootDropsTo { uid: u32 },
    NonRoot,
    RootlessEngine { host_uid: u32 },
    UsernsRemapped { host_uid: u32 },
    Unknown { reason: String },
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::Unknown {
            reason: "not inspected".into(),
        }
    }
}

impl Verdict {
    pub fn is_root(&self) -> bool {
        matches!(self, Verdict::Root)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Root => f.write_str("root"),
            Verdict::StartsAsRootDropsTo { uid } => write!(f, "starts-as-root-drops-to:{uid}"),
            Verdict::NonRoot => f.write_str("non-root"),
            Verdict::RootlessEngine { host_uid } => {
                write!(f, "rootless-engine (root maps to host uid {host_uid})")
            }
            Verdict::UsernsRemapped { .. } => f.write_str("userns-remapped"),
            Verdict::Unknown { .. } => f.write_str("unknown"),
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// docker-bench-security v1.6.0 check id, e.g. "5.5".
    pub check: String,
    pub severity: Severity,
    pub title: String,
    pub detail: String,
    /// True where docker-bench's own check would have passed this container.
    pub missed_by_docker_bench: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountReport {
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    pub volume_name: Option<String>,
    pub ownership: OwnershipSummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalkBound {
    Entries,
    Time,
}

impl WalkBound {
    pub fn as_str(self) -> &'static str {
        match self {
            WalkBound::Entries => "entries",
            WalkBound::Time => "time",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnershipSummary {
    /// Most common owners first.
    pub top_owners: Vec<OwnerCount>,
    pub entries: u64,
    pub bytes: u64,
    /// Which bound stopped the walk early, if any.
    pub bound_hit: Option<WalkBound>,
    /// Why there is no summary (host path gone, ...).
    pub error: Option<String>,
    /// True when the caller asked not to walk.
    pub skipped: bool,
    /// Entries owned by uid 0 or gid 0 that a remap of root's ids would
    /// change (device nodes and hard links with names outside the tree
    /// excluded: a remap leaves those alone).
    #[serde(default)]
    pub root_changing: u64,
    /// What a remap would leave alone, by path and why (at most 20), and
    /// how many in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    #[serde(default)]
    pub left_alone_count: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerCount {
    pub uid: u32,
    pub gid: u32,
    pub entries: u64,
}
