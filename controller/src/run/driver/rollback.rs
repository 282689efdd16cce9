//! A rollback run: every host of a finished run put back as it was.

use std::sync::Arc;

use fleet_core::CancellationToken;

use super::finish::{finish, mark_original_rolled_back};
use super::parallel::all_bounded;
use crate::error::ControllerError;
use crate::run::ctx::RunCtx;
use crate::run::model::{ContainerState, HostState, RunPhase};
use crate::run::unit::{rollback_unit, units};

/// A rollback run: every host at once (bounded by max-parallel), no canary;
/// each container's steps undone newest first from the retained checkpoints.
pub(super) async fn drive_rollback(
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
