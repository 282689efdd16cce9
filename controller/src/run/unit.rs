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

use std::sync::Arc;
use std::time::Instant;

use fleet_core::fault;
use fleet_core::step::Progress;

use crate::agents::calls::{self, CallError, StepCall};
use crate::error::ControllerError;
use crate::plan::{Action, Migration};
use crate::run::ctx::{Draft, RunCtx, now_ms};
use crate::run::model::{
    ContainerRun, ContainerState, EventKind, StepKind, StepRecord, StepStatus,
};
use crate::run::outcomes;

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

fn step_id(container_id: &str, kind: StepKind) -> String {
    format!(
        "{}.{}",
        &container_id[..container_id.len().min(12)],
        kind.as_str()
    )
}

fn kinds(migration: &Migration) -> Vec<StepKind> {
    let mut steps = vec![StepKind::Backup];
    if migration.target.user().to_create().is_some() {
        steps.push(StepKind::User);
    }
    steps.push(StepKind::Stop);
    if !migration.mounts.is_empty() {
        steps.push(StepKind::Ownership);
    }
    steps.extend([StepKind::Recreate, StepKind::Verify]);
    steps
}

/// Every step of the unit in the order it runs, as (member, kind).
fn sequence(members: &[(String, Migration)]) -> Vec<(usize, StepKind)> {
    const ORDER: [StepKind; 6] = [
        StepKind::Backup,
        StepKind::User,
        StepKind::Stop,
        StepKind::Ownership,
        StepKind::Recreate,
        StepKind::Verify,
    ];
    let mut out = Vec::new();
    for kind in ORDER {
        let mut of_kind: Vec<usize> = (0..members.len())
            .filter(|i| kinds(&members[*i].1).contains(&kind))
            .collect();
        if kind == StepKind::Stop {
            of_kind.reverse();
        }
        out.extend(of_kind.into_iter().map(|i| (i, kind)));
    }
    out
}

fn migration_of(c: &ContainerRun) -> Option<Migration> {
    match &c.plan.action {
        Action::Migrate(m) => Some(m.clone()),
        _ => None,
    }
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

struct Step<'a> {
    key: &'a str,
    kind: StepKind,
    migration: &'a Migration,
    /// The unit's members, by name (the recreate lets them follow).
    together: &'a [String],
}

