//! The backup step: the container's hooks (a database's dump, a flush),
//! then every bind and volume mount archived with its manifest. Nothing
//! to undo: a backup is kept until its run is pruned.

use std::path::PathBuf;
use std::time::Duration;

use fleet_core::step::Progress;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::mounts::mounts_of;
use super::spec::BackupSpec;
use super::step::{Step, StepContext, StepError, StepProgress};
use crate::backup::{Archived, BackupMeta, MountSpec, NewBackup};

/// What the backup decided: its id, the container, the mounts as (root,
/// destination, kind), the hooks and the retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupIntent {
    pub backup_id: String,
    pub container_id: String,
    pub container_name: String,
    pub mounts: Vec<(String, String, String)>,
    pub hooks: Vec<(Vec<String>, u64)>,
    pub retention_days: u64,
    pub refusals: Vec<String>,
}

pub struct BackupStep;

impl Step for BackupStep {
    type Spec = BackupSpec;
    type Intent = BackupIntent;
    type Outcome = BackupMeta;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &BackupSpec,
    ) -> Result<BackupIntent, StepError> {
        let doc = cx.scoped(&spec.container).await?;
        let (owned, refusals) = mounts_of(cx.conn, &doc, &[], &cx.journal.dir().join(cx.step));
        let specs: Vec<MountSpec> = owned
            .iter()
            .map(|m| MountSpec {
                kind: String::new(),
                source: PathBuf::from(&m.root),
                destination: m.destination.clone(),
            })
            .collect();
        let backups = cx.backups.clone();
        tokio::task::spawn_blocking(move || backups.preflight(&specs))
            .await
            .map_err(StepError::task)??;
        Ok(BackupIntent {
            backup_id: format!("{}-{}", cx.journal.run(), cx.step),
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
            hooks: spec.hooks.clone(),
            retention_days: spec.retention_days,
            refusals,
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: BackupIntent,
    ) -> Result<BackupMeta, StepError> {
        let hook_outputs = run_hooks(cx, &intent).await?;
        let inspect = cx.api().inspect(&intent.container_id).await?;
        let backups = cx.backups.clone();
        let tx = cx.progress.clone();
        let step = cx.step.to_string();
        let meta = tokio::task::spawn_blocking(move || {
            // Throttled at the source; a full stream drops a report,
            // never the backup.
            let report = |destination: &str, so_far: Archived| {
                if let Some(tx) = &tx {
                    let _ = tx.try_send(StepProgress {
                        step: step.clone(),
                        phase: format!("backup {destination}"),
                        progress: counted(so_far.entries, so_far.bytes),
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
        .map_err(StepError::task)??;
        if let Some(tx) = &cx.progress {
            // The totals always arrive, so a bar ends where the backup did.
            let (entries, bytes) = meta.mounts.iter().fold((0, 0), |(e, b), m| {
                (e + m.outcome.entries, b + m.outcome.bytes)
            });
            let _ = tx
                .send(cx.progress_of("backup done", counted(entries, bytes)))
                .await;
        }
        Ok(meta)
    }

    async fn undo(
        &self,
        _cx: &StepContext<'_>,
        _intent: BackupIntent,
        _outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        Ok(kept_until_pruned())
    }
}

/// A backup's counts as progress: it changes nothing.
fn counted(entries: u64, bytes: u64) -> Progress {
    Progress {
        entries,
        changed: 0,
        bytes,
    }
}

/// The undo's note of the steps that change nothing a rollback restores.
pub fn kept_until_pruned() -> Value {
    json!("nothing to undo; backups are kept until pruned")
}

/// Runs the backup's hooks in the container, in order, each within its
/// timeout; the first that fails (or overruns) fails the backup.
async fn run_hooks(cx: &StepContext<'_>, intent: &BackupIntent) -> Result<Vec<String>, StepError> {
    let api = cx.api();
    let mut outputs = Vec::new();
    for (argv, timeout) in &intent.hooks {
        let run = api.exec(&intent.container_id, argv);
        let (code, output) = tokio::time::timeout(Duration::from_secs((*timeout).max(1)), run)
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
        outputs.push(format!("{}: {}", argv.join(" "), output.trim()));
    }
    Ok(outputs)
}
