//! Every mutating step goes through here: its intent (with everything
//! decided beforehand) is journaled and synced before it acts, its outcome
//! after. A repeated (run, step) returns the recorded result; a step found
//! in flight after a crash is finished (ownership resumes its walk) or put
//! back and done again; a run is undone step by step in reverse.

use fleet_core::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::backup::{Archived, BackupError, BackupStore, MountSpec, NewBackup};
use crate::container::{Api, ContainerError};
use crate::engine::{Connected, Engine};
use crate::error::EngineError;
use crate::inspect::Inspector;
use crate::journal::{
    Event, JournalError, PRUNE_STEP, RunJournal, StepKind, StepState, validate_id,
};
use crate::recreate::{self, RecreateOutcome, RecreatePlan, RecreateRequest};
use crate::remap::guard::MountGuard;
use crate::remap::{self, IdMapping, RemapError, RemapOptions, RemapReport};
use crate::users::{self, UserError, UserOutcome, UserRequest, UserSettings};
use crate::verify::{self, Probe, VerifyRequest};

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

/// Progress of a running step, for the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepProgress {
    pub step: String,
    pub phase: String,
    pub entries: u64,
    pub changed: u64,
    pub bytes: u64,
}

/// A step's final word.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub step: String,
    pub kind: StepKind,
    pub replayed: bool,
    pub outcome: Value,
    pub undone: bool,
}

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepSpec {
    Backup {
        container: String,
        hooks: Vec<(Vec<String>, u64)>,
        retention_days: u64,
    },
    User(UserRequest),
    Stop {
        container: String,
    },
    Ownership {
        container: String,
        mapping: IdMapping,
        skip_if_root_matches: bool,
        allow_protected_hardlinks: bool,
        mounts: Vec<String>,
    },
    Recreate(RecreateRequest),
    Verify {
        container: String,
        deadline_secs: u64,
        min_running_secs: u64,
        probe: Option<Probe>,
    },
    Restore {
        backup_id: String,
        mounts: Vec<String>,
    },
}

impl StepSpec {
    pub fn kind(&self) -> StepKind {
        match self {
            StepSpec::Backup { .. } => StepKind::Backup,
            StepSpec::User(_) => StepKind::User,
            StepSpec::Stop { .. } => StepKind::Stop,
            StepSpec::Ownership { .. } => StepKind::Ownership,
            StepSpec::Recreate(_) => StepKind::Recreate,
            StepSpec::Verify { .. } => StepKind::Verify,
            StepSpec::Restore { .. } => StepKind::Restore,
        }
    }
}

/// One mount an ownership step changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedMount {
    pub root: String,
    pub destination: String,
    pub manifest: String,
    /// The root's (device, inode) when the step was decided.
    #[serde(default)]
    pub identity: Option<(u64, u64)>,
}

/// Intents: what each step decided before acting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OwnershipIntent {
    container: String,
    mapping: IdMapping,
    skip_if_root_matches: Option<(u32, u32)>,
    allow_protected_hardlinks: bool,
    mounts: Vec<OwnedMount>,
    refusals: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StopIntent {
    container_id: String,
    was_running: bool,
    stop_timeout: Option<i64>,
}

/// What the stop step did; `exited_at_ms` is when the old container had
/// exited, the start of the service's downtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StopOutcome {
    container_id: String,
    was_running: bool,
    stopped_at_ms: u64,
    #[serde(default)]
    exited_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserIntent {
    request: UserRequest,
    user_existed: bool,
    group_existed: bool,
    home_existed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BackupIntent {
    backup_id: String,
    container_id: String,
    container_name: String,
    mounts: Vec<(String, String, String)>,
    hooks: Vec<(Vec<String>, u64)>,
    retention_days: u64,
    refusals: Vec<String>,
}

/// A checkpoint container a prune removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedContainer {
    pub step: String,
    pub id: String,
    pub name: String,
}

/// A backup a prune removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedBackup {
    pub step: String,
    pub id: String,
}

