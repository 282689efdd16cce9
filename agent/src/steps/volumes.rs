//! The volumes step: each named volume of the stopped container becomes
//! the account's volume of the same name, its data renamed into the
//! account's storage (`rootless::volumes`). Undone by renaming each back,
//! the last first, and removing the account's records this step made.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::VolumesSpec;
use super::step::{Step, StepContext, StepError, from_value};
use crate::rootless::volumes::{self, VolumeMove};
use crate::users;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesIntent {
    pub account: String,
    pub volumes: Vec<VolumeMove>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesOutcome {
    pub volumes: Vec<VolumeMove>,
}

pub struct VolumesStep;

impl Step for VolumesStep {
    type Spec = VolumesSpec;
    type Intent = VolumesIntent;
    type Outcome = VolumesOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &VolumesSpec,
    ) -> Result<VolumesIntent, StepError> {
        let doc = cx.scoped(&spec.container).await?;
        if doc.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true) {
            return Err(StepError::Invalid(format!(
                "{} is running: its volumes move only once it is stopped (the stop step first)",
                spec.container
            )));
        }
        Ok(VolumesIntent {
            account: spec.account.clone(),
            volumes: volumes::named_volumes(&doc)?,
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: VolumesIntent,
    ) -> Result<VolumesOutcome, StepError> {
        let account = users::rootless_account(&intent.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let conn = reached.engine.connected().await?;
        let mut moved: Vec<VolumeMove> = Vec::new();
        for volume in &intent.volumes {
            let mut volume = volume.clone();
            if let Err(e) = volumes::hand_over(conn, &mut volume).await {
                moved.push(volume);
                for back in moved.iter().rev() {
                    if let Err(undo) = volumes::hand_back(Some(conn), back).await {
                        tracing::error!(error = %undo, volume = %back.name, "handing a volume back after a failed move failed too");
                    }
                }
                return Err(e.into());
            }
            moved.push(volume);
        }
        Ok(VolumesOutcome { volumes: moved })
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: VolumesIntent,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        // Interrupted before its outcome: each volume's account path is
        // found again from the account's engine, so the data still comes back.
        let recorded = match outcome {
            Some(outcome) => from_value::<VolumesOutcome>(outcome)?.volumes,
            None => intent.volumes.clone(),
        };
        let account = users::rootless_account(&intent.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let conn = reached.engine.connected().await?;
        let mut back = Vec::new();
        for volume in recorded.iter().rev() {
            let mut volume = volume.clone();
            if volume.to.is_none()
                && let Ok(record) = conn.docker.inspect_volume(&volume.name).await
            {
                // Made by this step only if it carries the move's label.
                volume.created = volumes::made_by_a_move(&record);
                volume.to = Some(record.mountpoint.into());
            }
            volumes::hand_back(Some(conn), &volume).await?;
            back.push(volume.name);
        }
        Ok(json!({ "handed_back": back }))
    }
}
