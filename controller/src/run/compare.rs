//! A saved plan against the same plan made again from its basis: what may
//! differ (the audit's estimates, which move with the data), what makes it
//! stale (a container changed or went away), and what says the file was
//! edited. The run is built from the plan made again, never from the file.

use std::collections::HashSet;

use serde_json::Value;

use crate::error::ControllerError;
use crate::plan::{Action, ContainerPlan, HostPlan, Plan};
use crate::policy::glob;

/// The differences listed in one refusal; more are counted.
const SHOWN: usize = 4;

/// The plan to run: `fresh` (made now from the saved plan's own basis)
/// restricted to the saved plan's containers, if it decides what the saved
/// plan says for each of them, in the same order.
pub fn compare(
    saved: &Plan,
    fresh: &[HostPlan],
    globs: &[String],
) -> Result<Plan, ControllerError> {
    let mut hosts = Vec::new();
    let mut seen = HashSet::new();
    for host in &saved.hosts {
        if !seen.insert(host.host.as_str()) {
            return Err(edited(format!("host {} appears twice", host.host)));
        }
        let now = fresh.iter().find(|h| h.host == host.host);
        let now = match now.map(|h| (h, &h.error)) {
            Some((h, None)) => h,
            Some((_, Some(error))) => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "cannot check the saved plan against host {}: {error}; bring its agent back and apply the plan again",
                    host.host
                )));
            }
            None => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "cannot check the saved plan against host {}: it was not planned again",
                    host.host
                )));
            }
        };
        hosts.push(compare_host(host, now, globs)?);
    }
    Ok(Plan {
        version: saved.version,
        created_unix_ms: saved.created_unix_ms,
        hosts,
    })
}

fn compare_host(
    saved: &HostPlan,
    now: &HostPlan,
    globs: &[String],
) -> Result<HostPlan, ControllerError> {
    let mut ids = HashSet::new();
    let mut kept: Vec<ContainerPlan> = Vec::new();
    for c in &saved.containers {
        let at = format!("container {} on host {}", c.name, saved.host);
        if !ids.insert(c.id.as_str()) {
            return Err(edited(format!("{at} appears twice")));
        }
        if !globs.is_empty() && !globs.iter().any(|g| glob(g, &c.name)) {
            return Err(edited(format!(
                "{at} is not among the containers it was planned for (--container {})",
                globs.join(" --container ")
            )));
        }
        let migrates = matches!(c.action, Action::Migrate(_));
        let Some(current) = now.containers.iter().find(|n| n.id == c.id) else {
            if migrates {
                return Err(stale(&at, "it no longer exists".into()));
            }
            // Nothing was to be done to it, and nothing will be.
            continue;
        };
        if migrates || matches!(current.action, Action::Migrate(_)) {
            check_container(&at, c, current)?;
        }
        kept.push(current.clone());
    }
    check_order(saved, &kept)?;
    check_groups(saved, now)?;
    kept.sort_by_key(|c| c.order);
    Ok(HostPlan {
        host: saved.host.clone(),
        address: now.address.clone(),
        error: None,
        containers: kept,
    })
}

/// The same container, decided the same way.
fn check_container(
    at: &str,
    saved: &ContainerPlan,
    now: &ContainerPlan,
) -> Result<(), ControllerError> {
    if now.fingerprint != saved.fingerprint {
        let short = |f: &str| f.chars().take(12).collect::<String>();
        return Err(stale(
            at,
            format!(
                "its configuration changed (fingerprint {} → {})",
                short(&saved.fingerprint),
                short(&now.fingerprint)
            ),
        ));
    }
    if now.current != saved.current {
        return Err(stale(
            at,
            format!(
                "who it runs as changed ({} → {})",
                saved.current, now.current
            ),
        ));
    }
    if now.group != saved.group {
        return Err(stale(
            at,
            format!(
                "the containers it moves with changed ([{}] → [{}])",
                saved.group.join(", "),
                now.group.join(", ")
            ),
        ));
    }
    let accounts = |c: &ContainerPlan| match &c.action {
        Action::Migrate(m) => (m.host_id_collisions.clone(), m.instead_of.clone()),
        _ => (Vec::new(), None),
    };
    if accounts(now) != accounts(saved) {
        // Reviewed with the plan: a collision that appeared since (or went
        // away) is the host changing under it, not an estimate.
        let said = |c: &ContainerPlan| match accounts(c) {
            (found, _) if !found.is_empty() => crate::plan::host_ids::describe(&found),
            (_, Some(instead)) => format!("a dedicated account instead of {instead}"),
            _ => "no collision".into(),
        };
        return Err(stale(
            at,
            format!(
                "the host's accounts holding its target ids changed ({} → {})",
                said(saved),
                said(now)
            ),
        ));
    }
    if std::mem::discriminant(&now.action) != std::mem::discriminant(&saved.action) {
        return Err(edited(format!(
            "{at}: the file says {}, but its policy says {} now",
            verdict(&saved.action),
            verdict(&now.action)
        )));
    }
    let mut found = Vec::new();
    differences("", &decided(saved)?, &decided(now)?, &mut found);
    if found.is_empty() {
        return Ok(());
    }
    let more = found.len().saturating_sub(SHOWN);
    found.truncate(SHOWN);
    let mut listed = found.join("; ");
    if more > 0 {
        listed.push_str(&format!("; and {more} more"));
    }
    Err(edited(format!("{at}: {listed}")))
}

