//! The restore step: a checkpoint backup's mounts put back exactly as its
//! manifests say, refused while the container runs. Not a step of a
//! migration, and nothing to undo.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backup::kept_until_pruned;
use super::spec::RestoreSpec;
use super::step::{Step, StepContext, StepError};
use crate::backup::{MountBackup, RestoreOutcome};

/// What the restore decided (journaled as `{backup_id, mounts}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreIntent {
    pub backup_id: String,
    pub mounts: Vec<String>,
}

pub struct RestoreStep;

impl Step for RestoreStep {
    type Spec = RestoreSpec;
    type Intent = RestoreIntent;
    type Outcome = Vec<(MountBackup, RestoreOutcome)>;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &RestoreSpec,
    ) -> Result<RestoreIntent, StepError> {
        let meta = cx.backups.get(&spec.backup_id)?;
        if let Ok(doc) = cx.api().inspect(&meta.container_id).await
            && doc.pointer("/State/Running").and_then(|r| r.as_bool()) == Some(true)
        {
            return Err(StepError::Invalid(format!(
                "container {} is running: stop it before restoring its mounts",
                meta.container_name
            )));
        }
        Ok(RestoreIntent {
            backup_id: spec.backup_id.clone(),
            mounts: spec.mounts.clone(),
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: RestoreIntent,
    ) -> Result<Self::Outcome, StepError> {
        let backups = cx.backups.clone();
        Ok(
            tokio::task::spawn_blocking(move || backups.restore(&intent.backup_id, &intent.mounts))
                .await
                .map_err(StepError::task)??,
        )
    }

    async fn undo(
        &self,
        _cx: &StepContext<'_>,
        _intent: RestoreIntent,
        _outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        Ok(kept_until_pruned())
    }
}
