//! Policy → plan: for every selected container of every host, what it
//! becomes (or why not), in the order a careful runbook would move them:
//! stateless services first, then caches and queues, then databases (and
//! other containers with data); containers that share namespaces or
//! volumes move together.

pub mod class;
pub mod host_ids;
mod runtime;

use std::collections::BTreeMap;

use std::num::NonZeroU32;

use fleet_core::audit::{ContainerReport, HostReport, Severity, Verdict};
use fleet_core::target::{Ids, Target, TargetUser};

use crate::inventory::Host;
use crate::policy::{Decision, OnHostIdCollision, Policy, Strategy, Subject, glob};

pub use class::image_base;
use class::{class_of, class_rank};
pub use fleet_core::migration::MountPlan;
pub use fleet_core::plan::{Action, ContainerPlan, HostPlan, Migration, Plan};

/// What the planner is told to look at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Container name globs; all if empty.
    pub containers: Vec<String>,
    /// Plan pod members too (they are refused otherwise).
    pub include_pods: bool,
}

/// Reasons a container cannot be migrated safely, from the audit.
fn refusals(c: &ContainerReport, selection: &Selection) -> Vec<String> {
    let mut out = Vec::new();
    let has = |check: &str| c.findings.iter().any(|f| f.check == check);
    if has("5.5") {
        out.push("privileged: it needs more than a user change; migrate it by hand or exempt it with a reason".into());
    }
    if has("5.32") {
        out.push(
            "it has the engine's socket: a non-root user with that socket is still root".into(),
        );
    }
    if c.findings
        .iter()
        .any(|f| f.check == "5.6" && f.severity >= Severity::High)
    {
        out.push("a sensitive host directory is mounted read-write".into());
    }
    if c.auto_remove {
        out.push("AutoRemove: it vanishes when stopped, and with it the way back".into());
    }
    if let Some(pod) = &c.pod
        && !selection.include_pods
    {
        out.push(format!(
            "member of pod {pod}: pods move as a whole (plan with --include-pods)"
        ));
    }
    out
}

/// The image's own non-root user: the one its entrypoint drops to, else a
/// user of its passwd named after the image.
fn image_user(c: &ContainerReport) -> Option<(u32, u32, String)> {
    if let Verdict::StartsAsRootDropsTo { uid } = c.identity.verdict {
        let user = c.users.iter().find(|u| u.uid == uid);
        return Some((
            uid,
            user.map_or(uid, |u| u.gid),
            user.map_or(format!("uid {uid}"), |u| u.name.clone()),
        ));
    }
    let base = image_base(&c.image);
    c.users
        .iter()
        .find(|u| u.name == base || base.starts_with(&u.name) && u.name.len() >= 4)
        .map(|u| (u.uid, u.gid, u.name.clone()))
}

/// The user a strategy gives. The policy refused ids of 0 at load; the
/// image's user is checked here (its group can be root's).
fn target_user(
    c: &ContainerReport,
    decision: &Decision,
    service: &str,
) -> Result<TargetUser, Vec<String>> {
    let image = |(uid, gid, name): (u32, u32, String)| {
        Ids::new(uid, gid)
            .map(|ids| TargetUser::ImageUser {
                name: name.clone(),
                ids,
            })
            .map_err(|why| {
                vec![format!(
                    "the image's user {name} cannot be the target: {why}"
                )]
            })
    };
    let dedicated =
        |name: Option<String>, uid: Option<u32>, gid: Option<u32>| TargetUser::Dedicated {
            name: name.unwrap_or_else(|| fleet_core::names::derive_user_name(service)),
            uid: uid.and_then(NonZeroU32::new),
            gid: gid.and_then(NonZeroU32::new),
        };
    match &decision.strategy {
        Some(Strategy::Explicit { uid, gid }) => Ids::new(*uid, *gid)
            .map(|ids| TargetUser::Explicit { ids })
            .map_err(|why| vec![why.to_string()]),
        Some(Strategy::Dedicated { name, uid, gid }) => Ok(dedicated(name.clone(), *uid, *gid)),
        Some(Strategy::ImageUser) => match image_user(c) {
            Some(user) => image(user),
            None => Err(vec![
                "strategy image-user, but the image has no non-root user of its own".into(),
            ]),
        },
        None => match image_user(c) {
            Some(user) => image(user),
            None => Ok(dedicated(None, None, None)),
        },
    }
}