/// Within a host, the saved containers in the order the policy gives now.
fn check_order(saved: &HostPlan, kept: &[ContainerPlan]) -> Result<(), ControllerError> {
    let mut by_file: Vec<&ContainerPlan> = saved
        .containers
        .iter()
        .filter(|c| kept.iter().any(|k| k.id == c.id))
        .collect();
    by_file.sort_by_key(|c| c.order);
    let mut by_policy: Vec<&ContainerPlan> = kept.iter().collect();
    by_policy.sort_by_key(|c| c.order);
    for (position, (file, policy)) in by_file.iter().zip(&by_policy).enumerate() {
        if file.id != policy.id {
            return Err(edited(format!(
                "on host {} the file moves {} {}, but its policy moves {} there",
                saved.host,
                file.name,
                ordinal(position + 1),
                policy.name
            )));
        }
    }
    Ok(())
}

/// A migrating container's group is all in the saved plan, or it would be
/// split: linked containers move together or not at all.
fn check_groups(saved: &HostPlan, now: &HostPlan) -> Result<(), ControllerError> {
    let migrating = |c: &&ContainerPlan| matches!(c.action, Action::Migrate(_));
    for c in saved.containers.iter().filter(migrating) {
        for member in &c.group {
            let moves_now = now
                .containers
                .iter()
                .filter(migrating)
                .any(|n| &n.name == member);
            let in_file = saved
                .containers
                .iter()
                .filter(migrating)
                .any(|s| &s.name == member);
            if moves_now && !in_file {
                return Err(edited(format!(
                    "container {} on host {} moves with {member}, which the file leaves out: they move together or not at all",
                    c.name, saved.host
                )));
            }
        }
    }
    Ok(())
}

fn verdict(action: &Action) -> String {
    match action {
        Action::Migrate(m) => format!("migrate ({})", m.target),
        Action::Exempt { reason } => format!("exempt ({reason})"),
        Action::Refused { reasons } => format!("refused ({})", reasons.join("; ")),
        Action::Skip { reason } => format!("skip ({reason})"),
    }
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "first".into(),
        2 => "second".into(),
        3 => "third".into(),
        n => format!("{n}th"),
    }
}

/// What must be the same: everything but the position (compared on its
/// own) and the audit's estimates, which move with the data (entry counts,
/// sizes, the expected downtime); the run uses today's.
fn decided(c: &ContainerPlan) -> Result<Value, ControllerError> {
    let mut value = serde_json::to_value(c)?;
    if let Some(top) = value.as_object_mut() {
        top.remove("order");
    }
    if let Some(action) = value.get_mut("action").and_then(Value::as_object_mut) {
        // Estimates, and what the host is like today (collisions are
        // checked above; runtime directories the agent decides again at
        // the recreate, from the container as it is then).
        for estimate in [
            "backup_bytes",
            "expected_downtime_ms",
            "host_id_collisions",
            "instead_of",
            "runtime_dirs",
        ] {
            action.remove(estimate);
        }
        for mount in action
            .get_mut("mounts")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(mount) = mount.as_object_mut() {
                for estimate in [
                    "entries",
                    "changing",
                    "bytes",
                    "partial",
                    "left_alone",
                    "left_alone_count",
                ] {
                    mount.remove(estimate);
                }
            }
        }
    }
    Ok(value)
}

