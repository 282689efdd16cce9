//! How a run ends: a grace for what needs reconciling (an agent away
//! mid-undo), then the finish record (phase, note, event, audit-log line);
//! what is still stuck after it is reconciled in the background, across
//! controller restarts, until it is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::CancellationToken;

use crate::error::ControllerError;
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{ContainerState, EventKind, HostState, RunKind, RunPhase};
use crate::run::outcomes;
use crate::run::unit::{rollback_unit, unit_of};
use crate::store::LogEntry;

/// The keys of containers waiting to be put back.
fn needing_reconcile(ctx: &RunCtx) -> Vec<String> {
    ctx.containers()
        .into_iter()
        .filter(|c| c.state == ContainerState::NeedsReconcile)
        .map(|c| c.key)
        .collect()
}

/// One attempt at putting back every unit that needs it; true when none is
/// left.
async fn reconcile_pass(ctx: &Arc<RunCtx>) -> Result<bool, ControllerError> {
    let mut all = true;
    let mut done: Vec<String> = Vec::new();
    for key in needing_reconcile(ctx) {
        if done.contains(&key) {
            continue;
        }
        let unit = unit_of(ctx, &key);
        let back = rollback_unit(ctx, &unit).await?;
        if back && is_rollback(ctx) {
            for key in &unit {
                mark_original_rolled_back(ctx, key)?;
            }
        }
        all &= back;
        done.extend(unit);
    }
    Ok(all && needing_reconcile(ctx).is_empty())
}

fn is_rollback(ctx: &RunCtx) -> bool {
    matches!(
        ctx.with_header(|r| r.kind.clone()),
        RunKind::Rollback { .. }
    )
}

/// What a host whose containers are all back ends as: a rollback run's
/// host is done; a migration's host was rolled back.
fn settled(ctx: &RunCtx) -> HostState {
    if is_rollback(ctx) {
        HostState::Done
    } else {
        HostState::RolledBack
    }
}

/// When the run stops waiting for what needs reconciling: the grace of
/// each such container's host, counted from when the host was found out
/// of reach (or from now, for an undo the agent refused).
fn grace_ends(ctx: &RunCtx) -> Instant {
    let now = Instant::now();
    ctx.containers()
        .iter()
        .filter(|c| c.state == ContainerState::NeedsReconcile)
        .map(|c| ctx.grace_ends(&c.host).unwrap_or(now + ctx.reconcile_grace))
        .max()
        .unwrap_or(now)
}

