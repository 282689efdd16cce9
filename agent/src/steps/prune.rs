//! Prune and retention: a settled run's checkpoints released on this host
//! (the old containers its recreates kept, its backups), after which the
//! run takes no new step and is never rolled back.

use fleet_core::now_ms;
use fleet_core::step::StepKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::backup::BackupIntent;
use super::runs::rfc3339;
use super::step::{StepError, from_value, to_value};
use crate::backup::{BackupError, BackupStore};
use crate::container::{Api, ContainerError};
use crate::engine::Engine;
use crate::journal::{Event, PRUNE_STEP, RunJournal, StepState};
use crate::recreate::RecreatePlan;

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

/// The refusal for a run whose prune began (finished or not), if it did.
pub fn pruned_error(journal: &RunJournal, consequence: &'static str) -> Option<StepError> {
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

/// The run's checkpoints, read from the journal before anything changes:
/// (step, plan) of each finished recreate, (step, backup id) of each backup.
type Checkpoints = (Vec<(String, RecreatePlan)>, Vec<(String, String)>);

/// Releases the checkpoints of the run of `journal` (locked by the
/// caller): the old container each finished recreate kept (only while it
/// still has its checkpoint name, never one holding a live name, never a
/// running one) and the run's backups. The intent is journaled first, so
/// from then on the run is never rolled back (its checkpoints may be
/// gone); the outcome after. A repeated prune returns the first outcome,
/// marked replayed.
pub async fn prune(
    engine: &Engine,
    backups: &BackupStore,
    journal: &mut RunJournal,
) -> Result<Value, StepError> {
    if let Some((at, note)) = journal.pruned() {
        return Ok(replayed(at, &note));
    }
    refuse_unsettled(journal)?;
    let (containers, backup_ids) = checkpoints(journal)?;
    // The engine must answer before the run is marked: a prune that
    // cannot start should not cost the run its rollback.
    let conn = if containers.is_empty() {
        None
    } else {
        Some(engine.connected().await?)
    };
    if journal.prune_begun().is_none() {
        journal.append(PRUNE_STEP, Event::PruneIntent)?;
    }
    let mut outcome = PruneOutcome {
        run: journal.run().to_string(),
        ..Default::default()
    };
    if let Some(conn) = conn {
        remove_containers(&Api::new(conn), &containers, &mut outcome).await?;
    }
    remove_backups(backups, backup_ids, &mut outcome).await?;
    let note = serde_json::to_string(&outcome)
        .map_err(|e| StepError::Internal(format!("prune outcome: {e}")))?;
    journal.append(PRUNE_STEP, Event::Pruned { note })?;
    outcome.pruned_at_ms = journal.pruned().map_or_else(now_ms, |(at, _)| at);
    tracing::info!(
        run = journal.run(),
        containers = outcome.removed_containers.len(),
        backups = outcome.removed_backups.len(),
        "run pruned"
    );
    Ok(to_value(&outcome))
}

/// The first prune's outcome, marked replayed.
fn replayed(at: u64, note: &str) -> Value {
    let mut outcome: Value = serde_json::from_str(note).unwrap_or_else(|_| json!({ "note": note }));
    if let Some(fields) = outcome.as_object_mut() {
        fields.insert("replayed".into(), json!(true));
        fields.insert("pruned_at_ms".into(), json!(at));
    }
    outcome
}

/// A run with a step in flight, failed or being undone keeps its
/// checkpoints: it may still need them.
fn refuse_unsettled(journal: &RunJournal) -> Result<(), StepError> {
    let unsettled: Vec<String> = journal
        .steps()
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
    if unsettled.is_empty() {
        Ok(())
    } else {
        Err(StepError::NotSettled {
            run: journal.run().to_string(),
            detail: unsettled.join("; "),
        })
    }
}

fn checkpoints(journal: &RunJournal) -> Result<Checkpoints, StepError> {
    let mut containers = Vec::new();
    let mut backups = Vec::new();
    for (step, state) in &journal.steps() {
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
    Ok((containers, backups))
}

/// Removes each recreate's old container that is still only a checkpoint.
async fn remove_containers(
    api: &Api<'_>,
    containers: &[(String, RecreatePlan)],
    outcome: &mut PruneOutcome,
) -> Result<(), StepError> {
    for (step, plan) in containers {
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
    Ok(())
}

/// Removes the run's backups; a damaged one is kept, and said.
async fn remove_backups(
    store: &BackupStore,
    backups: Vec<(String, String)>,
    outcome: &mut PruneOutcome,
) -> Result<(), StepError> {
    for (step, id) in backups {
        let store = store.clone();
        let backup = id.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove(&backup))
            .await
            .map_err(StepError::task)?;
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
    Ok(())
}
