//! The durable run: what the controller's store keeps, what `runs show -o
//! json` prints and fleetctl reads. A run's header (options, waves, hosts,
//! phase) is one record; each container's migration (its steps and their
//! outcomes) is another, so a step's journal write stays small however
//! large the fleet.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::migration::LeftAlone;
use crate::plan::ContainerPlan;
use crate::step::StepKind;
use crate::target::Ids;

/// Controller-side cost of the run's steps (journal writes and
/// bookkeeping, not the agent's work): what the overhead benchmark reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overhead {
    pub steps: u64,
    pub total_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunKind {
    Migrate,
    /// Undoes what run `of` did, from its retained checkpoints.
    Rollback {
        of: String,
    },
}

pub use crate::run_options::{BatchSize, FailureBudget, OnFailure, OptionError, RunOptions};

/// The name a unit variant has in documents (`completed-with-failures`,
/// `step-started`): its serde name, so the two cannot differ.
pub fn document_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunPhase {
    Running,
    /// Waiting for `fleetctl runs resume` (after the canary, or asked).
    Paused,
    /// Every host finished and none failed.
    Succeeded,
    /// Finished; some hosts failed and were rolled back, within the budget.
    CompletedWithFailures,
    /// Stopped starting new work: the budget was exceeded, or on-failure=halt.
    Halted,
    /// on-failure=rollback-run: everything the run did was undone.
    RolledBack,
    /// Stopped by `fleetctl runs abort`.
    Aborted,
}

impl RunPhase {
    /// The name `-o json` and messages use (`completed-with-failures`).
    pub fn name(self) -> String {
        document_name(&self)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunPhase::Running | RunPhase::Paused)
    }
}

/// An operator's request, taken at the next container boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    Pause,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    Pending,
    Running,
    Done,
    /// A container failed; the host's migrated containers are being rolled back.
    RollingBack,
    /// A container failed; the host's migrated containers were rolled back.
    RolledBack,
    /// A container failed (and was rolled back); the others stay as they are.
    Failed,
    /// A rollback could not reach the agent or failed: retried until it is done.
    NeedsReconcile,
    /// The run was aborted or halted while this host was
    /// between containers: each is migrated or exactly as before, the rest
    /// were never started.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRun {
    pub name: String,
    pub address: String,
    pub state: HostState,
    pub error: Option<String>,
    /// Container record keys, in plan order.
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub kind: RunKind,
    pub created_by: String,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub options: RunOptions,
    pub phase: RunPhase,
    pub control: Option<Control>,
    /// Host names per wave: the canary first, then the batches.
    pub waves: Vec<Vec<String>>,
    /// Waves fully finished (the driver resumes at this one).
    pub waves_done: usize,
    pub hosts: Vec<HostRun>,
    /// Failed hosts allowed before the run halts.
    pub budget: u32,
    pub failed_hosts: u32,
    /// Why the run stopped, when it did not succeed.
    pub note: Option<String>,
    /// Set when the run must stop starting new work: the phase it ends in.
    pub stopping: Option<RunPhase>,
    /// Controller-side cost per step (journal and bookkeeping).
    pub overhead: Overhead,
    /// Set by `fleetctl prune`: when and by whom the checkpoints were released.
    pub pruned: Option<Pruned>,
    /// Set on a migrate run that a later rollback run undid.
    pub rolled_back_by: Vec<String>,
    /// The sequence number of its `run-finished` event: a watch from there
    /// follows what the run still puts back after it ended.
    #[serde(default)]
    pub finished_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    pub unix_ms: u64,
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerState {
    /// Nothing to do (exempt, refused, already non-root): see the plan.
    NotMigrated,
    Pending,
    Migrating,
    Migrated,
    RollingBack,
    /// Back exactly as it was before the run.
    RolledBack,
    /// Its undo failed or could not reach the agent: retried until done.
    NeedsReconcile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Journaled and flushed; the agent may or may not have acted.
    Intent,
    Done,
    Failed,
    UndoIntent,
    Undone,
    UndoFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The agent's idempotency key within the run.
    pub id: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub outcome: Option<Value>,
    pub error: Option<String>,
    pub agent_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRun {
    pub key: String,
    pub host: String,
    pub plan: ContainerPlan,
    pub state: ContainerState,
    pub steps: Vec<StepRecord>,
    /// The ids the container runs as after the migration.
    pub target: Option<Ids>,
    pub error: Option<String>,
    /// The service's downtime as the agent measured it: the old container
    /// exited → the new one verified.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// The stop requested → the new one verified (the stop's own grace
    /// period included).
    #[serde(default)]
    pub downtime_from_stop_ms: Option<u64>,
    /// What the ownership step left as it was (its outcome, read).
    #[serde(default, skip_serializing_if = "LeftAlone::is_empty")]
    pub left_alone: LeftAlone,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
}

impl ContainerRun {
    /// A container's record before the run has done anything to it.
    pub fn new(key: String, host: String, plan: ContainerPlan, state: ContainerState) -> Self {
        ContainerRun {
            key,
            host,
            plan,
            state,
            steps: Vec::new(),
            target: None,
            error: None,
            downtime_ms: None,
            downtime_from_stop_ms: None,
            left_alone: LeftAlone::default(),
            started_unix_ms: None,
            finished_unix_ms: None,
        }
    }

    pub fn step(&self, kind: StepKind) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.kind == kind)
    }
}