fn migration(
    c: &ContainerReport,
    host: &HostReport,
    decision: &Decision,
) -> Result<Migration, Vec<String>> {
    let service = c.compose_service.clone().unwrap_or_else(|| c.name.clone());
    let mut user = target_user(c, decision, &service)?;
    let (uid, gid) = match &user {
        TargetUser::Explicit { ids } | TargetUser::ImageUser { ids, .. } => {
            (Some(ids.uid()), Some(ids.gid()))
        }
        TargetUser::Dedicated { uid, gid, .. } => {
            (uid.map(NonZeroU32::get), gid.map(NonZeroU32::get))
        }
    };
    let mut host_id_collisions = host_ids::collisions(host, uid, gid);
    let mut instead_of = None;
    let checked = !matches!(decision.on_host_id_collision, OnHostIdCollision::Warn);
    if checked && (uid.is_some() || gid.is_some()) && !host_ids::known(host) {
        // Fail closed: a refusal asked for cannot be skipped unseen.
        return Err(vec![format!(
            "the host's accounts are unknown (its agent reported none{}), so on_host_id_collision = \"{}\" cannot check the target ids; fix what the agent says, or give the container free ids",
            if host.warnings.is_empty() {
                String::new()
            } else {
                format!(": {}", host.warnings.join("; "))
            },
            decision.on_host_id_collision.as_str()
        )]);
    }
    if !host_id_collisions.is_empty() {
        let found = host_ids::describe(&host_id_collisions);
        match decision.on_host_id_collision {
            OnHostIdCollision::Warn => {}
            OnHostIdCollision::Refuse => {
                return Err(vec![format!(
                    "its target ids belong to someone else on the host ({found}): without a user namespace the service would share their files (on_host_id_collision = \"refuse\"); give it free ids (strategy = \"UID:GID\") or a dedicated account (on_host_id_collision = \"dedicated\")"
                )]);
            }
            OnHostIdCollision::Dedicated => {
                let ids = match (&user, user.known_ids()) {
                    (TargetUser::Explicit { .. }, _) | (_, None) => String::new(),
                    (_, Some(ids)) => format!(" ({ids})"),
                };
                instead_of = Some(format!(
                    "{user}{ids}: {found} (on_host_id_collision = \"dedicated\")"
                ));
                let name = user.to_create().map_or_else(
                    || fleet_core::names::derive_user_name(&service),
                    str::to_string,
                );
                if host.host_users.iter().any(|a| a.name == name) {
                    return Err(vec![format!(
                        "its target ids belong to someone else on the host ({found}), and the dedicated account {name} exists already with them: name another account (user = \"...\") for on_host_id_collision = \"dedicated\""
                    )]);
                }
                user = TargetUser::Dedicated {
                    name,
                    uid: None,
                    gid: None,
                };
                host_id_collisions.clear();
            }
        }
    }
    let from_ids = vec![0];
    let mounts: Vec<MountPlan> = c
        .mounts
        .iter()
        .filter(|m| m.kind == "bind" || m.kind == "volume")
        .map(|m| MountPlan {
            destination: m.destination.clone(),
            source: m.source.clone(),
            entries: m.ownership.entries,
            // Root's ids are what move: the walk counted what the remap
            // changes by its own rules (not device nodes, not hard links
            // with names outside the tree).
            changing: m.ownership.root_changing,
            bytes: m.ownership.bytes,
            partial: m.ownership.bound_hit.is_some(),
            left_alone: m.ownership.left_alone.clone(),
            left_alone_count: m.ownership.left_alone_count,
        })
        .collect();
    let changing: u64 = mounts.iter().map(|m| m.changing).sum();
    let backup_bytes = mounts.iter().map(|m| m.bytes).sum();
    // Stop (its own timeout at worst), the ownership walk (~200k entries/s
    // measured here), create and start, then the health gate.
    let expected_downtime_ms =
        1_000 + changing * 1_000 / 200_000 + decision.min_healthy_secs * 1_000;
    let known = user.known_ids();
    Ok(Migration {
        target: Target::InPlace { user },
        from_ids,
        mounts,
        backup_bytes,
        hooks: decision.hooks.clone(),
        probe: decision.probe.clone(),
        min_healthy_secs: decision.min_healthy_secs,
        deadline_secs: decision.deadline_secs,
        retention_days: decision.retention_days,
        expected_downtime_ms,
        host_id_collisions,
        instead_of,
        runtime_dirs: runtime::planned(c, known),
        layer_loss_allowed: c.layer_loss.clone(),
        engine_notes: c.engine_notes.clone(),
    })
}