/// What a prune released, as journaled (and answered).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneOutcome {
    pub run: String,
    /// The old containers the run's recreates kept, now removed.
    pub removed_containers: Vec<PrunedContainer>,
    /// The run's backups, now removed.
    pub removed_backups: Vec<PrunedBackup>,
    /// Checkpoints that were gone already (removed by hand, or by a prune
    /// that was interrupted).
    pub already_gone: Vec<String>,
    /// Checkpoints left in place on purpose, with why.
    pub kept: Vec<String>,
    /// When the prune was journaled (unix ms).
    #[serde(default)]
    pub pruned_at_ms: u64,
    /// The journal already held this prune: nothing was removed now.
    #[serde(default)]
    pub replayed: bool,
}

/// A run's steps and whether it was pruned, for `fleet-agent runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// (step, state) in the order the steps began.
    pub steps: Vec<(String, String)>,
    /// When its checkpoints were released (RFC 3339), if they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<String>,
}

/// `unix_ms` as RFC 3339 in UTC, e.g. `2023-11-14T22:13:20.123Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// The refusal for a run whose prune began (finished or not), if it did.
fn pruned_error(journal: &RunJournal, consequence: &'static str) -> Option<StepError> {
    let at = match journal.pruned() {
        Some((at, _)) => rfc3339(at),
        None => format!(
            "{} (the prune was interrupted; prune the run again to finish it)",
            rfc3339(journal.prune_begun()?)
        ),
    };
    Some(StepError::Pruned {
        run: journal.run().to_string(),
        at,
        consequence,
    })
}

/// The outcome of an ownership step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnershipOutcome {
    pub mounts: Vec<(OwnedMount, RemapReport)>,
    /// Mounts refused (sensitive host paths), with why.
    pub refusals: Vec<String>,
}

#[derive(Debug)]
pub struct StepRunner {
    runs_dir: PathBuf,
    engine: Arc<Engine>,
    inspector: Arc<Inspector>,
    backups: BackupStore,
    users: UserSettings,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn from_value<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, StepError> {
    serde_json::from_value(value.clone())
        .map_err(|e| StepError::Internal(format!("journal record unreadable: {e}")))
}

type Progress = Option<mpsc::Sender<StepProgress>>;

impl StepRunner {
    pub fn new(
        state_dir: &std::path::Path,
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
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn runs_dir(&self) -> &std::path::Path {
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

    async fn connected(&self) -> Result<&Connected, StepError> {
        Ok(self.engine.connected().await?)
    }

    /// Runs one step, exactly once per (run, step).
    pub async fn run(
        &self,
        run: &str,
        step: &str,
        spec: StepSpec,
        progress: Progress,
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
                // The agent stopped mid-step. Ownership resumes its walk from
                // the manifest; anything else is put back, then done again.
                if recorded == StepKind::Ownership {
                    let outcome = self
                        .act(&mut journal, step, recorded, &request, progress)
                        .await;
                    return self.finish(&mut journal, step, recorded, outcome);
                }
                self.undo_recorded(recorded, &request, None).await?;
            }
            // A failed attempt put back what it had done, unless that
            // failed too: make sure before trying again.
            Some(StepState::Failed {
                kind: recorded,
                request,
                ..
            }) => {
                self.undo_recorded(recorded, &request, None).await?;
            }
            None => {}
        }
        let intent = self.prepare(&journal, step, &spec).await?;
        journal.append(
            step,
            Event::Intent {
                kind,
                request: intent.clone(),
            },
        )?;
        fleet_core::fault::point(&format!("agent:after-intent:{}", kind.as_str()));
        let outcome = self.act(&mut journal, step, kind, &intent, progress).await;
        self.finish(&mut journal, step, kind, outcome)
    }

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

