//! Linked groups: containers that share namespaces (network, pid, ipc),
//! VolumesFrom or a mounted directory move as one. A group is the
//! transitive closure of those links, ordered so what is joined comes
//! first; a member that cannot move blocks the rest, and a shared mount
//! has one owner.

use std::collections::{BTreeMap, BTreeSet};

use fleet_core::audit::{ContainerReport, HostReport};
use fleet_core::plan::{Action, ContainerPlan};
use fleet_core::target::Ids;

/// A partner left out of the selection would be broken by the move (or
/// have its files change owner under it): a container linked to one, or
/// sharing a mount with one, is refused. `containers` are the plans of
/// `reports` (the selected containers of `report`), in the same order.
pub(super) fn refuse_left_out(
    report: &HostReport,
    reports: &[&ContainerReport],
    containers: &mut [ContainerPlan],
) {
    for (c, plan) in reports.iter().zip(containers.iter_mut()) {
        let left_out = |name: &str| !reports.iter().any(|r| r.name == name);
        let mut missing: Vec<&str> = c
            .linked
            .iter()
            .map(String::as_str)
            .filter(|n| left_out(n))
            .collect();
        missing.extend(
            report
                .containers
                .iter()
                .filter(|other| left_out(&other.name) && shares_a_mount(c, other))
                .map(|other| other.name.as_str()),
        );
        missing.sort();
        missing.dedup();
        if !missing.is_empty() && matches!(plan.action, Action::Migrate(_)) {
            plan.action = Action::Refused {
                reasons: vec![format!(
                    "linked with {} (shared namespaces or volumes), which this plan leaves out: they move together; select them too (--container)",
                    missing.join(", ")
                )],
            };
        }
    }
}

/// The connected components of `linked` and of shared mounts (every
/// container is in one), each
/// as (index, depth): a container's depth is one more than the deepest it
/// points at, so sorting by depth recreates what is pointed at first.
/// Members are sorted by (depth, name); the first is the group's leader.
pub(super) fn linked_groups(reports: &[&ContainerReport]) -> Vec<Vec<(usize, usize)>> {
    let index: BTreeMap<&str, usize> = reports
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut component = vec![usize::MAX; reports.len()];
    let mut groups = Vec::new();
    for start in 0..reports.len() {
        if component[start] != usize::MAX {
            continue;
        }
        let id = groups.len();
        let mut members = vec![start];
        component[start] = id;
        let mut next = 0;
        while next < members.len() {
            let current = members[next];
            next += 1;
            let linked = reports[current]
                .linked
                .iter()
                .filter_map(|name| index.get(name.as_str()).copied());
            let sharing =
                (0..reports.len()).filter(|j| shares_a_mount(reports[current], reports[*j]));
            for j in linked.chain(sharing).collect::<Vec<_>>() {
                if component[j] == usize::MAX {
                    component[j] = id;
                    members.push(j);
                }
            }
        }
        groups.push(members);
    }
    let depth_of = |i: usize| {
        // Longest chain of `depends_on`, bounded so a cycle cannot loop.
        let mut depth = 0;
        let mut frontier = BTreeSet::from([i]);
        while depth < reports.len() {
            let deeper: BTreeSet<usize> = frontier
                .iter()
                .flat_map(|f| reports[*f].depends_on.iter())
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect();
            if deeper.is_empty() {
                break;
            }
            frontier = deeper;
            depth += 1;
        }
        depth
    };
    groups
        .into_iter()
        .map(|members| {
            let mut members: Vec<(usize, usize)> =
                members.into_iter().map(|i| (i, depth_of(i))).collect();
            members.sort_by(|a, b| (a.1, &reports[a.0].name).cmp(&(b.1, &reports[b.0].name)));
            members
        })
        .collect()
}

/// Two containers mounting the same host directory or volume: whoever owns
/// its files decides for both, so they move together too.
fn shares_a_mount(a: &ContainerReport, b: &ContainerReport) -> bool {
    let data = |c: &ContainerReport| -> Vec<String> {
        c.mounts
            .iter()
            .filter(|m| (m.kind == "bind" || m.kind == "volume") && !m.source.is_empty())
            .map(|m| m.source.clone())
            .collect()
    };
    a.id != b.id && data(a).iter().any(|s| data(b).contains(s))
}

/// A group moves as one: every member names the others (in order), a
/// member that does not migrate blocks the rest, and a mount shared by
/// members (VolumesFrom, the same host path) has one owner: they must
/// share a known target, and the mount is changed once, by the first.
pub(super) fn group_rules(containers: &mut [ContainerPlan], members: &[usize]) {
    let names: Vec<String> = members
        .iter()
        .map(|m| containers[*m].name.clone())
        .collect();
    for m in members {
        let own = containers[*m].name.clone();
        containers[*m].group = names.iter().filter(|n| **n != own).cloned().collect();
    }
    let mut blockers: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let c = &containers[*m];
            let why = match &c.action {
                Action::Migrate(_) => return None,
                Action::Exempt { .. } => "exempt",
                Action::Refused { .. } => "refused",
                Action::Skip { .. } => "not migrated (it needs no change)",
            };
            Some(format!("{} is {why}", c.name))
        })
        .collect();
    let mut owners: BTreeMap<String, (String, Option<Ids>)> = BTreeMap::new();
    let mut shared: Vec<(usize, String)> = Vec::new();
    for m in members {
        let Action::Migrate(migration) = &containers[*m].action else {
            continue;
        };
        let target = migration.target.user().known_ids();
        for mount in &migration.mounts {
            match owners.get(&mount.source) {
                None => {
                    owners.insert(mount.source.clone(), (containers[*m].name.clone(), target));
                }
                Some((first, first_target)) => {
                    if target.is_none() || *first_target != target {
                        blockers.push(format!(
                            "{} and {first} share {}, whose files can have only one owner: give both the same `strategy = \"UID:GID\"` in the policy",
                            containers[*m].name, mount.source
                        ));
                    }
                    shared.push((*m, mount.source.clone()));
                }
            }
        }
    }
    if !blockers.is_empty() {
        for m in members {
            if matches!(containers[*m].action, Action::Migrate(_)) {
                containers[*m].action = Action::Refused {
                    reasons: vec![format!(
                        "linked with {} (shared namespaces or volumes), which move together or not at all: {}",
                        containers[*m].group.join(", "),
                        blockers.join("; ")
                    )],
                };
            }
        }
        return;
    }
    for (m, source) in shared {
        if let Action::Migrate(migration) = &mut containers[m].action {
            migration.mounts.retain(|mount| mount.source != source);
        }
    }
}