/// Every leaf where the file and the plan made now differ, by path.
fn differences(path: &str, file: &Value, now: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (file, now) {
        (Value::Object(f), Value::Object(n)) => {
            let mut keys: Vec<&String> = f.keys().chain(n.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let missing = Value::Null;
                differences(
                    &join(key),
                    f.get(key).unwrap_or(&missing),
                    n.get(key).unwrap_or(&missing),
                    out,
                );
            }
        }
        (Value::Array(f), Value::Array(n)) if f.len() == n.len() => {
            for (i, (f, n)) in f.iter().zip(n).enumerate() {
                differences(&format!("{path}[{i}]"), f, n, out);
            }
        }
        _ if file == now => {}
        _ => out.push(format!(
            "{path} is {} in the file, but its policy gives {} now",
            shown(file),
            shown(now)
        )),
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn stale(at: &str, why: String) -> ControllerError {
    ControllerError::FailedPrecondition(format!(
        "saved plan is stale: {at}: {why} since the plan was made; nothing was changed: make a new one with `fleetctl plan --out plan.json`"
    ))
}

fn edited(what: String) -> ControllerError {
    ControllerError::FailedPrecondition(format!(
        "saved plan was edited: {what}; nothing was changed: a saved plan runs only as `fleetctl plan --out` wrote it, so make a new one and review it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Migration, MountPlan};
    use fleet_core::target::{Target, TargetUser};
    use std::num::NonZeroU32;

    fn migration(uid: u32) -> Action {
        Action::Migrate(Migration {
            target: Target::InPlace {
                user: TargetUser::Dedicated {
                    name: "svc-web".into(),
                    uid: NonZeroU32::new(uid),
                    gid: NonZeroU32::new(uid),
                },
            },
            from_ids: vec![0],
            mounts: vec![MountPlan {
                destination: "/data".into(),
                source: "/srv/web".into(),
                entries: 10,
                changing: 10,
                bytes: 100,
                partial: false,
                left_alone: Vec::new(),
                left_alone_count: 0,
            }],
            backup_bytes: 100,
            hooks: Vec::new(),
            probe: None,
            min_healthy_secs: 5,
            deadline_secs: 60,
            retention_days: 14,
            expected_downtime_ms: 6_000,
            host_id_collisions: Vec::new(),
            instead_of: None,
            runtime_dirs: Vec::new(),
            layer_loss_allowed: Vec::new(),
            engine_notes: Vec::new(),
        })
    }

    fn container(name: &str, order: u32, action: Action) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            id: format!("{name}-id"),
            image: "busybox".into(),
            fingerprint: format!("{name}-fp"),
            current: "root".into(),
            action,
            class: "stateless".into(),
            order,
            group: Vec::new(),
        }
    }

    fn host(containers: Vec<ContainerPlan>) -> HostPlan {
        HostPlan {
            host: "h1".into(),
            address: "127.0.0.1:1".into(),
            error: None,
            containers,
        }
    }

    fn plan(containers: Vec<ContainerPlan>) -> Plan {
        Plan {
            version: 2,
            created_unix_ms: 1,
            hosts: vec![host(containers)],
        }
    }

    fn skip(name: &str, order: u32) -> ContainerPlan {
        container(
            name,
            order,
            Action::Skip {
                reason: "already runs as uid 1000".into(),
            },
        )
    }

    fn web_then_db() -> Vec<ContainerPlan> {
        vec![
            container("web", 1, migration(61000)),
            container("db", 2, migration(61001)),
        ]
    }

    fn refusal(saved: &Plan, now: &[ContainerPlan]) -> String {
        compare(saved, &[host(now.to_vec())], &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_same_plan_made_again_applies_with_todays_estimates() {
        let now = web_then_db();
        let mut saved = plan(now.clone());
        // The data grew since: estimates may differ, decisions may not.
        if let Action::Migrate(m) = &mut saved.hosts[0].containers[0].action {
            m.mounts[0].entries = 3;
            m.backup_bytes = 1;
            m.expected_downtime_ms = 1;
        }
        let run = compare(&saved, &[host(now.clone())], &[]).unwrap();
        assert_eq!(run.hosts[0].containers, now);
    }

    #[test]
    fn an_edited_target_is_refused_naming_the_container_and_the_difference() {
        let now = vec![container("web", 1, migration(61000))];
        for (field, value, needle) in [
            (
                "uid",
                1,
                "action.target.user.uid is 1 in the file, but its policy gives 61000 now",
            ),
            (
                "gid",
                1,
                "action.target.user.gid is 1 in the file, but its policy gives 61000 now",
            ),
        ] {
            let mut saved = serde_json::to_value(plan(now.clone())).unwrap();
            let user = &mut saved["hosts"][0]["containers"][0]["action"]["target"]["user"];
            // An edit to root does not even read: the target's type has no
            // root in it.
            user[field] = 0.into();
            assert!(serde_json::from_value::<Plan>(saved.clone()).is_err());
            saved["hosts"][0]["containers"][0]["action"]["target"]["user"][field] = value.into();
            let saved: Plan = serde_json::from_value(saved).unwrap();
            let e = refusal(&saved, &now);
            assert!(
                e.starts_with("saved plan was edited: container web on host h1: ")
                    && e.contains(needle)
                    && e.contains("nothing was changed"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_container_added_to_the_file_is_refused() {
        // The policy says `extra` has nothing to do; the file says migrate.
        let now = vec![container("web", 1, migration(61000)), skip("extra", 2)];
        let mut saved = plan(now.clone());
        saved.hosts[0].containers[1].action = migration(61002);
        let e = refusal(&saved, &now);
        assert!(
            e.contains("container extra on host h1: the file says migrate (dedicated user svc-web), but its policy says skip (already runs as uid 1000) now"),
            "{e}"
        );
        // Twice the same container.
        let mut saved = plan(now.clone());
        saved.hosts[0].containers.push(now[0].clone());
        assert!(refusal(&saved, &now).contains("container web on host h1 appears twice"));
        // One its --container globs never chose.
        let saved = plan(now.clone());
        let e = compare(&saved, &[host(now.clone())], &["web".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("container extra on host h1 is not among the containers it was planned for (--container web)"), "{e}");
    }

    #[test]
    fn a_changed_or_vanished_container_makes_the_plan_stale() {
        let saved = plan(vec![container("web", 1, migration(61000)), skip("old", 2)]);
        let mut changed = container("web", 1, migration(61000));
        changed.fingerprint = "other".into();
        let e = refusal(&saved, &[changed]);
        assert!(
            e.starts_with(
                "saved plan is stale: container web on host h1: its configuration changed"
            ),
            "{e}"
        );
        assert!(refusal(&saved, &[]).contains("container web on host h1: it no longer exists"));
        // A vanished container with nothing to do is no reason to refuse.
        let run = compare(
            &saved,
            &[host(vec![container("web", 1, migration(61000))])],
            &[],
        )
        .unwrap();
        assert_eq!(run.hosts[0].containers.len(), 1);
    }

    #[test]
    fn a_host_account_that_took_a_target_id_since_makes_the_plan_stale() {
        use fleet_core::migration::{IdCollision, IdKind};
        let saved = plan(vec![container("web", 1, migration(61000))]);
        let mut now = container("web", 1, migration(61000));
        if let Action::Migrate(m) = &mut now.action {
            m.host_id_collisions = vec![IdCollision {
                kind: IdKind::Uid,
                id: 61000,
                owner: "backup".into(),
            }];
        }
        let e = refusal(&saved, &[now]);
        assert!(
            e.starts_with("saved plan is stale: container web on host h1: the host's accounts holding its target ids changed (no collision → uid 61000 is the host's user backup)"),
            "{e}"
        );
    }

    #[test]
    fn the_order_and_the_groups_are_the_policys() {
        let now = web_then_db();
        let mut saved = plan(now.clone());
        saved.hosts[0].containers[0].order = 2;
        saved.hosts[0].containers[1].order = 1;
        let e = refusal(&saved, &now);
        assert!(
            e.contains("on host h1 the file moves db first, but its policy moves web there"),
            "{e}"
        );
        let mut linked = now.clone();
        linked[0].group = vec!["db".into()];
        linked[1].group = vec!["web".into()];
        let mut saved = plan(linked.clone());
        saved.hosts[0].containers.remove(1);
        let e = refusal(&saved, &linked);
        assert!(
            e.contains("container web on host h1 moves with db, which the file leaves out"),
            "{e}"
        );
    }

    #[test]
    fn the_host_address_is_the_inventorys_not_the_files() {
        let now = vec![container("web", 1, migration(61000))];
        let mut saved = plan(now.clone());
        saved.hosts[0].address = "10.9.9.9:7443".into();
        let run = compare(&saved, &[host(now)], &[]).unwrap();
        assert_eq!(run.hosts[0].address, "127.0.0.1:1");
    }
}