    /// The container's inspect document, if it is one of this agent's.
    async fn scoped(&self, api: &Api<'_>, container: &str) -> Result<Value, StepError> {
        let doc = api.inspect(container).await?;
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

    /// Everything decided before acting, for the intent record.
    async fn prepare(
        &self,
        journal: &RunJournal,
        step: &str,
        spec: &StepSpec,
    ) -> Result<Value, StepError> {
        let conn = self.connected().await?;
        let api = Api::new(conn);
        Ok(match spec {
            StepSpec::Stop { container } => {
                let doc = self.scoped(&api, container).await?;
                to_value(&StopIntent {
                    container_id: doc["Id"].as_str().unwrap_or_default().to_string(),
                    was_running: doc.pointer("/State/Running").and_then(|r| r.as_bool())
                        == Some(true),
                    stop_timeout: doc.pointer("/Config/StopTimeout").and_then(|t| t.as_i64()),
                })
            }
            StepSpec::Recreate(request) => {
                self.scoped(&api, &request.container).await?;
                let mut request = request.clone();
                request.run = journal.run().to_string();
                to_value(&recreate::plan(&api, &request).await?)
            }
            StepSpec::User(request) => {
                users::validate_name(&request.name)?;
                let exists = |db: &str| {
                    std::process::Command::new("getent")
                        .args([db, &request.name])
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false)
                };
                to_value(&UserIntent {
                    request: request.clone(),
                    user_existed: exists("passwd"),
                    group_existed: exists("group"),
                    home_existed: self.users.home_root.join(&request.name).exists(),
                })
            }
            StepSpec::Ownership {
                container,
                mapping,
                skip_if_root_matches,
                allow_protected_hardlinks,
                mounts,
            } => {
                mapping.validate()?;
                let doc = self.scoped(&api, container).await?;
                let (owned, refusals) =
                    self.mounts_of(conn, &doc, mounts, &journal.dir().join(step))?;
                let target = mapping.everything.or_else(|| {
                    let uid = mapping.uids.values().next().copied()?;
                    let gid = mapping.gids.values().next().copied().unwrap_or(uid);
                    Some((uid, gid))
                });
                to_value(&OwnershipIntent {
                    container: doc["Id"].as_str().unwrap_or_default().to_string(),
                    mapping: mapping.clone(),
                    skip_if_root_matches: if *skip_if_root_matches { target } else { None },
                    allow_protected_hardlinks: *allow_protected_hardlinks,
                    mounts: owned,
                    refusals,
                })
            }
            StepSpec::Backup {
                container,
                hooks,
                retention_days,
            } => {
                let doc = self.scoped(&api, container).await?;
                let (owned, refusals) =
                    self.mounts_of(conn, &doc, &[], &journal.dir().join(step))?;
                let specs: Vec<MountSpec> = owned
                    .iter()
                    .map(|m| MountSpec {
                        kind: String::new(),
                        source: PathBuf::from(&m.root),
                        destination: m.destination.clone(),
                    })
                    .collect();
                let backups = self.backups.clone();
                tokio::task::spawn_blocking(move || backups.preflight(&specs))
                    .await
                    .map_err(|e| StepError::Internal(e.to_string()))??;
                to_value(&BackupIntent {
                    backup_id: format!("{}-{step}", journal.run()),
                    container_id: doc["Id"].as_str().unwrap_or_default().to_string(),
                    container_name: doc["Name"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    mounts: owned
                        .into_iter()
                        .map(|m| (m.root, m.destination, String::new()))
                        .collect(),
                    hooks: hooks.clone(),
                    retention_days: *retention_days,
                    refusals,
                })
            }
            StepSpec::Verify {
                container,
                deadline_secs,
                min_running_secs,
                probe,
            } => {
                self.scoped(&api, container).await?;
                // The service went down at the stop that really stopped it:
                // the stop step's, else the recreate's own.
                let went_down = journal
                    .steps()
                    .into_iter()
                    .find_map(|(_, state)| match state {
                        StepState::Done {
                            kind: StepKind::Stop,
                            outcome,
                            ..
                        } => serde_json::from_value::<StopOutcome>(outcome)
                            .ok()
                            .filter(|o| o.was_running)
                            .map(|o| (o.stopped_at_ms, o.exited_at_ms)),
                        StepState::Done {
                            kind: StepKind::Recreate,
                            outcome,
                            ..
                        } => serde_json::from_value::<RecreateOutcome>(outcome)
                            .ok()
                            .filter(|o| o.plan.was_running)
                            .map(|o| (o.stopped_at_ms, o.exited_at_ms)),
                        _ => None,
                    });
                to_value(&VerifyRequest {
                    container: container.clone(),
                    deadline_secs: *deadline_secs,
                    min_running_secs: *min_running_secs,
                    probe: probe.clone(),
                    stopped_at_ms: went_down.map(|(stopped, _)| stopped),
                    exited_at_ms: went_down.and_then(|(_, exited)| exited),
                })
            }
            StepSpec::Restore { backup_id, mounts } => {
                let meta = self.backups.get(backup_id)?;
                if let Ok(doc) = api.inspect(&meta.container_id).await
                    && doc.pointer("/State/Running").and_then(|r| r.as_bool()) == Some(true)
                {
                    return Err(StepError::Invalid(format!(
                        "container {} is running: stop it before restoring its mounts",
                        meta.container_name
                    )));
                }
                json!({ "backup_id": backup_id, "mounts": mounts })
            }
        })
    }

    /// The container's bind and volume mounts that may change, each with
    /// its manifest path; sensitive ones are refused with a reason.
    fn mounts_of(
        &self,
        conn: &Connected,
        doc: &Value,
        only: &[String],
        step_dir: &std::path::Path,
    ) -> Result<(Vec<OwnedMount>, Vec<String>), StepError> {
        let mounts: Vec<&Value> = doc
            .get("Mounts")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .collect();
        let own_volume_dirs: Vec<PathBuf> = mounts
            .iter()
            .filter(|m| m.get("Type").and_then(|t| t.as_str()) == Some("volume"))
            .filter_map(|m| m.get("Source")?.as_str())
            .map(|s| std::fs::canonicalize(s).unwrap_or_else(|_| PathBuf::from(s)))
            .collect();
        let guard = MountGuard {
            engine_root: conn.data_root.clone(),
            engine_socket: Some(conn.canonical_socket.clone()),
            own_volume_dirs,
        };
        let mut owned = Vec::new();
        let mut refusals = Vec::new();
        for mount in mounts {
            let kind = mount
                .get("Type")
                .and_then(|t| t.as_str())
                .unwrap_or_default();
            if kind != "bind" && kind != "volume" {
                continue;
            }
            let destination = mount
                .get("Destination")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string();
            if !only.is_empty() && !only.contains(&destination) {
                continue;
            }
            let source = mount
                .get("Source")
                .and_then(|s| s.as_str())
                .unwrap_or_default();
            let path = PathBuf::from(source);
            // The path as the engine has it, with no symlink anywhere in it:
            // a container able to write a parent of it could have planted one.
            let opened =
                crate::remap::walk::open_mount_root(&path).and_then(|fd| rustix::fs::fstat(&fd));
            let identity = match opened {
                Ok(stat) => (stat.st_dev, stat.st_ino),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                    refusals.push(format!(
                        "{destination}: host path {source} has a symbolic link in it; fleet never follows one (point the mount at the real directory)"
                    ));
                    continue;
                }
                Err(e) => {
                    refusals.push(format!(
                        "{destination}: host path {source} is not usable: {e}"
                    ));
                    continue;
                }
            };
            if let Some(reason) = guard.refusal(&path) {
                refusals.push(format!("{destination}: {source} is refused: {reason}"));
                continue;
            }
            let index = owned.len();
            owned.push(OwnedMount {
                root: source.to_string(),
                destination,
                manifest: step_dir
                    .join(format!("mount-{index}.jsonl"))
                    .display()
                    .to_string(),
                identity: Some(identity),
            });
        }
        Ok((owned, refusals))
    }

