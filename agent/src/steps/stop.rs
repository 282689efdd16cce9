//! The stop step: the container stopped with its own stop signal and
//! timeout (the engine applies both); undone by starting it again if it
//! was running.

use fleet_core::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::StopSpec;
use super::step::{Step, StepContext, StepError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopIntent {
    pub container_id: String,
    pub was_running: bool,
    pub stop_timeout: Option<i64>,
}

/// What the stop step did; `exited_at_ms` is when the old container had
/// exited, the start of the service's downtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopOutcome {
    pub container_id: String,
    pub was_running: bool,
    pub stopped_at_ms: u64,
    #[serde(default)]
    pub exited_at_ms: Option<u64>,
}

pub struct StopStep;

impl Step for StopStep {
    type Spec = StopSpec;
    type Intent = StopIntent;
    type Outcome = StopOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &StopSpec,
    ) -> Result<StopIntent, StepError> {
        let doc = cx.scoped(&spec.container).await?;
        Ok(StopIntent {
            container_id: doc["Id"].as_str().unwrap_or_default().to_string(),
            was_running: doc.pointer("/State/Running").and_then(|r| r.as_bool()) == Some(true),
            stop_timeout: doc.pointer("/Config/StopTimeout").and_then(|t| t.as_i64()),
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: StopIntent,
    ) -> Result<StopOutcome, StepError> {
        let stopped_at_ms = now_ms();
        let mut exited_at_ms = None;
        if intent.was_running {
            cx.api()
                .stop(&intent.container_id, intent.stop_timeout)
                .await?;
            exited_at_ms = Some(now_ms());
        }
        Ok(StopOutcome {
            container_id: intent.container_id,
            was_running: intent.was_running,
            stopped_at_ms,
            exited_at_ms,
        })
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: StopIntent,
        _outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        if intent.was_running {
            cx.api().start(&intent.container_id).await?;
        }
        Ok(json!({ "started": intent.was_running }))
    }
}
