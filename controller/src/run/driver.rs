//! Drives a run to its end from whatever its durable records say: waves of
//! hosts, containers one at a time in plan order, each step journaled
//! (intent flushed) before the agent is asked, and the outcome after. A
//! restarted controller calls the same functions on the same records: a
//! step with an intent and no outcome is reconciled with the agent's
//! journal and asked again under the same key, which the agent makes safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::CancellationToken;
use fleet_core::fault;
use futures::StreamExt;

use crate::error::ControllerError;
use crate::plan::Action;
use crate::run::calls::{self, CallError, StepCall};
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{
    ContainerState, Control, EventKind, HostState, OnFailure, RunKind, RunPhase, StepKind,
    StepRecord, StepStatus,
};
use crate::store::LogEntry;

/// A container either migrates or ends exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Migrated,
    Failed,
}

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
        HostState::Done | HostState::RolledBack | HostState::Failed | HostState::NeedsReconcile => {
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
    for key in &record.containers {
        let Some(container) = ctx.container(key) else {
            continue;
        };
        let outcome = match container.state {
            ContainerState::NotMigrated | ContainerState::Migrated => continue,
            // Only after a crash between a container's rollback and the
            // host's failure record: the failure still counts.
            ContainerState::RolledBack => Outcome::Failed,
            ContainerState::Pending => {
                if interrupted(&ctx, &shutdown) {
                    return Ok(());
                }
                migrate_container(&ctx, key).await?
            }
            // Resumed mid-container after a crash: finish it.
            ContainerState::Migrating => migrate_container(&ctx, key).await?,
            ContainerState::RollingBack | ContainerState::NeedsReconcile => {
                rollback_container(&ctx, key).await?;
                Outcome::Failed
            }
        };
        if outcome == Outcome::Failed {
            let error = ctx.container(key).and_then(|c| c.error).unwrap_or_default();
            return host_failed(&ctx, &host, format!("{}: {error}", container.plan.name)).await;
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
    for key in keys.iter().rev() {
        let Some(c) = ctx.container(key) else {
            continue;
        };
        if matches!(
            c.state,
            ContainerState::Migrated
                | ContainerState::Migrating
                | ContainerState::RollingBack
                | ContainerState::NeedsReconcile
        ) {
            clean &= rollback_container(ctx, key).await?;
        }
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

fn step_id(container_id: &str, kind: StepKind) -> String {
    format!(
        "{}.{}",
        &container_id[..container_id.len().min(12)],
        kind.as_str()
    )
}

fn sequence(migration: &crate::plan::Migration) -> Vec<StepKind> {
    let mut steps = vec![StepKind::Backup];
    if migration.user_to_create.is_some() {
        steps.push(StepKind::User);
    }
    steps.push(StepKind::Stop);
    if !migration.mounts.is_empty() {
        steps.push(StepKind::Ownership);
    }
    steps.extend([StepKind::Recreate, StepKind::Verify]);
    steps
}

/// Migrates one container, step by step; on any failure rolls it back.
async fn migrate_container(ctx: &Arc<RunCtx>, key: &str) -> Result<Outcome, ControllerError> {
    let container = ctx.update_container(key, |c| {
        if c.state == ContainerState::Pending {
            c.state = ContainerState::Migrating;
            c.started_unix_ms = Some(now_ms());
        }
        None
    })?;
    let Action::Migrate(migration) = container.plan.action.clone() else {
        return Ok(Outcome::Migrated);
    };
    let host = ctx.host(&container.host);
    let mut target = container.target.or(migration.uid.zip(migration.gid));
    let mut agent_journal = None;
    for kind in sequence(&migration) {
        let started = Instant::now();
        let c = ctx.container(key).unwrap_or(container.clone());
        let id = step_id(&c.plan.id, kind);
        match c.step(kind).map(|s| s.status) {
            Some(StepStatus::Done) => continue,
            // Failed, and the controller stopped before its rollback: the
            // failure stands (asking again might pass a failed health gate).
            Some(StepStatus::Failed) => {
                rollback_container(ctx, key).await?;
                return Ok(Outcome::Failed);
            }
            Some(StepStatus::Intent) => {
                // The controller stopped between the intent and the outcome:
                // what does the agent's own journal say?
                if agent_journal.is_none() {
                    agent_journal = calls::with_deadline(ctx.agent_deadline, || {
                        calls::agent_steps(&ctx.pool, &host, &ctx.agent_run)
                    })
                    .await
                    .ok();
                }
                let seen = agent_journal.as_ref().is_some_and(|j| j.contains(&id));
                ctx.emit(Draft::container(
                    &c,
                    Some(kind),
                    EventKind::Reconciled,
                    format!(
                        "resumed mid-step: the agent's journal {} step {id}; asking again under the same key",
                        if seen { "has" } else { "does not have" }
                    ),
                ))?;
            }
            Some(_) => {
                // Its undo had begun: finish putting it back.
                rollback_container(ctx, key).await?;
                return Ok(Outcome::Failed);
            }
            None => {
                ctx.update_container(key, |c| {
                    c.steps.push(StepRecord {
                        id: id.clone(),
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
                        id.clone(),
                    ))
                })?;
            }
        }
        fault::point(&format!("controller:after-intent:{}", kind.as_str()));
        let before_call = started.elapsed();
        let call = StepCall {
            run: &ctx.agent_run,
            step: &id,
            kind,
            container_id: &c.plan.id,
            container_name: &c.plan.name,
            migration: &migration,
            target,
        };
        let progress_draft = Draft::container(&c, Some(kind), EventKind::StepProgress, "");
        let on_progress = |p: calls::Progress| {
            if kind == StepKind::Ownership {
                fault::count("controller:ownership-entries", p.entries);
            }
            ctx.progress(progress_draft.clone(), p.entries, p.changed, p.bytes)
        };
        let call_started = Instant::now();
        let result = calls::with_deadline(ctx.agent_deadline, || {
            calls::step(&ctx.pool, &host, &call, &on_progress)
        })
        .await;
        let agent_ms = call_started.elapsed().as_millis() as u64;
        let after_call = Instant::now();
        match result {
            Ok(reply) => {
                if kind == StepKind::User {
                    let uid = reply.outcome.get("uid").and_then(|v| v.as_u64());
                    let gid = reply.outcome.get("gid").and_then(|v| v.as_u64());
                    if let (Some(uid), Some(gid)) = (uid, gid) {
                        target = Some((uid as u32, gid as u32));
                    }
                }
                let downtime = (kind == StepKind::Verify)
                    .then(|| reply.outcome.get("downtime_ms").and_then(|v| v.as_u64()))
                    .flatten();
                ctx.update_container(key, |c| {
                    if let Some(s) = c.steps.iter_mut().find(|s| s.kind == kind) {
                        s.status = StepStatus::Done;
                        s.outcome = Some(reply.outcome.clone());
                        s.error = None;
                        s.agent_ms = agent_ms;
                    }
                    c.target = target;
                    if downtime.is_some() {
                        c.downtime_ms = downtime;
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
                        format!("{} ms{note}", agent_ms),
                    ))
                })?;
                ctx.record_overhead((before_call + after_call.elapsed()).as_micros() as u64);
                fault::point(&format!("controller:after-done:{}", kind.as_str()));
            }
            Err(error) => {
                let message = match &error {
                    CallError::Unreachable(m) => {
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
                rollback_container(ctx, key).await?;
                return Ok(Outcome::Failed);
            }
        }
    }
    ctx.update_container(key, |c| {
        c.state = ContainerState::Migrated;
        c.finished_unix_ms = Some(now_ms());
        let (uid, gid) = c.target.unwrap_or_default();
        let downtime = c
            .downtime_ms
            .map_or(String::new(), |d| format!(", downtime {d} ms"));
        Some(Draft::container(
            c,
            None,
            EventKind::ContainerMigrated,
            format!("runs as {uid}:{gid}{downtime}"),
        ))
    })?;
    Ok(Outcome::Migrated)
}

/// Undoes the container's steps, newest first. Steps the agent's journal
/// never saw are marked undone without a call. Returns whether it is back
/// exactly as before (false: the agent is away or an undo failed; the
/// container is left NeedsReconcile and retried).
async fn rollback_container(ctx: &Arc<RunCtx>, key: &str) -> Result<bool, ControllerError> {
    let c = ctx.update_container(key, |c| {
        c.state = ContainerState::RollingBack;
        Some(Draft::container(
            c,
            None,
            EventKind::UndoStarted,
            "rolling back",
        ))
    })?;
    let host = ctx.host(&c.host);
    let reconcile_failed = |message: String| {
        ctx.update_container(key, |c| {
            c.state = ContainerState::NeedsReconcile;
            c.error = Some(message.clone());
            Some(Draft::container(
                c,
                None,
                EventKind::UndoFailed,
                message.clone(),
            ))
        })
    };
    let known = match calls::with_deadline(ctx.agent_deadline, || {
        calls::agent_steps(&ctx.pool, &host, &ctx.agent_run)
    })
    .await
    {
        Ok(known) => known,
        Err(e) => {
            reconcile_failed(format!("cannot read the agent's journal to roll back: {e}"))?;
            return Ok(false);
        }
    };
    for record in c.steps.iter().rev() {
        if record.status == StepStatus::Undone {
            continue;
        }
        if !known.contains(&record.id) {
            ctx.update_container(key, |c| {
                if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                    s.status = StepStatus::Undone;
                }
                Some(Draft::container(
                    c,
                    Some(record.kind),
                    EventKind::UndoDone,
                    "never reached the agent: nothing to undo",
                ))
            })?;
            continue;
        }
        ctx.update_container(key, |c| {
            if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                s.status = StepStatus::UndoIntent;
            }
            None
        })?;
        fault::point(&format!(
            "controller:after-undo-intent:{}",
            record.kind.as_str()
        ));
        match calls::with_deadline(ctx.agent_deadline, || {
            calls::undo(&ctx.pool, &host, &ctx.agent_run, &record.id)
        })
        .await
        {
            Ok(_) => {
                ctx.update_container(key, |c| {
                    if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                        s.status = StepStatus::Undone;
                    }
                    Some(Draft::container(
                        c,
                        Some(record.kind),
                        EventKind::UndoDone,
                        "undone",
                    ))
                })?;
            }
            Err(e) => {
                ctx.update_container(key, |c| {
                    if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                        s.status = StepStatus::UndoFailed;
                        s.error = Some(e.to_string());
                    }
                    None
                })?;
                reconcile_failed(format!(
                    "undo of the {} step failed: {e}",
                    record.kind.as_str()
                ))?;
                return Ok(false);
            }
        }
    }
    ctx.update_container(key, |c| {
        c.state = ContainerState::RolledBack;
        c.finished_unix_ms = Some(now_ms());
        Some(Draft::container(
            c,
            None,
            EventKind::ContainerRolledBack,
            "back exactly as it was before the run",
        ))
    })?;
    Ok(true)
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
                for key in host.containers.iter().rev() {
                    let Some(c) = ctx.container(key) else {
                        continue;
                    };
                    let undo = match c.state {
                        ContainerState::Migrating
                        | ContainerState::RollingBack
                        | ContainerState::NeedsReconcile => true,
                        ContainerState::Migrated => undo_all,
                        _ => false,
                    };
                    if undo {
                        touched = true;
                        clean &= rollback_container(&ctx, key).await?;
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

/// Waits until nothing needs reconciling (an agent that was away mid-undo
/// comes back), then records the run's end.
async fn finish(
    ctx: &Arc<RunCtx>,
    shutdown: &CancellationToken,
    phase: RunPhase,
) -> Result<(), ControllerError> {
    let give_up = Instant::now() + ctx.agent_deadline.max(Duration::from_secs(60));
    let mut stuck = Vec::new();
    loop {
        let pending: Vec<String> = ctx
            .containers()
            .into_iter()
            .filter(|c| c.state == ContainerState::NeedsReconcile)
            .map(|c| c.key)
            .collect();
        if pending.is_empty() {
            break;
        }
        let mut all = true;
        for key in &pending {
            all &= rollback_container(ctx, key).await?;
        }
        if all {
            continue;
        }
        if Instant::now() >= give_up {
            stuck = pending;
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    let run = ctx.update_header(|r| {
        r.phase = phase;
        r.stopping = None;
        r.control = None;
        r.finished_unix_ms = Some(now_ms());
        r.overhead = ctx.overhead();
        for h in &mut r.hosts {
            if h.state == HostState::NeedsReconcile && !h.containers.iter().any(|k| stuck.contains(k)) {
                h.state = HostState::RolledBack;
            }
        }
        if !stuck.is_empty() {
            r.note = Some(format!(
                "{} container(s) could not be put back ({}); retry with `fleetctl rollback {}` or `fleet-agent rollback --run {}` on the host",
                stuck.len(),
                stuck.join(", "),
                ctx.agent_run,
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
    ctx.emit(Draft::run(EventKind::RunFinished, message.clone()))?;
    ctx.store.append_log(&LogEntry::new(
        &run.created_by,
        "operator",
        "run.finished",
        &run.id,
        &message,
    ))
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
                for key in host.containers.iter().rev() {
                    let Some(c) = ctx.container(key) else {
                        continue;
                    };
                    if c.state == ContainerState::RolledBack {
                        // Repeatable: a crash may have come between the two.
                        mark_original_rolled_back(&ctx, key)?;
                    } else if c.state != ContainerState::NotMigrated {
                        let ok = rollback_container(&ctx, key).await?;
                        clean &= ok;
                        if ok {
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