    async fn act(
        &self,
        journal: &mut RunJournal,
        step: &str,
        kind: StepKind,
        intent: &Value,
        progress: Progress,
    ) -> Result<Value, StepError> {
        let conn = self.connected().await?;
        let api = Api::new(conn);
        let report = |phase: &str| StepProgress {
            step: step.to_string(),
            phase: phase.to_string(),
            ..Default::default()
        };
        if let Some(tx) = &progress {
            let _ = tx.try_send(report("started"));
        }
        match kind {
            StepKind::Stop => {
                let intent: StopIntent = from_value(intent)?;
                let stopped_at_ms = now_ms();
                let mut exited_at_ms = None;
                if intent.was_running {
                    api.stop(&intent.container_id, intent.stop_timeout).await?;
                    exited_at_ms = Some(now_ms());
                }
                Ok(to_value(&StopOutcome {
                    container_id: intent.container_id,
                    was_running: intent.was_running,
                    stopped_at_ms,
                    exited_at_ms,
                }))
            }
            StepKind::Recreate => {
                let plan: RecreatePlan = from_value(intent)?;
                Ok(to_value(&recreate::execute(&api, &plan).await?))
            }
            StepKind::User => {
                let intent: UserIntent = from_value(intent)?;
                let settings = self.users.clone();
                let mut outcome = tokio::task::spawn_blocking(move || {
                    let mut outcome = users::ensure_user(&intent.request, &settings)?;
                    // After a crash the user may exist already, made by this step.
                    outcome.created_user |= !intent.user_existed;
                    outcome.created_group |= !intent.group_existed;
                    outcome.created_home |= !intent.home_existed;
                    Ok::<UserOutcome, UserError>(outcome)
                })
                .await
                .map_err(|e| StepError::Internal(e.to_string()))??;
                outcome.notes.sort();
                Ok(to_value(&outcome))
            }
            StepKind::Ownership => {
                let intent: OwnershipIntent = from_value(intent)?;
                self.change_ownership(step, &intent, progress).await
            }
            StepKind::Backup => {
                let intent: BackupIntent = from_value(intent)?;
                let mut hook_outputs = Vec::new();
                for (argv, timeout) in &intent.hooks {
                    let run = api.exec(&intent.container_id, argv);
                    let (code, output) = tokio::time::timeout(
                        std::time::Duration::from_secs((*timeout).max(1)),
                        run,
                    )
                    .await
                    .map_err(|_| {
                        StepError::Invalid(format!(
                            "backup hook `{}` did not finish in {timeout} s",
                            argv.join(" ")
                        ))
                    })??;
                    if code != 0 {
                        return Err(StepError::Invalid(format!(
                            "backup hook `{}` exited {code}: {}",
                            argv.join(" "),
                            output.trim()
                        )));
                    }
                    hook_outputs.push(format!("{}: {}", argv.join(" "), output.trim()));
                }
                let inspect = api.inspect(&intent.container_id).await?;
                let backups = self.backups.clone();
                let tx = progress.clone();
                let step_name = step.to_string();
                let meta = tokio::task::spawn_blocking(move || {
                    // Throttled at the source; a full stream drops a report,
                    // never the backup.
                    let report = |destination: &str, so_far: Archived| {
                        if let Some(tx) = &tx {
                            let _ = tx.try_send(StepProgress {
                                step: step_name.clone(),
                                phase: format!("backup {destination}"),
                                entries: so_far.entries,
                                changed: 0,
                                bytes: so_far.bytes,
                            });
                        }
                    };
                    let mounts: Vec<MountSpec> = intent
                        .mounts
                        .iter()
                        .map(|(root, destination, _)| MountSpec {
                            kind: String::new(),
                            source: PathBuf::from(root),
                            destination: destination.clone(),
                        })
                        .collect();
                    backups.create(
                        &NewBackup {
                            id: &intent.backup_id,
                            container_id: &intent.container_id,
                            container_name: &intent.container_name,
                            inspect: &inspect,
                            mounts: &mounts,
                            retention_days: intent.retention_days,
                            hooks: hook_outputs,
                        },
                        &report,
                    )
                })
                .await
                .map_err(|e| StepError::Internal(e.to_string()))??;
                if let Some(tx) = &progress {
                    // The totals always arrive, so a bar ends where the backup did.
                    let totals = meta.mounts.iter().fold((0, 0), |(e, b), m| {
                        (e + m.outcome.entries, b + m.outcome.bytes)
                    });
                    let _ = tx
                        .send(StepProgress {
                            step: step.to_string(),
                            phase: "backup done".into(),
                            entries: totals.0,
                            changed: 0,
                            bytes: totals.1,
                        })
                        .await;
                }
                Ok(to_value(&meta))
            }
            StepKind::Verify => {
                let request: VerifyRequest = from_value(intent)?;
                Ok(to_value(
                    &verify::verify(&api, &self.inspector, &request).await?,
                ))
            }
            StepKind::Restore => {
                let backup_id = intent["backup_id"].as_str().unwrap_or_default().to_string();
                let mounts: Vec<String> = from_value(&intent["mounts"])?;
                let backups = self.backups.clone();
                let restored =
                    tokio::task::spawn_blocking(move || backups.restore(&backup_id, &mounts))
                        .await
                        .map_err(|e| StepError::Internal(e.to_string()))??;
                let _ = journal;
                Ok(to_value(&restored))
            }
        }
    }