/// One step of one member: skipped when done, reconciled when the
/// controller stopped mid-step, journaled and asked otherwise. False: the
/// step failed (or had failed, or its undo had begun) and the unit must be
/// rolled back.
async fn run_step(
    ctx: &Arc<RunCtx>,
    step: &Step<'_>,
    agent_journal: &mut Option<std::collections::HashSet<String>>,
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
            // The controller stopped between the intent and the outcome:
            // what does the agent's own journal say?
            if agent_journal.is_none() {
                *agent_journal = ctx
                    .call(&host.name, ctx.call_deadline(&host.name), || {
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
        // Its undo had begun: finish putting it back.
        Some(_) => return Ok(false),
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
        migration: step.migration,
        target: c.target.or(step.migration.target.user().known_ids()),
        together: step.together,
    };
    let progress_draft = Draft::container(&c, Some(kind), EventKind::StepProgress, "");
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
            calls::step(&ctx.pool, &host, &call, &on_progress)
        })
        .await;
    let agent_ms = call_started.elapsed().as_millis() as u64;
    let after_call = Instant::now();
    match result {
        Ok(reply) => {
            let made = reply.made;
            let downtime = (kind == StepKind::Verify).then(|| outcomes::downtime(&reply.outcome));
            let left_alone =
                (kind == StepKind::Ownership).then(|| outcomes::left_alone(&reply.outcome));
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
            ctx.record_overhead((before_call + after_call.elapsed()).as_micros() as u64);
            // Said once, where the operator follows the run.
            if let Some(line) = left_alone.as_ref().and_then(outcomes::left_alone_line) {
                ctx.emit(Draft::container(&c, Some(kind), EventKind::Warning, line))?;
            }
            fault::point(&format!("controller:after-done:{}", kind.as_str()));
            Ok(true)
        }
        Err(error) => {
            let message = match &error {
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
            Ok(false)
        }
    }
}

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
    let mut members: Vec<(String, Migration)> = Vec::new();
    // A retry of what is already waiting to be put back stays quiet (its
    // state, events and the audit log say so once, not every attempt).
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
    let Some((first, _)) = members.first() else {
        return Ok(true);
    };
    let host = ctx.host(&ctx.container(first).map(|c| c.host).unwrap_or_default());
    let reconcile_failed = |message: String| -> Result<(), ControllerError> {
        for (key, _) in &members {
            let quiet = retrying.contains(key);
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
    };
    // An agent already found away shares one grace across these calls.
    let known = match ctx
        .call(&host.name, ctx.call_deadline(&host.name), || {
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
    for (member, kind) in sequence(&members).into_iter().rev() {
        let key = &members[member].0;
        let Some(record) = ctx.container(key).and_then(|c| c.step(kind).cloned()) else {
            continue;
        };
        if record.status == StepStatus::Undone {
            continue;
        }
        if !known.contains(&record.id) {
            mark_undone(
                ctx,
                key,
                &record,
                "never reached the agent: nothing to undo",
            )?;
            continue;
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
                calls::undo(&ctx.pool, &host, &ctx.agent_run, &record.id)
            })
            .await
        {
            Ok(reply) => {
                let said = if kind == StepKind::Ownership {
                    outcomes::undone_line(&reply.outcome)
                } else {
                    "undone".to_string()
                };
                mark_undone(ctx, key, &record, &said)?
            }
            Err(e) => {
                ctx.update_container(key, |c| {
                    if let Some(s) = c.steps.iter_mut().find(|s| s.id == record.id) {
                        s.status = StepStatus::UndoFailed;
                        s.error = Some(e.to_string());
                    }
                    None
                })?;
                reconcile_failed(format!("undo of the {} step failed: {e}", kind.as_str()))?;
                return Ok(false);
            }
        }
    }
    for (key, _) in &members {
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

/// `RUN host/container`: what an audit-log line about a container names.
fn audit_target(ctx: &RunCtx, c: &ContainerRun) -> String {
    format!("{} {}/{}", ctx.id, c.host, c.plan.name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::target::{Target, TargetUser};

    fn migration(user: bool, mounts: bool) -> Migration {
        let ids = fleet_core::target::Ids::new(1000, 1000).unwrap();
        let user = if user {
            TargetUser::Dedicated {
                name: "svc".into(),
                uid: None,
                gid: None,
            }
        } else {
            TargetUser::Explicit { ids }
        };
        Migration {
            target: Target::InPlace { user },
            from_ids: vec![0],
            mounts: if mounts {
                vec![crate::plan::MountPlan {
                    destination: "/d".into(),
                    source: "/s".into(),
                    entries: 0,
                    changing: 0,
                    bytes: 0,
                    partial: false,
                    left_alone: Vec::new(),
                    left_alone_count: 0,
                }]
            } else {
                Vec::new()
            },
            backup_bytes: 0,
            hooks: Vec::new(),
            probe: None,
            min_healthy_secs: 0,
            deadline_secs: 0,
            retention_days: 0,
            expected_downtime_ms: 0,
            host_id_collisions: Vec::new(),
            instead_of: None,
            runtime_dirs: Vec::new(),
            layer_loss_allowed: Vec::new(),
            engine_notes: Vec::new(),
        }
    }

    #[test]
    fn a_group_stops_dependents_first_and_recreates_their_partner_first() {
        // 0 is pointed at by 1 (plan order: what is pointed at first).
        let members = vec![
            ("net".to_string(), migration(true, true)),
            ("sidecar".to_string(), migration(false, false)),
        ];
        use StepKind::*;
        assert_eq!(
            sequence(&members),
            [
                (0, Backup),
                (1, Backup),
                (0, User),
                (1, Stop),
                (0, Stop),
                (0, Ownership),
                (0, Recreate),
                (1, Recreate),
                (0, Verify),
                (1, Verify),
            ]
        );
        // Alone, a container's steps are the runbook's.
        let alone = vec![("web".to_string(), migration(true, false))];
        let kinds: Vec<StepKind> = sequence(&alone).into_iter().map(|(_, k)| k).collect();
        assert_eq!(kinds, [Backup, User, Stop, Recreate, Verify]);
    }
}
