//! What a step is: the `Step` trait every kind implements (what it decides
//! before acting, what it does, how it is put back, what it reports), the
//! context it works in, and the errors, progress and result the runner
//! answers with.

use std::future::Future;

use fleet_core::step::{Progress, StepKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::backup::{BackupError, BackupStore};
use crate::container::{Api, ContainerError};
use crate::engine::Connected;
use crate::engine::EngineError;
use crate::inspect::Inspector;
use crate::journal::{JournalError, RunJournal};
use crate::recreate::RecreateError;
use crate::remap::RemapError;
use crate::rootless::{AccountEngines, RootlessError};
use crate::users::{UserError, UserSettings};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Remap(#[from] RemapError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Recreate(#[from] RecreateError),
    #[error(transparent)]
    Rootless(#[from] RootlessError),
    #[error("step '{step}' of run '{run}' was a {recorded} step, not a {asked} step")]
    KindMismatch {
        run: String,
        step: String,
        recorded: &'static str,
        asked: &'static str,
    },
    #[error("step '{step}' of run '{run}' was undone; start a new run to do it again")]
    AlreadyUndone { run: String, step: String },
    #[error("no step '{step}' in run '{run}'")]
    NoSuchStep { run: String, step: String },
    #[error(
        "run {run} was pruned on this host at {at}: its checkpoints (old containers and backups) are gone, so {consequence}"
    )]
    Pruned {
        run: String,
        at: String,
        consequence: &'static str,
    },
    #[error(
        "run {run} is not settled on this host ({detail}): finish it or roll it back before pruning it"
    )]
    NotSettled { run: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl StepError {
    /// A blocking task of a step that panicked or was cancelled.
    pub(super) fn task(error: tokio::task::JoinError) -> Self {
        StepError::Internal(error.to_string())
    }
}

/// Progress of a running step, for the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepProgress {
    pub step: String,
    pub phase: String,
    pub progress: Progress,
}

/// Where a running step sends its progress, if anyone listens.
pub type ProgressTx = mpsc::Sender<StepProgress>;

/// A step's final word.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub step: String,
    pub kind: StepKind,
    pub replayed: bool,
    pub outcome: Value,
    pub undone: bool,
}

/// One kind of step. The runner journals (and syncs) what `prepare`
/// decided before it calls `act`, and what `act` reports after; `undo`
/// puts the step back from that intent (and the outcome, when it got that
/// far), and is safe to repeat.
pub trait Step: Sync {
    /// What the caller asks for.
    type Spec: Sync;
    /// Everything decided before acting, so the step can be done, resumed
    /// or undone from the journal alone.
    type Intent: Serialize + DeserializeOwned + Send + Sync;
    /// What the step reports when done: journaled, and answered.
    type Outcome: Serialize + Send;

    /// Found in flight after a crash, the step is finished from its intent
    /// (it resumes where it stopped) rather than put back and done again.
    const RESUMES: bool = false;

    fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &Self::Spec,
    ) -> impl Future<Output = Result<Self::Intent, StepError>> + Send;

    fn act(
        &self,
        cx: &StepContext<'_>,
        intent: Self::Intent,
    ) -> impl Future<Output = Result<Self::Outcome, StepError>> + Send;

    /// Puts the step back; `outcome` is the journaled one when the step
    /// finished. Answers a note on what it did.
    fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: Self::Intent,
        outcome: Option<&Value>,
    ) -> impl Future<Output = Result<Value, StepError>> + Send;
}

/// What a step works with: the engine, the agent's stores and settings,
/// its run's journal (read only: the runner writes it) and its progress
/// stream.
pub struct StepContext<'a> {
    pub conn: &'a Connected,
    pub inspector: &'a Inspector,
    pub backups: &'a BackupStore,
    pub users: &'a UserSettings,
    pub accounts: &'a AccountEngines,
    pub journal: &'a RunJournal,
    pub step: &'a str,
    pub progress: Option<ProgressTx>,
}

impl<'a> StepContext<'a> {
    pub fn api(&self) -> Api<'a> {
        Api::new(self.conn)
    }

    /// Sends a progress report if there is room; a full stream drops the
    /// report, never the step.
    pub fn report(&self, phase: &str, progress: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.try_send(self.progress_of(phase, progress));
        }
    }

    pub fn progress_of(&self, phase: &str, progress: Progress) -> StepProgress {
        StepProgress {
            step: self.step.to_string(),
            phase: phase.to_string(),
            progress,
        }
    }

    /// The container's inspect document, if it is one of this agent's.
    pub async fn scoped(&self, container: &str) -> Result<Value, StepError> {
        let doc = self.api().inspect(container).await?;
        if let Some((key, value)) = self.inspector.scope() {
            let label = doc
                .pointer("/Config/Labels")
                .and_then(|l| l.get(key))
                .and_then(|v| v.as_str());
            if label != Some(value.as_str()) {
                return Err(ContainerError::NotFound(format!(
                    "{container} is not one of this agent's containers (label {key}={value})"
                ))
                .into());
            }
        }
        Ok(doc)
    }
}

/// A journal value of what a step decided or reported.
pub fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A journaled value read back as what it was written from.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, StepError> {
    serde_json::from_value(value.clone())
        .map_err(|e| StepError::Internal(format!("journal record unreadable: {e}")))
}