/// Waits a while for anything needing reconciling (an agent that was away
/// mid-undo comes back), then records the run's end. What is still stuck
/// then is left to `reconcile`, which keeps trying after the run ends.
pub(super) async fn finish(
    ctx: &Arc<RunCtx>,
    shutdown: &CancellationToken,
    phase: RunPhase,
) -> Result<(), ControllerError> {
    let give_up = grace_ends(ctx);
    let mut stuck = Vec::new();
    while !reconcile_pass(ctx).await? {
        if Instant::now() >= give_up {
            stuck = needing_reconcile(ctx);
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    // A rollback run that put everything back in the grace period succeeded.
    let phase = if phase == RunPhase::CompletedWithFailures && is_rollback(ctx) && stuck.is_empty()
    {
        RunPhase::Succeeded
    } else {
        phase
    };
    let back = settled(ctx);
    // Named as the operator knows them, not by their record keys.
    let stuck_names: Vec<String> = stuck
        .iter()
        .filter_map(|key| ctx.container(key))
        .map(|c| outcomes::named(&c))
        .collect();
    let run = ctx.update_header(|r| {
        r.phase = phase;
        r.stopping = None;
        r.control = None;
        r.finished_unix_ms = Some(now_ms());
        r.overhead = ctx.overhead();
        for h in &mut r.hosts {
            if h.state == HostState::NeedsReconcile && !h.containers.iter().any(|k| stuck.contains(k)) {
                h.state = back;
            }
            // A run that ends leaves no host running.
            if h.state == HostState::Running {
                h.state = HostState::Stopped;
            }
        }
        if !stuck.is_empty() {
            r.note = Some(format!(
                "{} container(s) could not be put back yet ({}): the controller keeps trying and puts them back when their agent answers (or run `fleet-agent rollback --run {}` on the host)",
                stuck.len(),
                stuck_names.join(", "),
                ctx.agent_run
            ));
        }
    })?;
    let containers = ctx.containers();
    let count = |state| containers.iter().filter(|c| c.state == state).count();
    let (migrated, rolled_back) = (
        count(ContainerState::Migrated),
        count(ContainerState::RolledBack),
    );
    let message = format!(
        "{}: {migrated} container(s) migrated, {rolled_back} rolled back, {} of {} host(s) failed (budget {}){}",
        phase.name(),
        run.failed_hosts,
        run.hosts.len(),
        run.budget,
        run.note
            .as_ref()
            .map_or(String::new(), |n| format!("; {n}")),
    );
    let seq = ctx.emit_numbered(Draft::run(EventKind::RunFinished, message.clone()))?;
    ctx.update_header(|r| r.finished_seq = Some(seq))?;
    ctx.store.append_log(&LogEntry::new(
        &run.created_by,
        "operator",
        "run.finished",
        &run.id,
        &message,
    ))
}

/// A finished run with containers its agent could not put back in time:
/// keeps trying (backing off to a minute, across controller restarts, as
/// the records say) until every one is back, then says so in the run and
/// the audit log. They stay held against other runs meanwhile.
/// Returns whether nothing is left stuck (false: stopped by shutdown or a
/// store error; a restart takes over).
pub async fn reconcile(ctx: Arc<RunCtx>, shutdown: CancellationToken) -> bool {
    // Hosts still marked stuck with no stuck container: a crash came
    // between the last put-back and its record.
    let hosts_stuck =
        ctx.with_header(|r| r.hosts.iter().any(|h| h.state == HostState::NeedsReconcile));
    if needing_reconcile(&ctx).is_empty() && !hosts_stuck {
        return true;
    }
    let mut pause = Duration::from_secs(2);
    loop {
        match reconcile_pass(&ctx).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(run = %ctx.id, error = %e, "reconciling stopped on a store error; it resumes when the controller restarts");
                return false;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
    let back = settled(&ctx);
    let rollback = is_rollback(&ctx);
    let result = ctx
        .update_header(|r| {
            for h in &mut r.hosts {
                if h.state == HostState::NeedsReconcile {
                    h.state = back;
                }
            }
            if rollback && r.phase == RunPhase::CompletedWithFailures {
                r.phase = RunPhase::Succeeded;
            }
            r.note = Some(format!(
                "{}; since reconciled: every container is back as it was",
                r.note.clone().unwrap_or_default()
            ));
        })
        .and_then(|run| {
            let message = "reconciled: the containers the run could not put back when it ended are back exactly as they were";
            ctx.emit(Draft::run(EventKind::Reconciled, message))?;
            ctx.store.append_log(&LogEntry::new(
                &run.created_by,
                "operator",
                "run.reconciled",
                &run.id,
                message,
            ))
        });
    if let Err(e) = result {
        tracing::error!(run = %ctx.id, error = %e, "recording a reconciliation failed");
    }
    true
}

/// The rolled-back run's own record says so too.
pub(super) fn mark_original_rolled_back(ctx: &RunCtx, key: &str) -> Result<(), ControllerError> {
    let Some(copy) = ctx.container(key) else {
        return Ok(());
    };
    if let Some(mut original) = ctx
        .store
        .containers(&ctx.agent_run)?
        .into_iter()
        .find(|c| c.key == key)
    {
        original.state = ContainerState::RolledBack;
        original.steps = copy.steps;
        ctx.store.put_container(&ctx.agent_run, &original, None)?;
    }
    Ok(())
}
