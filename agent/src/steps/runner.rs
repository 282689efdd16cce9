//! The step runner: every mutating step goes through here. Its intent
//! (everything decided beforehand) is journaled and synced before it acts,
//! its outcome after. A repeated (run, step) returns the recorded result; a
//! step found in flight after a crash is finished (ownership resumes its
//! walk) or put back and done again; a run is undone step by step in
//! reverse. What each kind decides, does and undoes is its `Step`; the one
//! table from kind to step is `step_of`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use fleet_core::step::{Progress, StepKind};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::backup::BackupStep;
use super::image::ImageStep;
use super::ownership::OwnershipStep;
use super::place::PlaceStep;
use super::prune::{self, pruned_error};
use super::recreate::RecreateStep;
use super::restore::RestoreStep;
use super::runs::{self, RunSummary};
use super::spec::{KindSpec, StepSpec};
use super::step::{ProgressTx, Step, StepContext, StepError, StepResult, from_value, to_value};
use super::stop::StopStep;
use super::user::UserStep;
use super::verify::VerifyStep;
use super::volumes::VolumesStep;
use crate::backup::{BackupStore, MountBackup, VerifyOutcome};
use crate::engine::Engine;
use crate::inspect::Inspector;
use crate::journal::{Event, Record, RunJournal, StepState, validate_id};
use crate::rootless::{AccountEngines, PodmanCommand, UserManager};
use crate::users::UserSettings;

/// The one table from kind to step.
fn step_of(kind: StepKind) -> &'static dyn AnyStep {
    match kind {
        StepKind::Backup => &BackupStep,
        StepKind::User => &UserStep,
        StepKind::Stop => &StopStep,
        StepKind::Ownership => &OwnershipStep,
        StepKind::Recreate => &RecreateStep,
        StepKind::Verify => &VerifyStep,
        StepKind::Image => &ImageStep,
        StepKind::Volumes => &VolumesStep,
        StepKind::Place => &PlaceStep,
        StepKind::Restore => &RestoreStep,
    }
}

type Journaled<'a> = Pin<Box<dyn Future<Output = Result<Value, StepError>> + Send + 'a>>;

/// A `Step` with its types erased to the journal's JSON, so that one table
/// holds every kind.
trait AnyStep: Sync {
    fn resumes(&self) -> bool;
    fn prepare_json<'a>(&'a self, cx: &'a StepContext<'a>, spec: &'a StepSpec) -> Journaled<'a>;
    fn act_json<'a>(&'a self, cx: &'a StepContext<'a>, intent: &'a Value) -> Journaled<'a>;
    fn undo_json<'a>(
        &'a self,
        cx: &'a StepContext<'a>,
        intent: &'a Value,
        outcome: Option<&'a Value>,
    ) -> Journaled<'a>;
}

impl<S: Step> AnyStep for S
where
    S::Spec: KindSpec,
{
    fn resumes(&self) -> bool {
        S::RESUMES
    }

    fn prepare_json<'a>(&'a self, cx: &'a StepContext<'a>, spec: &'a StepSpec) -> Journaled<'a> {
        Box::pin(async move {
            let own = S::Spec::of(spec).ok_or_else(|| {
                StepError::Internal(format!(
                    "a {} spec was handed to another kind of step",
                    spec.kind().as_str()
                ))
            })?;
            Ok(to_value(&Step::prepare(self, cx, own).await?))
        })
    }

    fn act_json<'a>(&'a self, cx: &'a StepContext<'a>, intent: &'a Value) -> Journaled<'a> {
        Box::pin(async move {
            let intent = from_value(intent)?;
            Ok(to_value(&Step::act(self, cx, intent).await?))
        })
    }

    fn undo_json<'a>(
        &'a self,
        cx: &'a StepContext<'a>,
        intent: &'a Value,
        outcome: Option<&'a Value>,
    ) -> Journaled<'a> {
        Box::pin(async move { Step::undo(self, cx, from_value(intent)?, outcome).await })
    }
}

