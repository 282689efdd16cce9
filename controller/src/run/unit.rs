//! One unit of migration: a container, or a group of linked containers
//! (shared namespaces or volumes) that move as one. Each step's intent is
//! flushed before the agent is asked and its outcome after; any failure
//! undoes the whole unit, newest step first, so every member ends migrated
//! or exactly as it was.
//!
//! A group's steps interleave: every backup, every user, the stops
//! (dependents first, so nothing loses the namespace it runs in), every
//! ownership change, the recreates (what is pointed at first, so a
//! dependent's new container can join its partner's successor), every
//! verify. The undo is the exact reverse: the old partner is started before
//! the dependents that join it.
//!
//! `sequence.rs` holds that order, `step.rs` runs one step (the intent,
//! the call, the outcome) and `undo.rs` puts a unit back.

mod sequence;
mod step;
mod undo;

use std::sync::Arc;

use crate::error::ControllerError;
use crate::plan::Migration;
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{ContainerState, EventKind};
use crate::run::outcomes;
use sequence::{audit_target, migration_of, sequence};
use step::{Step, run_step};
pub use undo::rollback_unit;

/// A unit either migrates or ends exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Migrated,
    Failed,
}

/// Splits a host's containers (keys in plan order) into units: a
/// container and the group members that follow it.
pub fn units(ctx: &RunCtx, keys: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut group: Vec<String> = Vec::new();
    for key in keys {
        let Some(c) = ctx.container(key) else {
            continue;
        };
        match out.last_mut() {
            Some(unit) if group.contains(&c.plan.name) => unit.push(key.clone()),
            _ => {
                group = c.plan.group.clone();
                out.push(vec![key.clone()]);
            }
        }
    }
    out
}

/// The unit `key` belongs to, among the run's containers.
pub fn unit_of(ctx: &RunCtx, key: &str) -> Vec<String> {
    let Some(c) = ctx.container(key) else {
        return vec![key.to_string()];
    };
    let keys = ctx.with_header(|r| {
        r.hosts
            .iter()
            .find(|h| h.name == c.host)
            .map(|h| h.containers.clone())
            .unwrap_or_default()
    });
    units(ctx, &keys)
        .into_iter()
        .find(|u| u.iter().any(|k| k == key))
        .unwrap_or_else(|| vec![key.to_string()])
}

/// Migrates a unit step by step; on any failure rolls all of it back.
pub async fn migrate_unit(ctx: &Arc<RunCtx>, keys: &[String]) -> Result<Outcome, ControllerError> {
    let mut members: Vec<(String, Migration)> = Vec::new();
    for key in keys {
        let c = ctx.update_container(key, |c| {
            if c.state == ContainerState::Pending {
                c.state = ContainerState::Migrating;
                c.started_unix_ms = Some(now_ms());
            }
            None
        })?;
        if let Some(migration) = migration_of(&c) {
            members.push((key.clone(), migration));
        }
    }
    let together: Vec<String> = keys
        .iter()
        .filter_map(|k| ctx.container(k).map(|c| c.plan.name))
        .collect();
    let mut agent_journal = None;
    for (member, kind) in sequence(&members) {
        let (key, migration) = &members[member];
        let step = Step {
            key,
            kind,
            migration,
            together: &together,
        };
        if !run_step(ctx, &step, &mut agent_journal).await? {
            rollback_unit(ctx, keys).await?;
            return Ok(Outcome::Failed);
        }
    }
    for (key, _) in &members {
        // Resumed after a crash in this very loop: say it once.
        if ctx
            .container(key)
            .is_some_and(|c| c.state == ContainerState::Migrated)
        {
            continue;
        }
        let mut result = String::new();
        let c = ctx.update_container(key, |c| {
            c.state = ContainerState::Migrated;
            c.finished_unix_ms = Some(now_ms());
            result = outcomes::migrated_line(c);
            Some(Draft::container(
                c,
                None,
                EventKind::ContainerMigrated,
                result.clone(),
            ))
        })?;
        ctx.log("container.migrated", &audit_target(ctx, &c), &result)?;
    }
    Ok(Outcome::Migrated)
}
