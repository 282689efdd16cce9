//! The undo of a unit: its steps in the exact reverse of the order they
//! ran, each undo intent flushed before the agent is asked and its outcome
//! after, as for the steps themselves.

use std::collections::HashSet;
use std::sync::Arc;

use fleet_core::fault;

use super::sequence::{audit_target, migration_of, sequence};
use crate::agents::calls;
use crate::error::ControllerError;
use crate::inventory::Host;
use crate::plan::Migration;
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{ContainerState, EventKind, StepKind, StepRecord, StepStatus};
use crate::run::outcomes;

/// Whether a container's record says the run touched it and it is not
/// yet back: the states a rollback acts on.
fn touched(state: ContainerState) -> bool {
    matches!(
        state,
        ContainerState::Migrated
            | ContainerState::Migrating
            | ContainerState::RollingBack
            | ContainerState::NeedsReconcile
    )
}

/// Undoes a unit's steps in the exact reverse of the order they ran.
/// Steps the agent's journal never saw are marked undone without a call.
/// Returns whether every member is back exactly as before (false: the
/// agent is away or an undo failed; those members are left NeedsReconcile
/// and retried).
pub async fn rollback_unit(ctx: &Arc<RunCtx>, keys: &[String]) -> Result<bool, ControllerError> {
    let unit = begin(ctx, keys)?;
    let members = &unit.members;
    let Some((first, _)) = members.first() else {
        return Ok(true);
    };
    let host = ctx.host(&ctx.container(first).map(|c| c.host).unwrap_or_default());
    // An agent already found away shares one grace across these calls.
    let known = match ctx
        .call(&host.name, ctx.call_deadline(&host.name), || {
            calls::agent_steps(&ctx.pool, &host, &ctx.agent_run)
        })
        .await
    {
        Ok(known) => known,
        Err(e) => {
            let message = format!("cannot read the agent's journal to roll back: {e}");
            needs_reconcile(ctx, &unit, message)?;
            return Ok(false);
        }
    };
    for (member, kind) in sequence(members).into_iter().rev() {
        let key = &members[member].0;
        if let Some(message) = undo_step(ctx, &host, key, kind, &known).await? {
            needs_reconcile(ctx, &unit, message)?;
            return Ok(false);
        }
    }
    for (key, _) in members {
        let c = ctx.update_container(key, |c| {
            c.state = ContainerState::RolledBack;
            c.finished_unix_ms = Some(now_ms());
            Some(Draft::container(
                c,
                None,
                EventKind::ContainerRolledBack,
                "back exactly as it was before the run",
            ))
        })?;
        let why = c.error.clone().unwrap_or_else(|| "rolled back".into());
        ctx.log("container.rolled-back", &audit_target(ctx, &c), &why)?;
    }
    Ok(true)
}

/// What a rollback puts back.
struct Undoing {
    members: Vec<(String, Migration)>,
    /// Members already waiting to be put back: a retry of those stays
    /// quiet (their state, events and the audit log say so once, not every
    /// attempt).
    retrying: Vec<String>,
}

/// Marks the touched members RollingBack.
fn begin(ctx: &RunCtx, keys: &[String]) -> Result<Undoing, ControllerError> {
    let mut members: Vec<(String, Migration)> = Vec::new();
    let mut retrying: Vec<String> = Vec::new();
    for key in keys {
        let Some(c) = ctx.container(key) else {
            continue;
        };
        if !touched(c.state) {
            continue;
        }
        if c.state == ContainerState::NeedsReconcile {
            retrying.push(key.clone());
        }
        let c = ctx.update_container(key, |c| {
            if c.state == ContainerState::NeedsReconcile {
                return None;
            }
            c.state = ContainerState::RollingBack;
            Some(Draft::container(
                c,
                None,
                EventKind::UndoStarted,
                "rolling back",
            ))
        })?;
        if let Some(migration) = migration_of(&c) {
            members.push((key.clone(), migration));
        }
    }
    Ok(Undoing { members, retrying })
}

/// The undo could not finish: every member is left NeedsReconcile, to be
/// retried.
fn needs_reconcile(ctx: &RunCtx, unit: &Undoing, message: String) -> Result<(), ControllerError> {
    for (key, _) in &unit.members {
        let quiet = unit.retrying.contains(key);
        let c = ctx.update_container(key, |c| {
            c.state = ContainerState::NeedsReconcile;
            c.error = Some(message.clone());
            (!quiet).then(|| Draft::container(c, None, EventKind::UndoFailed, message.clone()))
        })?;
        if !quiet {
            ctx.log(
                "container.needs-reconcile",
                &audit_target(ctx, &c),
                &message,
            )?;
        }
    }
    Ok(())
}

/// The undo of one member's step, if it was taken: a step the agent's
/// journal (`known`) never saw is marked undone without a call. Some: why
/// the undo failed.
async fn undo_step(
    ctx: &Arc<RunCtx>,
    host: &Host,
    key: &str,
    kind: StepKind,
    known: &HashSet<String>,
) -> Result<Option<String>, ControllerError> {
    let Some(record) = ctx.container(key).and_then(|c| c.step(kind).cloned()) else {
        return Ok(None);
    };
    if record.status == StepStatus::Undone {
        return Ok(None);
    }
    if !known.contains(&record.id) {
        mark_undone(
            ctx,
            key,
            &record,
            "never reached the agent: nothing to undo",
        )?;
        return Ok(None);
    }
    ctx.update_container(key, |c| {
        if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
            s.status = StepStatus::UndoIntent;
        }
        None
    })?;
    fault::point(&format!("controller:after-undo-intent:{}", kind.as_str()));
    match ctx
        .call(&host.name, ctx.call_deadline(&host.name), || {
            calls::undo(&ctx.pool, host, &ctx.agent_run, &record.id)
        })
        .await
    {
        Ok(reply) => {
            let said = if kind == StepKind::Ownership {
                outcomes::undone_line(&reply.outcome)
            } else {
                "undone".to_string()
            };
            mark_undone(ctx, key, &record, &said)?;
            Ok(None)
        }
        Err(e) => {
            ctx.update_container(key, |c| {
                if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                    s.status = StepStatus::UndoFailed;
                    s.error = Some(e.to_string());
                }
                None
            })?;
            Ok(Some(format!(
                "undo of the {} step failed: {e}",
                kind.as_str()
            )))
        }
    }
}

fn mark_undone(
    ctx: &RunCtx,
    key: &str,
    record: &StepRecord,
    message: &str,
) -> Result<(), ControllerError> {
    ctx.update_container(key, |c| {
        if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
            s.status = StepStatus::Undone;
        }
        Some(Draft::container(
            c,
            Some(record.kind),
            EventKind::UndoDone,
            message,
        ))
    })?;
    Ok(())
}