fn plan_container(
    c: &ContainerReport,
    host: &Host,
    report: &HostReport,
    policy: &Policy,
    selection: &Selection,
) -> ContainerPlan {
    let decision = policy.decide(&Subject {
        name: &c.name,
        image: &c.image,
        compose_project: c.compose_project.as_deref(),
        compose_service: c.compose_service.as_deref(),
        host,
    });
    let action = if let Some(reason) = &decision.exempt {
        Action::Exempt {
            reason: reason.clone(),
        }
    } else {
        match &c.identity.verdict {
            Verdict::NonRoot => Action::Skip {
                reason: format!("already runs as uid {}", c.identity.uid.unwrap_or(0)),
            },
            Verdict::RootlessEngine { host_uid } | Verdict::UsernsRemapped { host_uid } => {
                Action::Skip {
                    reason: format!("root only inside a user namespace (host uid {host_uid})"),
                }
            }
            Verdict::Unknown { reason } => Action::Refused {
                reasons: vec![format!("its identity is unknown: {reason}")],
            },
            Verdict::Root | Verdict::StartsAsRootDropsTo { .. } => {
                let mut reasons = refusals(c, selection);
                if !c.layer_loss.is_empty() && !decision.allow_layer_loss {
                    reasons.push(fleet_core::migration::layer_loss_refusal(&c.layer_loss));
                }
                if !reasons.is_empty() {
                    Action::Refused { reasons }
                } else {
                    match migration(c, report, &decision) {
                        Ok(m) => Action::Migrate(m),
                        Err(reasons) => Action::Refused { reasons },
                    }
                }
            }
        }
    };
    ContainerPlan {
        name: c.name.clone(),
        id: c.id.clone(),
        image: c.image.clone(),
        fingerprint: c.config_fingerprint.clone(),
        current: c.identity.verdict.to_string(),
        action,
        class: decision
            .order
            .clone()
            .unwrap_or_else(|| class_of(c).to_string()),
        order: 0,
        group: Vec::new(),
    }
}

/// Plans one host: every selected container, ordered. Linked containers
/// (shared namespaces or volumes) form a group that moves as one: if any of
/// them cannot move, none does; within it a container comes after the ones
/// it points at; the group takes its members' latest class.
pub fn plan_host(
    host: &Host,
    report: &HostReport,
    policy: &Policy,
    selection: &Selection,
) -> HostPlan {
    let selected = |c: &&ContainerReport| {
        selection.containers.is_empty() || selection.containers.iter().any(|g| glob(g, &c.name))
    };
    let reports: Vec<&ContainerReport> = report.containers.iter().filter(selected).collect();
    let mut containers: Vec<ContainerPlan> = reports
        .iter()
        .map(|c| plan_container(c, host, report, policy, selection))
        .collect();
    // A partner left out of the selection would be broken by the move (or
    // have its files change owner under it).
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
    let groups = linked_groups(&reports);
    let mut position: BTreeMap<String, (u32, String, usize)> = BTreeMap::new();
    for group in &groups {
        let members: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
        if members.len() > 1 {
            group_rules(&mut containers, &members);
        }
        let rank = members
            .iter()
            .map(|m| class_rank(&containers[*m].class))
            .max()
            .unwrap_or(25);
        let class = members
            .iter()
            .map(|m| containers[*m].class.clone())
            .find(|c| class_rank(c) == rank)
            .unwrap_or_default();
        let leader = containers[members[0]].name.clone();
        for (i, depth) in group {
            containers[*i].class = class.clone();
            position.insert(containers[*i].name.clone(), (rank, leader.clone(), *depth));
        }
    }
    containers.sort_by(|a, b| {
        let key = |c: &ContainerPlan| {
            let (rank, leader, depth) = position.get(&c.name).cloned().unwrap_or_default();
            (rank, leader, depth, c.name.clone())
        };
        key(a).cmp(&key(b))
    });
    for (position, container) in containers.iter_mut().enumerate() {
        container.order = position as u32 + 1;
    }
    HostPlan {
        host: host.name.clone(),
        address: host.address.clone(),
        error: None,
        containers,
    }
}