/// One line of a run's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub seq: u64,
    pub unix_ms: u64,
    pub host: Option<String>,
    pub container: Option<String>,
    pub step: Option<StepKind>,
    pub what: EventKind,
    pub message: String,
    /// Progress counters of a long step (backup, ownership).
    pub entries: u64,
    pub changed: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    RunStarted,
    WaveStarted,
    HostStarted,
    StepStarted,
    StepProgress,
    StepDone,
    StepFailed,
    ContainerMigrated,
    ContainerFailed,
    UndoStarted,
    UndoDone,
    UndoFailed,
    ContainerRolledBack,
    /// Something an operator should know that did not fail the step (what
    /// the ownership walk left alone).
    Warning,
    HostDone,
    HostFailed,
    Reconciled,
    Paused,
    Resumed,
    Halted,
    RunFinished,
}

/// The one-line view `fleetctl runs list` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub kind: RunKind,
    pub phase: RunPhase,
    pub created_by: String,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub hosts: usize,
    pub failed_hosts: u32,
    pub pruned: bool,
}

impl Run {
    /// A run as it starts, now: running, nothing done, no failure yet.
    pub fn started(
        id: String,
        kind: RunKind,
        created_by: String,
        options: RunOptions,
        hosts: Vec<HostRun>,
        waves: Vec<Vec<String>>,
        budget: u32,
    ) -> Self {
        Run {
            id,
            kind,
            created_by,
            created_unix_ms: crate::now_ms(),
            finished_unix_ms: None,
            options,
            phase: RunPhase::Running,
            control: None,
            waves,
            waves_done: 0,
            hosts,
            budget,
            failed_hosts: 0,
            note: None,
            stopping: None,
            overhead: Overhead::default(),
            pruned: None,
            rolled_back_by: Vec::new(),
            finished_seq: None,
        }
    }

    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            kind: self.kind.clone(),
            phase: self.phase,
            created_by: self.created_by.clone(),
            created_unix_ms: self.created_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            hosts: self.hosts.len(),
            failed_hosts: self.failed_hosts,
            pruned: self.pruned.is_some(),
        }
    }

    pub fn host_mut(&mut self, name: &str) -> Option<&mut HostRun> {
        self.hosts.iter_mut().find(|h| h.name == name)
    }
}

/// A run with its containers, as `GetRun` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub run: Run,
    pub containers: Vec<ContainerRun>,
}