    async fn change_ownership(
        &self,
        step: &str,
        intent: &OwnershipIntent,
        progress: Progress,
    ) -> Result<Value, StepError> {
        let mut done: Vec<(OwnedMount, RemapReport)> = Vec::new();
        for mount in &intent.mounts {
            let options = RemapOptions {
                mapping: intent.mapping.clone(),
                allow_protected_hardlinks: intent.allow_protected_hardlinks,
                skip_if_root_owned_by: intent.skip_if_root_matches,
                batch: 8192,
                threads: 0,
                expect_root: mount.identity,
            };
            let mount_for_walk = mount.clone();
            let tx = progress.clone();
            let step_name = step.to_string();
            let result = tokio::task::spawn_blocking(move || {
                let report = |p: &remap::Progress| {
                    if let Some(tx) = &tx {
                        let _ = tx.try_send(StepProgress {
                            step: step_name.clone(),
                            phase: format!("ownership {}", mount_for_walk.destination),
                            entries: p.entries,
                            changed: p.changed,
                            bytes: p.bytes,
                        });
                    }
                };
                remap::remap(
                    std::path::Path::new(&mount_for_walk.root),
                    std::path::Path::new(&mount_for_walk.manifest),
                    &options,
                    &report,
                )
            })
            .await
            .map_err(|e| StepError::Internal(e.to_string()))?;
            match result {
                Ok(report) => done.push((mount.clone(), report)),
                Err(e) => {
                    // Leave nothing half-changed: undo every mount touched.
                    let undone = self.undo_ownership(&intent.mounts).await;
                    if let Err(undo) = undone {
                        tracing::error!(error = %undo, "undoing a failed ownership change failed too");
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(to_value(&OwnershipOutcome {
            mounts: done,
            refusals: intent.refusals.clone(),
        }))
    }

    async fn undo_ownership(&self, mounts: &[OwnedMount]) -> Result<Value, StepError> {
        let mut reports = Vec::new();
        for mount in mounts.iter().rev() {
            let manifest = PathBuf::from(&mount.manifest);
            if !manifest.exists() {
                continue;
            }
            let root = PathBuf::from(&mount.root);
            let report = tokio::task::spawn_blocking(move || remap::undo(&root, &manifest))
                .await
                .map_err(|e| StepError::Internal(e.to_string()))??;
            reports.push(report);
        }
        Ok(to_value(&reports))
    }

    /// Undoes a step from its intent (and outcome when it finished).
    async fn undo_recorded(
        &self,
        kind: StepKind,
        intent: &Value,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        let conn = self.connected().await?;
        let api = Api::new(conn);
        match kind {
            StepKind::Backup | StepKind::Verify | StepKind::Restore => {
                Ok(json!("nothing to undo; backups are kept until pruned"))
            }
            StepKind::Stop => {
                let intent: StopIntent = from_value(intent)?;
                if intent.was_running {
                    api.start(&intent.container_id).await?;
                }
                Ok(json!({ "started": intent.was_running }))
            }
            StepKind::Recreate => {
                let plan: RecreatePlan = from_value(intent)?;
                let new_id = outcome
                    .and_then(|o| o.get("new_id"))
                    .and_then(|v| v.as_str());
                recreate::undo(&api, &plan, new_id).await?;
                Ok(json!({ "restored": plan.old_id }))
            }
            StepKind::Ownership => {
                let intent: OwnershipIntent = from_value(intent)?;
                self.undo_ownership(&intent.mounts).await
            }
            StepKind::User => {
                let user_outcome: UserOutcome = match outcome {
                    Some(outcome) => from_value(outcome)?,
                    None => {
                        // Interrupted: undo what exists now but did not before.
                        let intent: UserIntent = from_value(intent)?;
                        let exists = |db: &str| {
                            std::process::Command::new("getent")
                                .args([db, &intent.request.name])
                                .output()
                                .map(|o| o.status.success())
                                .unwrap_or(false)
                        };
                        let home = self.users.home_root.join(&intent.request.name);
                        UserOutcome {
                            name: intent.request.name.clone(),
                            uid: 0,
                            gid: 0,
                            home: home.display().to_string(),
                            created_user: !intent.user_existed && exists("passwd"),
                            created_group: !intent.group_existed && exists("group"),
                            created_home: !intent.home_existed && home.exists(),
                            subuids: None,
                            subgids: None,
                            linger_enabled: false,
                            notes: Vec::new(),
                        }
                    }
                };
                let settings = self.users.clone();
                tokio::task::spawn_blocking(move || users::undo_user(&user_outcome, &settings))
                    .await
                    .map_err(|e| StepError::Internal(e.to_string()))??;
                Ok(json!("user removed"))
            }
        }
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
        match self.undo_recorded(kind, &intent, outcome.as_ref()).await {
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
    pub async fn journal(&self, run: &str) -> Result<Vec<crate::journal::Record>, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        Ok(RunJournal::open(&self.runs_dir, run, false)?
            .records()
            .to_vec())
    }

    /// Every step of every run on this host, by run, and which runs were pruned.
    pub fn runs(&self) -> BTreeMap<String, RunSummary> {
        crate::journal::list_runs(&self.runs_dir)
            .into_iter()
            .filter_map(|run| {
                let journal = RunJournal::open(&self.runs_dir, &run, false).ok()?;
                let pruned = match journal.pruned() {
                    Some((at, _)) => Some(rfc3339(at)),
                    None => journal
                        .prune_begun()
                        .map(|at| format!("begun {} (interrupted)", rfc3339(at))),
                };
                let steps = journal
                    .steps()
                    .into_iter()
                    .map(|(step, state)| {
                        (
                            step,
                            format!("{state:?}")
                                .split_whitespace()
                                .next()
                                .unwrap_or("")
                                .to_string(),
                        )
                    })
                    .collect();
                Some((run, RunSummary { steps, pruned }))
            })
            .collect()
    }

    /// Releases a settled run's checkpoints on this host: the old container
    /// each finished recreate kept (only while it still has its checkpoint
    /// name, never one holding a live name, never a running one) and the
    /// run's backups. The intent is journaled first, so from then on the
    /// run is never rolled back (its checkpoints may be gone); the outcome
    /// after. A repeated prune returns the first outcome, marked replayed.
    pub async fn prune(&self, run: &str) -> Result<Value, StepError> {
        validate_id("run id", run)?;
        let lock = self.run_lock(run);
        let _guard = lock.lock().await;
        let mut journal = RunJournal::open(&self.runs_dir, run, false)?;
        if let Some((at, note)) = journal.pruned() {
            let mut outcome: Value =
                serde_json::from_str(&note).unwrap_or_else(|_| json!({ "note": note }));
            if let Some(fields) = outcome.as_object_mut() {
                fields.insert("replayed".into(), json!(true));
                fields.insert("pruned_at_ms".into(), json!(at));
            }
            return Ok(outcome);
        }
        let steps = journal.steps();
        let unsettled: Vec<String> = steps
            .iter()
            .filter_map(|(step, state)| {
                let what = match state {
                    StepState::InFlight { .. } => "is in flight",
                    StepState::Failed { .. } => "failed and was neither retried nor undone",
                    StepState::Undoing { .. } => "is being undone",
                    StepState::Done { .. } | StepState::Undone { .. } => return None,
                };
                Some(format!("{} step '{step}' {what}", state.kind().as_str()))
            })
            .collect();
        if !unsettled.is_empty() {
            return Err(StepError::NotSettled {
                run: run.to_string(),
                detail: unsettled.join("; "),
            });
        }
        // What to release, read from the journal before anything changes.
        let mut containers: Vec<(String, RecreatePlan)> = Vec::new();
        let mut backups: Vec<(String, String)> = Vec::new();
        for (step, state) in &steps {
            match state {
                StepState::Done {
                    kind: StepKind::Recreate,
                    request,
                    ..
                } => containers.push((step.clone(), from_value(request)?)),
                StepState::Done {
                    kind: StepKind::Backup,
                    request,
                    ..
                } => {
                    let intent: BackupIntent = from_value(request)?;
                    backups.push((step.clone(), intent.backup_id));
                }
                // A rolled-back run's backups are kept until pruned too.
                StepState::Undone {
                    kind: StepKind::Backup,
                } => {
                    let intent = journal.records().iter().rev().find_map(|r| match &r.event {
                        Event::Intent {
                            kind: StepKind::Backup,
                            request,
                        } if r.step == *step => Some(request),
                        _ => None,
                    });
                    if let Some(request) = intent {
                        let intent: BackupIntent = from_value(request)?;
                        backups.push((step.clone(), intent.backup_id));
                    }
                }
                _ => {}
            }
        }
        // The engine must answer before the run is marked: a prune that
        // cannot start should not cost the run its rollback.
        let conn = if containers.is_empty() {
            None
        } else {
            Some(self.connected().await?)
        };
        if journal.prune_begun().is_none() {
            journal.append(PRUNE_STEP, Event::PruneIntent)?;
        }
        let mut outcome = PruneOutcome {
            run: run.to_string(),
            ..Default::default()
        };
        if let Some(conn) = conn {
            let api = Api::new(conn);
            for (step, plan) in &containers {
                let short = &plan.old_id[..plan.old_id.len().min(12)];
                let doc = match api.inspect(&plan.old_id).await {
                    Ok(doc) => doc,
                    Err(ContainerError::NotFound(_)) => {
                        outcome.already_gone.push(format!(
                            "{step}: checkpoint container {short} ({}) was already gone",
                            plan.checkpoint_name
                        ));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let name = doc["Name"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/');
                let running = doc.pointer("/State/Running").and_then(|r| r.as_bool()) == Some(true);
                if name != plan.checkpoint_name {
                    outcome.kept.push(format!(
                        "{step}: container {short} is named {name}, not its checkpoint name {}: left alone",
                        plan.checkpoint_name
                    ));
                } else if running {
                    outcome.kept.push(format!(
                        "{step}: checkpoint container {short} ({name}) is running (someone started it): left alone; remove it by hand if it is not needed"
                    ));
                } else {
                    api.remove(&plan.old_id).await?;
                    outcome.removed_containers.push(PrunedContainer {
                        step: step.clone(),
                        id: plan.old_id.clone(),
                        name: name.to_string(),
                    });
                }
            }
        }
        for (step, id) in backups {
            let store = self.backups.clone();
            let backup = id.clone();
            let removed = tokio::task::spawn_blocking(move || store.remove(&backup))
                .await
                .map_err(|e| StepError::Internal(e.to_string()))?;
            match removed {
                Ok(()) => outcome.removed_backups.push(PrunedBackup { step, id }),
                Err(BackupError::NotFound(_)) => outcome
                    .already_gone
                    .push(format!("{step}: backup {id} was already gone")),
                Err(BackupError::Damaged { reason, .. }) => {
                    outcome.kept.push(format!("{step}: backup {id}: {reason}"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let note = serde_json::to_string(&outcome)
            .map_err(|e| StepError::Internal(format!("prune outcome: {e}")))?;
        journal.append(PRUNE_STEP, Event::Pruned { note })?;
        outcome.pruned_at_ms = journal.pruned().map_or_else(now_ms, |(at, _)| at);
        tracing::info!(
            run,
            containers = outcome.removed_containers.len(),
            backups = outcome.removed_backups.len(),
            "run pruned"
        );
        Ok(to_value(&outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_unix_ms_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
