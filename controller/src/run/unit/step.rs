//! One step of one member of a unit. The crash-safety rule lives here: the
//! intent is journaled (and flushed) before the agent is asked, the
//! outcome after; a controller that stopped in between finds the intent,
//! reconciles it with the agent's journal and asks again under the same key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use fleet_core::fault;
use fleet_core::migration::LeftAlone;
use fleet_core::step::Progress;

use super::sequence::step_id;
use crate::agents::calls::{self, CallError, StepCall, StepReply};
use crate::error::ControllerError;
use crate::inventory::Host;
use crate::plan::Migration;
use crate::run::ctx::{Draft, RunCtx};
use crate::run::model::{ContainerRun, EventKind, StepKind, StepRecord, StepStatus};
use crate::run::outcomes;

pub(super) struct Step<'a> {
    pub key: &'a str,
    pub kind: StepKind,
    pub migration: &'a Migration,
    /// The unit's members, by name (the recreate lets them follow).
    pub together: &'a [String],
}

/// One step of one member: skipped when done, reconciled when the
/// controller stopped mid-step, journaled and asked otherwise. False: the
/// step failed (or had failed, or its undo had begun) and the unit must be
/// rolled back.
pub(super) async fn run_step(
    ctx: &Arc<RunCtx>,
    step: &Step<'_>,
    agent_journal: &mut Option<HashSet<String>>,
) -> Result<bool, ControllerError> {
    let (key, kind) = (step.key, step.kind);
    let started = Instant::now();
    let Some(c) = ctx.container(key) else {
        return Ok(true);
    };
    let host = ctx.host(&c.host);
    let id = step_id(&c.plan.id, kind);
    match c.step(kind).map(|s| s.status) {
        Some(StepStatus::Done) => return Ok(true),
        // Failed, and the controller stopped before its rollback: the
        // failure stands (asking again might pass a failed health gate).
        Some(StepStatus::Failed) => return Ok(false),
        Some(StepStatus::Intent) => {
            reconcile_in_flight(ctx, &host, &c, kind, &id, agent_journal).await?
        }
        // Its undo had begun: finish putting it back.
        Some(_) => return Ok(false),
        None => journal_intent(ctx, key, kind, &id)?,
    }
    fault::point(&format!("controller:after-intent:{}", kind.as_str()));
    let before_call = started.elapsed();
    let call = StepCall {
        run: &ctx.agent_run,
        step: &id,
        kind,
        container_id: &c.plan.id,
        container_name: &c.plan.name,
        migration: step.migration,
        target: c.target.or(step.migration.target.user().known_ids()),
        together: step.together,
    };
    let (result, agent_ms) = ask(ctx, &host, &c, &call).await;
    let after_call = Instant::now();
    match result {
        Ok(reply) => {
            let (c, left_alone) = record_done(ctx, key, &call, &reply, agent_ms)?;
            ctx.record_overhead((before_call + after_call.elapsed()).as_micros() as u64);
            // Said once, where the operator follows the run.
            if let Some(line) = left_alone.as_ref().and_then(outcomes::left_alone_line) {
                ctx.emit(Draft::container(&c, Some(kind), EventKind::Warning, line))?;
            }
            fault::point(&format!("controller:after-done:{}", kind.as_str()));
            Ok(true)
        }
        Err(error) => {
            record_failed(ctx, key, kind, &error, agent_ms)?;
            Ok(false)
        }
    }
}

/// The controller stopped between the intent and the outcome: what does
/// the agent's own journal say? (Read once per unit; the step is asked
/// again under the same key either way, which the agent makes safe.)
async fn reconcile_in_flight(
    ctx: &Arc<RunCtx>,
    host: &Host,
    c: &ContainerRun,
    kind: StepKind,
    id: &str,
    agent_journal: &mut Option<HashSet<String>>,
) -> Result<(), ControllerError> {
    if agent_journal.is_none() {
        *agent_journal = ctx
            .call(&host.name, ctx.call_deadline(&host.name), || {
                calls::agent_steps(&ctx.pool, host, &ctx.agent_run)
            })
            .await
            .ok();
    }
    let seen = agent_journal.as_ref().is_some_and(|j| j.contains(id));
    ctx.emit(Draft::container(
        c,
        Some(kind),
        EventKind::Reconciled,
        format!(
            "resumed mid-step: the agent's journal {} step {id}; asking again under the same key",
            if seen { "has" } else { "does not have" }
        ),
    ))
}

