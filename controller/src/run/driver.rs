//! Drives a run to its end from whatever its durable records say: waves of
//! hosts, containers one at a time in plan order, each step journaled
//! (intent flushed) before the agent is asked, and the outcome after. A
//! restarted controller calls the same functions on the same records: a
//! step with an intent and no outcome is reconciled with the agent's
//! journal and asked again under the same key, which the agent makes safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::CancellationToken;
use futures::StreamExt;

use crate::error::ControllerError;
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{
    ContainerState, Control, EventKind, HostState, OnFailure, RunKind, RunPhase,
};
use crate::run::outcomes;
use crate::run::unit::{Outcome, migrate_unit, rollback_unit, unit_of, units};
use crate::store::LogEntry;

/// Runs (or resumes) `ctx` until it ends, pauses, or the controller stops.
pub async fn drive(ctx: Arc<RunCtx>, shutdown: CancellationToken) {
    let result = match ctx.header().kind {
        RunKind::Migrate => drive_migrate(&ctx, &shutdown).await,
        RunKind::Rollback { .. } => drive_rollback(&ctx, &shutdown).await,
    };
    if let Err(e) = result {
        tracing::error!(run = %ctx.id, error = %e, "run stopped on a store error; it resumes when the controller restarts");
    }
}

/// Runs `tasks` at most `parallel` at a time; the first store error wins.
async fn all_bounded<F>(tasks: Vec<F>, parallel: usize) -> Result<(), ControllerError>
where
    F: std::future::Future<Output = Result<(), ControllerError>>,
{
    let results: Vec<Result<(), ControllerError>> = futures::stream::iter(tasks)
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

fn interrupted(ctx: &RunCtx, shutdown: &CancellationToken) -> bool {
    shutdown.is_cancelled() || ctx.with_header(|r| r.control.is_some() || r.stopping.is_some())
}

async fn drive_migrate(
    ctx: &Arc<RunCtx>,
    shutdown: &CancellationToken,
) -> Result<(), ControllerError> {
    loop {
        let run = ctx.header();
        if run.phase != RunPhase::Running || shutdown.is_cancelled() {
            return Ok(());
        }
        match run.control {
            Some(Control::Pause) => {
                ctx.update_header(|r| {
                    r.phase = RunPhase::Paused;
                    r.control = None;
                    r.overhead = ctx.overhead();
                })?;
                return ctx.emit(Draft::run(
                    EventKind::Paused,
                    format!(
                        "paused after wave {}; continue with `fleetctl runs resume {}`",
                        run.waves_done, run.id
                    ),
                ));
            }
            Some(Control::Abort) => {
                ctx.update_header(|r| {
                    r.control = None;
                    r.stopping.get_or_insert(RunPhase::Aborted);
                    r.note
                        .get_or_insert_with(|| "aborted by an operator".into());
                })?;
                continue;
            }
            None => {}
        }
        if let Some(target) = run.stopping {
            return stop(ctx, shutdown, target).await;
        }
        if run.waves_done >= run.waves.len() {
            let phase = if run.failed_hosts > 0 {
                RunPhase::CompletedWithFailures
            } else {
                RunPhase::Succeeded
            };
            return finish(ctx, shutdown, phase).await;
        }
        let wave = run.waves[run.waves_done].clone();
        // Resumed mid-wave after a restart: the wave has begun already.
        let begun = run
            .hosts
            .iter()
            .any(|h| wave.contains(&h.name) && h.state != HostState::Pending);
        if !begun {
            ctx.emit(Draft::run(
                EventKind::WaveStarted,
                format!(
                    "wave {}/{}{}: {}",
                    run.waves_done + 1,
                    run.waves.len(),
                    if run.waves_done == 0 && run.options.canary > 0 {
                        " (canary)"
                    } else {
                        ""
                    },
                    wave.join(", ")
                ),
            ))?;
        }
        let parallel = run.options.max_parallel.max(1) as usize;
        let tasks: Vec<_> = wave
            .iter()
            .map(|host| migrate_host(ctx.clone(), host.clone(), shutdown.clone()))
            .collect();
        all_bounded(tasks, parallel).await?;
        let run = ctx.header();
        let finished = wave.iter().all(|name| {
            run.hosts
                .iter()
                .find(|h| &h.name == name)
                .is_none_or(|h| !matches!(h.state, HostState::Pending | HostState::Running))
        });
        if finished {
            ctx.update_header(|r| {
                r.waves_done += 1;
                r.overhead = ctx.overhead();
                if r.options.pause_after_canary
                    && r.options.canary > 0
                    && r.waves_done == 1
                    && r.waves.len() > 1
                    && r.stopping.is_none()
                {
                    r.control.get_or_insert(Control::Pause);
                }
            })?;
        } else if !interrupted(ctx, shutdown) {
            // Cannot happen: a host task returns early only when interrupted.
            return Err(ControllerError::Store(format!(
                "wave of run {} left hosts unfinished",
                run.id
            )));
        }
    }
}

async fn migrate_host(
    ctx: Arc<RunCtx>,
    host: String,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let Some(record) = ctx.header().hosts.into_iter().find(|h| h.name == host) else {
        return Ok(());
    };
    match record.state {
        HostState::Done
        | HostState::RolledBack
        | HostState::Failed
        | HostState::NeedsReconcile
        | HostState::Stopped => {
            return Ok(());
        }
        HostState::RollingBack => return rollback_host(&ctx, &host).await,
        HostState::Pending => {
            if interrupted(&ctx, &shutdown) {
                return Ok(());
            }
            ctx.update_header(|r| {
                if let Some(h) = r.host_mut(&host) {
                    h.state = HostState::Running;
                }
            })?;
            ctx.emit(Draft::host(
                &host,
                EventKind::HostStarted,
                format!("{} container(s) in plan order", record.containers.len()),
            ))?;
        }
        HostState::Running => {}
    }
    for unit in units(&ctx, &record.containers) {
        let states: Vec<ContainerState> = unit
            .iter()
            .filter_map(|k| ctx.container(k).map(|c| c.state))
            .collect();
        let any = |wanted: &[ContainerState]| states.iter().any(|s| wanted.contains(s));
        let outcome = if any(&[ContainerState::RollingBack, ContainerState::NeedsReconcile]) {
            rollback_unit(&ctx, &unit).await?;
            Outcome::Failed
        } else if any(&[ContainerState::Pending, ContainerState::Migrating]) {
            // Pending: not begun; Migrating: resumed mid-unit after a crash.
            if !any(&[ContainerState::Migrating]) && interrupted(&ctx, &shutdown) {
                return Ok(());
            }
            migrate_unit(&ctx, &unit).await?
        } else if any(&[ContainerState::RolledBack]) {
            // Only after a crash between a unit's rollback and the host's
            // failure record: the failure still counts.
            Outcome::Failed
        } else {
            continue;
        };
        if outcome == Outcome::Failed {
            let error = unit
                .iter()
                .filter_map(|k| ctx.container(k))
                .find_map(|c| c.error.map(|e| format!("{}: {e}", c.plan.name)))
                .unwrap_or_default();
            return host_failed(&ctx, &host, error).await;
        }
    }
    ctx.update_header(|r| {
        if let Some(h) = r.host_mut(&host) {
            h.state = HostState::Done;
        }
    })?;
    ctx.emit(Draft::host(
        &host,
        EventKind::HostDone,
        "every planned container migrated",
    ))
}

/// Applies the run's failure policy and budget to a failed host.
async fn host_failed(ctx: &Arc<RunCtx>, host: &str, error: String) -> Result<(), ControllerError> {
    let run = ctx.update_header(|r| {
        r.failed_hosts += 1;
        let on_failure = r.options.on_failure;
        if let Some(h) = r.host_mut(host) {
            h.error = Some(error.clone());
            h.state = match on_failure {
                OnFailure::RollbackHost => HostState::RollingBack,
                OnFailure::Halt | OnFailure::RollbackRun => HostState::Failed,
            };
        }
        match on_failure {
            OnFailure::Halt => {
                r.stopping.get_or_insert(RunPhase::Halted);
                r.note
                    .get_or_insert_with(|| format!("halted: host {host} failed (on-failure=halt)"));
            }
            OnFailure::RollbackRun => {
                r.stopping = Some(RunPhase::RolledBack);
                r.note.get_or_insert_with(|| {
                    format!("rolled back: host {host} failed (on-failure=rollback-run)")
                });
            }
            OnFailure::RollbackHost => {}
        }
        if r.failed_hosts > r.budget && r.stopping.is_none() {
            r.stopping = Some(RunPhase::Halted);
            r.note = Some(format!(
                "halted: {} failed host(s) exceed the failure budget of {} (--max-failures {})",
                r.failed_hosts,
                r.budget,
                if r.options.max_failures.is_empty() {
                    "0"
                } else {
                    &r.options.max_failures
                }
            ));
        }
    })?;
    ctx.emit(Draft::host(host, EventKind::HostFailed, error))?;
    if run.stopping == Some(RunPhase::Halted) {
        ctx.emit(Draft::run(
            EventKind::Halted,
            run.note.clone().unwrap_or_default(),
        ))?;
    }
    if run.options.on_failure == OnFailure::RollbackHost {
        rollback_host(ctx, host).await?;
    }
    Ok(())
}

/// Rolls back every container of `host` the run touched, newest first.
async fn rollback_host(ctx: &Arc<RunCtx>, host: &str) -> Result<(), ControllerError> {
    let keys = ctx
        .header()
        .hosts
        .into_iter()
        .find(|h| h.name == host)
        .map(|h| h.containers)
        .unwrap_or_default();
    let mut clean = true;
    // Units the run never touched are left as they are by rollback_unit.
    for unit in units(ctx, &keys).iter().rev() {
        clean &= rollback_unit(ctx, unit).await?;
    }
    ctx.update_header(|r| {
        if let Some(h) = r.host_mut(host) {
            h.state = if clean {
                HostState::RolledBack
            } else {
                HostState::NeedsReconcile
            };
        }
    })?;
    Ok(())
}

/// The run stops starting new work and ends in `target`. Nothing is left
/// in between: a container caught mid-migration (a crash during the stop)
/// is rolled back, and rollback-run undoes every migrated container.
async fn stop(
    ctx: &Arc<RunCtx>,
    shutdown: &CancellationToken,
    target: RunPhase,
) -> Result<(), ControllerError> {
    let run = ctx.header();
    let parallel = run.options.max_parallel.max(1) as usize;
    let undo_all = target == RunPhase::RolledBack;
    let tasks: Vec<_> = run
        .hosts
        .iter()
        .map(|h| {
            let ctx = ctx.clone();
            let host = h.clone();
            async move {
                let mut touched = false;
                let mut clean = true;
                for unit in units(&ctx, &host.containers).iter().rev() {
                    let undo = unit.iter().any(|k| {
                        ctx.container(k).is_some_and(|c| match c.state {
                            ContainerState::Migrating
                            | ContainerState::RollingBack
                            | ContainerState::NeedsReconcile => true,
                            ContainerState::Migrated => undo_all,
                            _ => false,
                        })
                    });
                    if undo {
                        touched = true;
                        clean &= rollback_unit(&ctx, unit).await?;
                    }
                }
                if touched {
                    ctx.update_header(|r| {
                        if let Some(h) = r.host_mut(&host.name) {
                            h.state = if !clean {
                                HostState::NeedsReconcile
                            } else if undo_all {
                                HostState::RolledBack
                            } else {
                                h.state
                            };
                        }
                    })?;
                }
                Ok(())
            }
        })
        .collect();
    all_bounded(tasks, parallel).await?;
    finish(ctx, shutdown, target).await
}

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
async fn finish(
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

/// A rollback run: every host at once (bounded by max-parallel), no canary;
/// each container's steps undone newest first from the retained checkpoints.
async fn drive_rollback(
    ctx: &Arc<RunCtx>,
    shutdown: &CancellationToken,
) -> Result<(), ControllerError> {
    let run = ctx.header();
    if run.phase != RunPhase::Running {
        return Ok(());
    }
    let parallel = run.options.max_parallel.max(1) as usize;
    let tasks: Vec<_> = run
        .hosts
        .iter()
        .map(|h| {
            let ctx = ctx.clone();
            let host = h.clone();
            let shutdown = shutdown.clone();
            async move {
                if matches!(host.state, HostState::Done | HostState::RolledBack)
                    || shutdown.is_cancelled()
                {
                    return Ok(());
                }
                ctx.update_header(|r| {
                    if let Some(h) = r.host_mut(&host.name) {
                        h.state = HostState::Running;
                    }
                })?;
                let mut clean = true;
                for unit in units(&ctx, &host.containers).iter().rev() {
                    // A unit already back (a crash came between its rollback
                    // and the original run's record of it) is left as it is,
                    // and recorded again.
                    let ok = rollback_unit(&ctx, unit).await?;
                    clean &= ok;
                    if ok {
                        for key in unit {
                            mark_original_rolled_back(&ctx, key)?;
                        }
                    }
                }
                ctx.update_header(|r| {
                    if let Some(h) = r.host_mut(&host.name) {
                        h.state = if clean {
                            HostState::Done
                        } else {
                            HostState::NeedsReconcile
                        };
                    }
                })?;
                Ok(())
            }
        })
        .collect();
    all_bounded(tasks, parallel).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let original = ctx.agent_run.clone();
    if let Some(mut of) = ctx.store.run(&original)?
        && !of.rolled_back_by.contains(&ctx.id)
    {
        of.rolled_back_by.push(ctx.id.clone());
        ctx.store.put_run(&of)?;
    }
    let stuck = ctx
        .containers()
        .iter()
        .any(|c| c.state == ContainerState::NeedsReconcile);
    let phase = if stuck {
        RunPhase::CompletedWithFailures
    } else {
        RunPhase::Succeeded
    };
    finish(ctx, shutdown, phase).await
}

/// The rolled-back run's own record says so too.
fn mark_original_rolled_back(ctx: &RunCtx, key: &str) -> Result<(), ControllerError> {
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