/// The connected components of `linked` and of shared mounts (every
/// container is in one), each
/// as (index, depth): a container's depth is one more than the deepest it
/// points at, so sorting by depth recreates what is pointed at first.
/// Members are sorted by (depth, name); the first is the group's leader.
fn linked_groups(reports: &[&ContainerReport]) -> Vec<Vec<(usize, usize)>> {
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
        let mut frontier = std::collections::BTreeSet::from([i]);
        while depth < reports.len() {
            let deeper: std::collections::BTreeSet<usize> = frontier
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
fn group_rules(containers: &mut [ContainerPlan], members: &[usize]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::audit::MountReport;

    fn host() -> Host {
        Host {
            name: "h1".into(),
            address: "127.0.0.1:1".into(),
            labels: BTreeMap::new(),
            source: crate::inventory::HostSource::Config,
        }
    }

    fn root(name: &str, image: &str) -> ContainerReport {
        let mut c = ContainerReport {
            name: name.into(),
            id: format!("{name}-id"),
            image: image.into(),
            ..Default::default()
        };
        c.identity.verdict = Verdict::Root;
        c
    }

    fn plan(containers: Vec<ContainerReport>) -> HostPlan {
        let report = HostReport {
            containers,
            ..Default::default()
        };
        plan_host(&host(), &report, &Policy::default(), &Selection::default())
    }

    #[test]
    fn runbook_order_stateless_then_caches_then_databases() {
        let mut data = root("files", "busybox");
        data.mounts.push(MountReport {
            kind: "volume".into(),
            ..Default::default()
        });
        let p = plan(vec![
            root("db", "docker.io/library/postgres:16"),
            data,
            root("web", "nginx"),
            root("cache", "redis:7"),
        ]);
        let order: Vec<(&str, &str)> = p
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.class.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("web", "stateless"),
                ("cache", "cache"),
                ("db", "database"),
                ("files", "stateful")
            ]
        );
        assert_eq!(
            p.containers.iter().map(|c| c.order).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    fn link(c: &mut ContainerReport, to: &mut ContainerReport) {
        c.linked.push(to.name.clone());
        c.depends_on.push(to.name.clone());
        to.linked.push(c.name.clone());
    }

    fn volume(c: &mut ContainerReport, source: &str) {
        c.mounts.push(MountReport {
            kind: "volume".into(),
            source: source.into(),
            destination: "/data".into(),
            ..Default::default()
        });
    }

    fn names(p: &HostPlan) -> Vec<(&str, Vec<&str>)> {
        p.containers
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.group.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn linked_containers_move_together_or_not_at_all() {
        let (mut app, mut sidecar) = (root("app", "nginx"), root("sidecar", "busybox"));
        link(&mut sidecar, &mut app);
        sidecar.auto_remove = true;
        let p = plan(vec![app, sidecar]);
        for c in &p.containers {
            let Action::Refused { reasons } = &c.action else {
                panic!("{c:?}")
            };
            if c.name == "app" {
                assert!(reasons[0].contains("sidecar is refused"), "{reasons:?}");
            }
        }
    }

    #[test]
    fn a_chain_of_links_is_one_group_ordered_by_what_points_where() {
        // z-net <- m-app <- a-sidecar (a-sidecar uses m-app's network,
        // m-app uses z-net's), plus an unrelated database.
        let (mut net, mut app, mut sidecar) = (
            root("z-net", "busybox"),
            root("m-app", "busybox"),
            root("a-sidecar", "busybox"),
        );
        link(&mut app, &mut net);
        link(&mut sidecar, &mut app);
        let p = plan(vec![sidecar, app, net, root("db", "postgres")]);
        assert_eq!(
            names(&p),
            [
                ("z-net", vec!["m-app", "a-sidecar"]),
                ("m-app", vec!["z-net", "a-sidecar"]),
                ("a-sidecar", vec!["z-net", "m-app"]),
                ("db", vec![]),
            ]
        );
        assert!(
            p.containers
                .iter()
                .all(|c| matches!(c.action, Action::Migrate(_)))
        );
    }

    #[test]
    fn a_partner_already_non_root_or_left_out_blocks_the_group() {
        let (mut app, mut sidecar) = (root("app", "busybox"), root("sidecar", "busybox"));
        link(&mut sidecar, &mut app);
        sidecar.identity.verdict = Verdict::NonRoot;
        let p = plan(vec![app.clone(), sidecar]);
        let Action::Refused { reasons } = &p.containers[0].action else {
            panic!("{:?}", p.containers[0])
        };
        assert!(
            reasons[0].contains("sidecar is not migrated"),
            "{reasons:?}"
        );

        let report = HostReport {
            containers: vec![app, root("sidecar", "busybox")],
            ..Default::default()
        };
        let only_app = Selection {
            containers: vec!["app".into()],
            ..Default::default()
        };
        let p = plan_host(&host(), &report, &Policy::default(), &only_app);
        let Action::Refused { reasons } = &p.containers[0].action else {
            panic!("{:?}", p.containers[0])
        };
        assert!(reasons[0].contains("leaves out"), "{reasons:?}");
    }

    #[test]
    fn containers_mounting_the_same_directory_are_one_group() {
        let (mut a, mut b) = (root("a", "busybox"), root("b", "busybox"));
        volume(&mut a, "/srv/shared");
        volume(&mut b, "/srv/shared");
        let p = plan(vec![a, b, root("c", "busybox")]);
        // c has no data: stateless, first.
        assert_eq!(
            names(&p),
            [("c", vec![]), ("a", vec!["b"]), ("b", vec!["a"])]
        );
        assert!(matches!(p.containers[0].action, Action::Migrate(_)));
        assert!(matches!(p.containers[1].action, Action::Refused { .. }));
        // Selecting one of them alone would change the other's files.
        let (mut a, mut b) = (root("a", "busybox"), root("b", "busybox"));
        volume(&mut a, "/srv/shared");
        volume(&mut b, "/srv/shared");
        let report = HostReport {
            containers: vec![a, b],
            ..Default::default()
        };
        let only_a = Selection {
            containers: vec!["a".into()],
            ..Default::default()
        };
        let p = plan_host(&host(), &report, &Policy::default(), &only_a);
        let Action::Refused { reasons } = &p.containers[0].action else {
            panic!("{:?}", p.containers[0])
        };
        assert!(
            reasons[0].contains("leaves out") && reasons[0].contains('b'),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_cycle_of_links_is_planned_without_blowing_up() {
        // a -> b, a -> c, b -> a, c -> a: every level doubles a naive frontier.
        let mut cs: Vec<ContainerReport> =
            ["a", "b", "c"].iter().map(|n| root(n, "busybox")).collect();
        let deps = [("a", vec!["b", "c"]), ("b", vec!["a"]), ("c", vec!["a"])];
        for (c, (_, to)) in cs.iter_mut().zip(&deps) {
            c.depends_on = to.iter().map(|s| s.to_string()).collect();
            c.linked = c.depends_on.clone();
        }
        let many: Vec<ContainerReport> = (0..60)
            .map(|i| root(&format!("x{i:02}"), "busybox"))
            .chain(cs)
            .collect();
        let p = plan(many);
        assert_eq!(p.containers.len(), 63);
    }

    #[test]
    fn a_shared_volume_needs_one_owner_and_is_changed_once() {
        let (mut data, mut reader) = (root("data", "busybox"), root("reader", "busybox"));
        link(&mut reader, &mut data);
        volume(&mut data, "/var/lib/docker/volumes/shared/_data");
        volume(&mut reader, "/var/lib/docker/volumes/shared/_data");
        // Two dedicated users (ids unknown until made): refused.
        let p = plan(vec![data.clone(), reader.clone()]);
        for c in &p.containers {
            let Action::Refused { reasons } = &c.action else {
                panic!("{c:?}")
            };
            assert!(reasons[0].contains("only one owner"), "{reasons:?}");
        }
        // The same explicit ids: both move, the volume is changed by the first.
        let policy = crate::policy::Policy::parse(
            std::path::Path::new("p.toml"),
            "[[rule]]\nname = \"*\"\nstrategy = \"2001:2001\"\n",
        )
        .unwrap();
        let report = HostReport {
            containers: vec![data, reader],
            ..Default::default()
        };
        let p = plan_host(&host(), &report, &policy, &Selection::default());
        let mounts: Vec<(&str, usize)> = p
            .containers
            .iter()
            .map(|c| match &c.action {
                Action::Migrate(m) => (c.name.as_str(), m.mounts.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(mounts, [("data", 1), ("reader", 0)]);
    }

    #[test]
    fn the_image_user_by_default_else_a_dedicated_one() {
        let mut pg = root("pg", "postgres:16");
        pg.users = vec![fleet_core::audit::ImageUser {
            name: "postgres".into(),
            uid: 999,
            gid: 999,
        }];
        let p = plan(vec![pg, root("web", "nginx")]);
        let Action::Migrate(web) = &p.containers[0].action else {
            panic!()
        };
        assert_eq!(web.target.user().to_create(), Some("svc-web"));
        let Action::Migrate(pg) = &p.containers[1].action else {
            panic!()
        };
        assert_eq!(
            pg.target.user(),
            &fleet_core::target::TargetUser::ImageUser {
                name: "postgres".into(),
                ids: fleet_core::target::Ids::new(999, 999).unwrap(),
            }
        );
    }
}
