//! The recreate step: `crate::recreate`'s plan journaled as the intent,
//! carried out, and undone from the plan (and the new container's id, when
//! the step got that far).

use serde_json::{Value, json};

use super::spec::RecreateSpec;
use super::step::{Step, StepContext, StepError};
use crate::recreate::{self, RecreateOutcome, RecreatePlan};

pub struct RecreateStep;

impl Step for RecreateStep {
    type Spec = RecreateSpec;
    type Intent = RecreatePlan;
    type Outcome = RecreateOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &RecreateSpec,
    ) -> Result<RecreatePlan, StepError> {
        // The plan refuses a root target first; here before the scope
        // check as well, so such a request is refused as such whatever
        // container it names.
        recreate::refuse_root_target(spec)?;
        cx.scoped(&spec.container).await?;
        let mut request = spec.clone();
        // The checkpoint's name carries the run: the journal's, whatever
        // the caller said.
        request.run = cx.journal.run().to_string();
        Ok(recreate::plan(&cx.api(), &request).await?)
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        plan: RecreatePlan,
    ) -> Result<RecreateOutcome, StepError> {
        Ok(recreate::execute(&cx.api(), &plan).await?)
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        plan: RecreatePlan,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        let new_id = outcome
            .and_then(|o| o.get("new_id"))
            .and_then(|v| v.as_str());
        recreate::undo(&cx.api(), &plan, new_id).await?;
        Ok(json!({ "restored": plan.old_id }))
    }
}