/// The step's intent, flushed before the agent is asked.
fn journal_intent(
    ctx: &RunCtx,
    key: &str,
    kind: StepKind,
    id: &str,
) -> Result<(), ControllerError> {
    ctx.update_container(key, |c| {
        c.steps.push(StepRecord {
            id: id.to_string(),
            kind,
            status: StepStatus::Intent,
            outcome: None,
            error: None,
            agent_ms: 0,
        });
        Some(Draft::container(
            c,
            Some(kind),
            EventKind::StepStarted,
            id.to_string(),
        ))
    })?;
    Ok(())
}

/// Asks the agent, relaying its progress live; the reply and how long the
/// agent took.
async fn ask(
    ctx: &Arc<RunCtx>,
    host: &Host,
    c: &ContainerRun,
    call: &StepCall<'_>,
) -> (Result<StepReply, CallError>, u64) {
    let kind = call.kind;
    let progress_draft = Draft::container(c, Some(kind), EventKind::StepProgress, "");
    let on_progress = |p: Progress| {
        if kind == StepKind::Ownership {
            fault::count("controller:ownership-entries", p.entries);
        }
        ctx.progress(progress_draft.clone(), p.entries, p.changed, p.bytes)
    };
    let call_started = Instant::now();
    // A step gets the whole deadline, whatever came before.
    let result = ctx
        .call(&host.name, ctx.agent_deadline, || {
            calls::step(&ctx.pool, host, call, &on_progress)
        })
        .await;
    (result, call_started.elapsed().as_millis() as u64)
}

/// The step's outcome, flushed once the agent has answered: the record as
/// it now stands, and what the ownership step left alone.
fn record_done(
    ctx: &RunCtx,
    key: &str,
    call: &StepCall<'_>,
    reply: &StepReply,
    agent_ms: u64,
) -> Result<(ContainerRun, Option<LeftAlone>), ControllerError> {
    let kind = call.kind;
    let made = reply.made;
    let downtime = (kind == StepKind::Verify).then(|| outcomes::downtime(&reply.outcome));
    let left_alone = (kind == StepKind::Ownership).then(|| outcomes::left_alone(&reply.outcome));
    let c = ctx.update_container(key, |c| {
        if let Some(s) = c.steps.iter_mut().find(|s| s.kind == kind) {
            s.status = StepStatus::Done;
            s.outcome = Some(reply.outcome.clone());
            s.error = None;
            s.agent_ms = agent_ms;
        }
        c.target = made.or(call.target);
        if let Some((from_exit, from_stop)) = downtime {
            c.downtime_ms = from_exit;
            c.downtime_from_stop_ms = from_stop;
        }
        if let Some(left) = &left_alone {
            c.left_alone = left.clone();
        }
        let note = if reply.replayed {
            " (the agent had already done it)"
        } else {
            ""
        };
        Some(Draft::container(
            c,
            Some(kind),
            EventKind::StepDone,
            format!("{agent_ms} ms{note}"),
        ))
    })?;
    Ok((c, left_alone))
}

/// The step's failure, flushed: the unit will be rolled back.
fn record_failed(
    ctx: &RunCtx,
    key: &str,
    kind: StepKind,
    error: &CallError,
    agent_ms: u64,
) -> Result<(), ControllerError> {
    let message = match error {
        CallError::Unreachable(m) | CallError::Lost(m) => {
            format!("{} step: agent unreachable: {m}", kind.as_str())
        }
        CallError::Failed(m) => format!("{} step failed: {m}", kind.as_str()),
    };
    ctx.update_container(key, |c| {
        if let Some(s) = c.steps.iter_mut().find(|s| s.kind == kind) {
            s.status = StepStatus::Failed;
            s.error = Some(message.clone());
            s.agent_ms = agent_ms;
        }
        c.error = Some(message.clone());
        Some(Draft::container(
            c,
            Some(kind),
            EventKind::StepFailed,
            message.clone(),
        ))
    })?;
    Ok(())
}
