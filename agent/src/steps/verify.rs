//! The verify step: the health gate (`crate::verify`) on the new
//! container, with the service's downtime measured from the stop that
//! really took it down; under a rootless account, on the account's engine,
//! with every process's host uid inside the account's namespace. Nothing
//! to undo.

use fleet_core::step::StepKind;
use serde_json::Value;

use super::backup::kept_until_pruned;
use super::spec::VerifySpec;
use super::step::{Step, StepContext, StepError};
use super::stop::StopOutcome;
use crate::container::Api;
use crate::journal::StepState;
use crate::recreate::RecreateOutcome;
use crate::users;
use crate::verify::{self, VerifyOutcome, VerifyRequest};

pub struct VerifyStep;

impl Step for VerifyStep {
    type Spec = VerifySpec;
    type Intent = VerifyRequest;
    type Outcome = VerifyOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &VerifySpec,
    ) -> Result<VerifyRequest, StepError> {
        let host_ids = match &spec.account {
            None => {
                cx.scoped(&spec.container).await?;
                None
            }
            Some(name) => Some(users::rootless_account(name, cx.users)?.ids),
        };
        let went_down = went_down(cx);
        Ok(VerifyRequest {
            container: spec.container.clone(),
            deadline_secs: spec.deadline_secs,
            min_running_secs: spec.min_running_secs,
            probe: spec.probe.clone(),
            stopped_at_ms: went_down.map(|(stopped, _)| stopped),
            exited_at_ms: went_down.and_then(|(_, exited)| exited),
            account: spec.account.clone(),
            host_ids,
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        request: VerifyRequest,
    ) -> Result<VerifyOutcome, StepError> {
        let Some(name) = &request.account else {
            return Ok(verify::verify(&cx.api(), cx.inspector, &request).await?);
        };
        let account = users::rootless_account(name, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let inspector = cx.inspector.for_engine(reached.engine.clone());
        let api = Api::new(reached.engine.connected().await?);
        Ok(verify::verify(&api, &inspector, &request).await?)
    }

    async fn undo(
        &self,
        _cx: &StepContext<'_>,
        _request: VerifyRequest,
        _outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        Ok(kept_until_pruned())
    }
}

/// When the service went down, as (stop asked, old container exited): at
/// the stop that really stopped it, the stop step's, else the recreate's
/// own.
fn went_down(cx: &StepContext<'_>) -> Option<(u64, Option<u64>)> {
    cx.journal
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
        })
}
