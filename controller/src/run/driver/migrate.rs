//! A migration run: its waves one after another (canary first, a pause
//! after it when asked), the hosts of a wave in parallel, each host's units
//! in plan order; a failed host meets the run's failure policy and budget;
//! a stopping run rolls back what it must and ends.

use std::sync::Arc;

use fleet_core::CancellationToken;

use super::finish::finish;
use super::parallel::all_bounded;
use crate::error::ControllerError;
use crate::run::ctx::{Draft, RunCtx};
use crate::run::model::{ContainerState, Control, EventKind, HostState, OnFailure, Run, RunPhase};
use crate::run::unit::{Outcome, migrate_unit, rollback_unit, units};

fn interrupted(ctx: &RunCtx, shutdown: &CancellationToken) -> bool {
    shutdown.is_cancelled() || ctx.with_header(|r| r.control.is_some() || r.stopping.is_some())
}

pub(super) async fn drive_migrate(
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
        announce_wave(ctx, &run, &wave)?;
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

/// The wave's start event, unless the wave has begun already (resumed
/// mid-wave after a restart).
fn announce_wave(ctx: &RunCtx, run: &Run, wave: &[String]) -> Result<(), ControllerError> {
    let begun = run
        .hosts
        .iter()
        .any(|h| wave.contains(&h.name) && h.state != HostState::Pending);
    if begun {
        return Ok(());
    }
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
    ))
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
                r.failed_hosts, r.budget, r.options.max_failures
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