#[derive(Debug)]
pub struct StepRunner {
    runs_dir: PathBuf,
    engine: Arc<Engine>,
    inspector: Arc<Inspector>,
    backups: BackupStore,
    users: UserSettings,
    accounts: Arc<AccountEngines>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl StepRunner {
    pub fn new(
        state_dir: &Path,
        engine: Arc<Engine>,
        inspector: Arc<Inspector>,
        users: UserSettings,
    ) -> Self {
        StepRunner {
            runs_dir: state_dir.join("runs"),
            backups: BackupStore::new(state_dir),
            engine,
            inspector,
            users,
            accounts: Arc::new(AccountEngines::new(
                PodmanCommand::detect(None),
                UserManager::detect(),
                state_dir,
            )),
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The rootless accounts' engines these steps reach (the agent's
    /// configured podman runtime, its user manager).
    pub fn with_accounts(mut self, accounts: Arc<AccountEngines>) -> Self {
        self.accounts = accounts;
        self
    }

    pub fn users(&self) -> &UserSettings {
        &self.users
    }

    pub fn accounts(&self) -> &Arc<AccountEngines> {
        &self.accounts
    }

    pub fn runs_dir(&self) -> &Path {
        &self.runs_dir
    }

    pub fn backups(&self) -> &BackupStore {
        &self.backups
    }

    fn run_lock(&self, run: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run.to_string())
            .or_default()
            .clone()
    }

    /// What a step of the run of `journal` works with; connects the
    /// engine first, as every step's phase does.
    async fn context<'a>(
        &'a self,
        journal: &'a RunJournal,
        step: &'a str,
        progress: Option<ProgressTx>,
    ) -> Result<StepContext<'a>, StepError> {
        Ok(StepContext {
            conn: self.engine.connected().await?,
            inspector: &self.inspector,
            backups: &self.backups,
            users: &self.users,
            accounts: &self.accounts,
            journal,
            step,
            progress,
        })
    }

    /// Runs one step, exactly once per (run, step).
    pub async fn run(
        &self,
        run: &str,
        step: &str,
        spec: StepSpec,
        progress: Option<ProgressTx>,
    ) -> Result<StepResult, StepError> {
        validate_id("run id", run)?;
        validate_id("step id", step)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        let mut journal = RunJournal::open(&self.runs_dir, run, true)?;
        let kind = spec.kind();
        let state = journal.state(step);
        // A recorded result is still answered; nothing new is done.
        if !matches!(state, Some(StepState::Done { .. }))
            && let Some(refusal) = pruned_error(&journal, "it takes no new steps (start a new run)")
        {
            return Err(refusal);
        }
        match state {
            Some(StepState::Done {
                kind: recorded,
                outcome,
                ..
            }) => {
                if recorded != kind {
                    return Err(StepError::KindMismatch {
                        run: run.into(),
                        step: step.into(),
                        recorded: recorded.as_str(),
                        asked: kind.as_str(),
                    });
                }
                return Ok(StepResult {
                    step: step.into(),
                    kind,
                    replayed: true,
                    outcome,
                    undone: false,
                });
            }
            Some(StepState::Undone { .. }) | Some(StepState::Undoing { .. }) => {
                return Err(StepError::AlreadyUndone {
                    run: run.into(),
                    step: step.into(),
                });
            }
            Some(StepState::InFlight {
                kind: recorded,
                request,
            }) => {
                // The agent stopped mid-step. A step that resumes (the
                // ownership walk, from its manifests) is finished; anything
                // else is put back, then done again.
                if step_of(recorded).resumes() {
                    let outcome = self.act(&journal, step, recorded, &request, progress).await;
                    return self.finish(&mut journal, step, recorded, outcome);
                }
                self.undo_recorded(&journal, step, recorded, &request, None)
                    .await?;
            }
            // A failed attempt put back what it had done, unless that
            // failed too: make sure before trying again.
            Some(StepState::Failed {
                kind: recorded,
                request,
                ..
            }) => {
                self.undo_recorded(&journal, step, recorded, &request, None)
                    .await?;
            }
            None => {}
        }
        let intent = {
            let cx = self.context(&journal, step, None).await?;
            step_of(kind).prepare_json(&cx, &spec).await?
        };
        journal.append(
            step,
            Event::Intent {
                kind,
                request: intent.clone(),
            },
        )?;
        fleet_core::fault::point(&format!("agent:after-intent:{}", kind.as_str()));
        let outcome = self.act(&journal, step, kind, &intent, progress).await;
        self.finish(&mut journal, step, kind, outcome)
    }

    /// Acts on a journaled intent.
    async fn act(
        &self,
        journal: &RunJournal,
        step: &str,
        kind: StepKind,
        intent: &Value,
        progress: Option<ProgressTx>,
    ) -> Result<Value, StepError> {
        let cx = self.context(journal, step, progress).await?;
        cx.report("started", Progress::default());
        step_of(kind).act_json(&cx, intent).await
    }

    /// Journals how the step ended.
    fn finish(
        &self,
        journal: &mut RunJournal,
        step: &str,
        kind: StepKind,
        outcome: Result<Value, StepError>,
    ) -> Result<StepResult, StepError> {
        match outcome {
            Ok(outcome) => {
                journal.append(
                    step,
                    Event::Done {
                        outcome: outcome.clone(),
                    },
                )?;
                fleet_core::fault::point(&format!("agent:after-done:{}", kind.as_str()));
                Ok(StepResult {
                    step: step.into(),
                    kind,
                    replayed: false,
                    outcome,
                    undone: false,
                })
            }
            Err(e) => {
                journal.append(
                    step,
                    Event::Failed {
                        error: e.to_string(),
                    },
                )?;
                Err(e)
            }
        }
    }

