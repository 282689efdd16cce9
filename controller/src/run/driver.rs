//! Drives a run to its end from whatever its durable records say: waves of
//! hosts, containers one at a time in plan order, each step journaled
//! (intent flushed) before the agent is asked, and the outcome after. A
//! restarted controller calls the same functions on the same records: a
//! step with an intent and no outcome is reconciled with the agent's
//! journal and asked again under the same key, which the agent makes safe.

//!
//! `migrate.rs` drives a migration run (waves, hosts, units, the failure
//! policy), `rollback.rs` a rollback run, and `finish.rs` how either ends
//! (the grace for what needs reconciling, the finish record, and the
//! reconciliation that goes on after the run ended).

mod finish;
mod migrate;
mod parallel;
mod rollback;

use std::sync::Arc;

use fleet_core::CancellationToken;

use crate::run::ctx::RunCtx;
use crate::run::model::RunKind;

pub use finish::reconcile;

/// Runs (or resumes) `ctx` until it ends, pauses, or the controller stops.
pub async fn drive(ctx: Arc<RunCtx>, shutdown: CancellationToken) {
    let result = match ctx.header().kind {
        RunKind::Migrate => migrate::drive_migrate(&ctx, &shutdown).await,
        RunKind::Rollback { .. } => rollback::drive_rollback(&ctx, &shutdown).await,
    };
    if let Err(e) = result {
        tracing::error!(run = %ctx.id, error = %e, "run stopped on a store error; it resumes when the controller restarts");
    }
}