    /// Undoes a step from its intent (and outcome when it finished).
    async fn undo_recorded(
        &self,
        journal: &RunJournal,
        step: &str,
        kind: StepKind,
        intent: &Value,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        let cx = self.context(journal, step, None).await?;
        step_of(kind).undo_json(&cx, intent, outcome).await
    }

    /// Undoes one step of a run.
    pub async fn undo(&self, run: &str, step: &str) -> Result<StepResult, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        let mut journal = RunJournal::open(&self.runs_dir, run, false)?;
        if let Some(refusal) = pruned_error(&journal, "it cannot be rolled back") {
            return Err(refusal);
        }
        let state = journal.state(step).ok_or_else(|| StepError::NoSuchStep {
            run: run.into(),
            step: step.into(),
        })?;
        self.undo_state(&mut journal, step, state).await
    }

    async fn undo_state(
        &self,
        journal: &mut RunJournal,
        step: &str,
        state: StepState,
    ) -> Result<StepResult, StepError> {
        let kind = state.kind();
        let (intent, outcome) = match state {
            StepState::Undone { .. } => {
                return Ok(StepResult {
                    step: step.into(),
                    kind,
                    replayed: true,
                    outcome: json!("already undone"),
                    undone: true,
                });
            }
            // A failed step put back what it had done, unless that failed
            // too: its undo (idempotent) runs anyway.
            StepState::Failed { request, .. } => (request, None),
            StepState::Done {
                request, outcome, ..
            } => (request, Some(outcome)),
            StepState::InFlight { request, .. } => (request, None),
            StepState::Undoing {
                request, outcome, ..
            } => (request, outcome),
        };
        journal.append(step, Event::UndoIntent)?;
        let undone = self
            .undo_recorded(journal, step, kind, &intent, outcome.as_ref())
            .await;
        match undone {
            Ok(note) => {
                journal.append(
                    step,
                    Event::Undone {
                        note: note.to_string(),
                    },
                )?;
                Ok(StepResult {
                    step: step.into(),
                    kind,
                    replayed: false,
                    outcome: note,
                    undone: true,
                })
            }
            Err(e) => {
                journal.append(
                    step,
                    Event::UndoFailed {
                        error: e.to_string(),
                    },
                )?;
                Err(e)
            }
        }
    }

    /// Undoes every step of a run, newest first; stops at the first undo
    /// that fails (running it again continues from there).
    pub async fn rollback(
        &self,
        run: &str,
        results: Option<mpsc::Sender<StepResult>>,
    ) -> Result<Vec<StepResult>, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        let mut journal = RunJournal::open(&self.runs_dir, run, false)?;
        if let Some(refusal) = pruned_error(&journal, "it cannot be rolled back") {
            return Err(refusal);
        }
        let mut out = Vec::new();
        for (step, state) in journal.steps().into_iter().rev() {
            let result = self.undo_state(&mut journal, &step, state).await?;
            if let Some(tx) = &results {
                let _ = tx.send(result.clone()).await;
            }
            out.push(result);
        }
        Ok(out)
    }

    /// The run's records, for the controller and for people.
    ///
    /// Waits for a step of the run in flight: a step whose caller went away
    /// (a controller killed mid-call) still runs to its end here, and a
    /// reader must never see "never reached the agent" for a step that is
    /// about to write its intent.
    pub async fn journal(&self, run: &str) -> Result<Vec<Record>, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        Ok(RunJournal::open(&self.runs_dir, run, false)?
            .records()
            .to_vec())
    }

    /// Every step of every run on this host, by run, and which runs were pruned.
    pub fn runs(&self) -> BTreeMap<String, RunSummary> {
        runs::list(&self.runs_dir)
    }

    /// Checks a backup's archives against their manifests.
    pub async fn verify_backup(
        &self,
        id: &str,
    ) -> Result<Vec<(MountBackup, VerifyOutcome)>, StepError> {
        let backups = self.backups.clone();
        let id = id.to_string();
        Ok(tokio::task::spawn_blocking(move || backups.verify(&id))
            .await
            .map_err(StepError::task)??)
    }

    /// Releases a settled run's checkpoints on this host (`prune::prune`).
    pub async fn prune(&self, run: &str) -> Result<Value, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        let mut journal = RunJournal::open(&self.runs_dir, run, false)?;
        prune::prune(&self.engine, &self.backups, &mut journal).await
    }
}
