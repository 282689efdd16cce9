//! Policy → plan: for every selected container of every host, what it
//! becomes (or why not), in the order a careful runbook would move them:
//! stateless services first, then caches and queues, then databases;
//! containers that share namespaces or volumes move together.

use std::collections::BTreeMap;

use fleet_core::audit::{ContainerReport, HostReport, Severity, Verdict};
use serde::{Deserialize, Serialize};

use crate::inventory::Host;
use crate::policy::{Decision, Policy, Probe, Strategy, Subject, glob};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub created_unix_ms: u64,
    pub hosts: Vec<HostPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    /// Why the host could not be planned (unreachable...), if so.
    pub error: Option<String>,
    pub containers: Vec<ContainerPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub id: String,
    pub image: String,
    /// The configuration this plan was made against.
    pub fingerprint: String,
    /// Who it runs as now (the audit's verdict).
    pub current: String,
    pub action: Action,
    /// Ordering class (stateless, cache, database, or the policy's).
    pub class: String,
    /// Position within the host, from 1; linked containers share a group.
    pub order: u32,
    pub group: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Migrate(Migration),
    Exempt {
        reason: String,
    },
    Refused {
        reasons: Vec<String>,
    },
    /// Nothing to do.
    Skip {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub strategy: String,
    /// The target, when known before the run (a new user's ids are
    /// allocated by its host's agent when it is made).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub user_to_create: Option<String>,
    /// Old uid/gid whose files move to the target.
    pub from_ids: Vec<u32>,
    pub mounts: Vec<MountPlan>,
    pub backup_bytes: u64,
    pub hooks: Vec<Vec<String>>,
    pub probe: Option<Probe>,
    pub min_healthy_secs: u64,
    pub deadline_secs: u64,
    pub retention_days: u64,
    pub expected_downtime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub destination: String,
    pub source: String,
    pub entries: u64,
    /// Entries owned by the ids that move (from the audit's summary).
    pub changing: u64,
    pub bytes: u64,
    /// The audit's walk stopped at its bound: the counts are at least these.
    pub partial: bool,
}

/// What the planner is told to look at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Container name globs; all if empty.
    pub containers: Vec<String>,
    /// Plan pod members too (they are refused otherwise).
    pub include_pods: bool,
}

const CACHES: &[&str] = &[
    "redis",
    "valkey",
    "memcached",
    "keydb",
    "rabbitmq",
    "nats",
    "kafka",
    "zookeeper",
    "mosquitto",
];
const DATABASES: &[&str] = &[
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "mongo",
    "mongodb",
    "clickhouse",
    "neo4j",
    "elasticsearch",
    "opensearch",
    "qdrant",
    "influxdb",
    "cassandra",
    "couchdb",
    "etcd",
    "cockroach",
    "timescaledb",
];

/// `docker.io/library/postgres:16-alpine` → `postgres`.
pub fn image_base(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).to_lowercase()
}

fn class_rank(class: &str) -> u32 {
    match class {
        "stateless" => 10,
        "cache" | "queue" => 20,
        "database" => 30,
        other => other.parse().unwrap_or(25),
    }
}

fn auto_class(c: &ContainerReport) -> &'static str {
    let base = image_base(&c.image);
    if DATABASES.iter().any(|d| base.starts_with(d)) {
        "database"
    } else if CACHES.iter().any(|q| base.starts_with(q)) {
        "cache"
    } else if c
        .mounts
        .iter()
        .any(|m| m.kind == "bind" || m.kind == "volume")
    {
        "database"
    } else {
        "stateless"
    }
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

fn migration(c: &ContainerReport, decision: &Decision) -> Result<Migration, Vec<String>> {
    let service = c.compose_service.clone().unwrap_or_else(|| c.name.clone());
    let (strategy, uid, gid, user_to_create) = match &decision.strategy {
        Some(Strategy::Explicit { uid, gid }) => {
            (format!("{uid}:{gid}"), Some(*uid), Some(*gid), None)
        }
        Some(Strategy::Dedicated { name, uid, gid }) => {
            let name = name
                .clone()
                .unwrap_or_else(|| fleet_core::names::derive_user_name(&service));
            (format!("dedicated user {name}"), *uid, *gid, Some(name))
        }
        Some(Strategy::ImageUser) => match image_user(c) {
            Some((uid, gid, name)) => (format!("image user {name}"), Some(uid), Some(gid), None),
            None => {
                return Err(vec![
                    "strategy image-user, but the image has no non-root user of its own".into(),
                ]);
            }
        },
        None => match image_user(c) {
            Some((uid, gid, name)) => (format!("image user {name}"), Some(uid), Some(gid), None),
            None => {
                let name = fleet_core::names::derive_user_name(&service);
                (format!("dedicated user {name}"), None, None, Some(name))
            }
        },
    };
    let from_ids = vec![0];
    let mounts: Vec<MountPlan> = c
        .mounts
        .iter()
        .filter(|m| m.kind == "bind" || m.kind == "volume")
        .map(|m| {
            let changing = m
                .ownership
                .top_owners
                .iter()
                .filter(|o| from_ids.contains(&o.uid) || from_ids.contains(&o.gid))
                .map(|o| o.entries)
                .sum();
            MountPlan {
                destination: m.destination.clone(),
                source: m.source.clone(),
                entries: m.ownership.entries,
                changing,
                bytes: m.ownership.bytes,
                partial: m.ownership.bound_hit.is_some(),
            }
        })
        .collect();
    let changing: u64 = mounts.iter().map(|m| m.changing).sum();
    let backup_bytes = mounts.iter().map(|m| m.bytes).sum();
    // Stop (its own timeout at worst), the ownership walk (~200k entries/s
    // measured here), create and start, then the health gate.
    let expected_downtime_ms =
        1_000 + changing * 1_000 / 200_000 + decision.min_healthy_secs * 1_000;
    Ok(Migration {
        strategy,
        uid,
        gid,
        user_to_create,
        from_ids,
        mounts,
        backup_bytes,
        hooks: decision.hooks.clone(),
        probe: decision.probe.clone(),
        min_healthy_secs: decision.min_healthy_secs,
        deadline_secs: decision.deadline_secs,
        retention_days: decision.retention_days,
        expected_downtime_ms,
    })
}

fn plan_container(
    c: &ContainerReport,
    host: &Host,
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
                let reasons = refusals(c, selection);
                if !reasons.is_empty() {
                    Action::Refused { reasons }
                } else {
                    match migration(c, &decision) {
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
            .unwrap_or_else(|| auto_class(c).to_string()),
        order: 0,
        group: c.linked.clone(),
    }
}

/// Plans one host: every selected container, ordered. A group of linked
/// containers moves as one: if any of them cannot move, none does.
pub fn plan_host(
    host: &Host,
    report: &HostReport,
    policy: &Policy,
    selection: &Selection,
) -> HostPlan {
    let selected = |c: &&ContainerReport| {
        selection.containers.is_empty() || selection.containers.iter().any(|g| glob(g, &c.name))
    };
    let mut containers: Vec<ContainerPlan> = report
        .containers
        .iter()
        .filter(selected)
        .map(|c| plan_container(c, host, policy, selection))
        .collect();
    // Groups: the class of the group is its highest; a blocked member blocks all.
    let by_name: BTreeMap<String, usize> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    for i in 0..containers.len() {
        if containers[i].group.is_empty() {
            continue;
        }
        let members: Vec<usize> = containers[i]
            .group
            .iter()
            .filter_map(|n| by_name.get(n).copied())
            .collect();
        let blocked = members.iter().any(|m| {
            matches!(
                containers[*m].action,
                Action::Refused { .. } | Action::Exempt { .. }
            )
        });
        if blocked && matches!(containers[i].action, Action::Migrate(_)) {
            containers[i].action = Action::Refused {
                reasons: vec![format!(
                    "it shares a namespace or volumes with {}, which is not migrated: they move together or not at all",
                    containers[i].group.join(", ")
                )],
            };
        }
        let rank = members
            .iter()
            .map(|m| class_rank(&containers[*m].class))
            .chain([class_rank(&containers[i].class)])
            .max()
            .unwrap_or(25);
        if rank > class_rank(&containers[i].class) {
            containers[i].class = members
                .iter()
                .map(|m| containers[*m].class.clone())
                .find(|c| class_rank(c) == rank)
                .unwrap_or_default();
        }
    }
    containers.sort_by(|a, b| {
        let key = |c: &ContainerPlan| {
            let mut group = c.group.clone();
            group.push(c.name.clone());
            group.sort();
            (
                class_rank(&c.class),
                group.first().cloned().unwrap_or_default(),
                c.name.clone(),
            )
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
                ("files", "database")
            ]
        );
        assert_eq!(
            p.containers.iter().map(|c| c.order).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn linked_containers_move_together_or_not_at_all() {
        let mut app = root("app", "nginx");
        app.linked = vec!["sidecar".into()];
        let mut sidecar = root("sidecar", "busybox");
        sidecar.linked = vec!["app".into()];
        sidecar.auto_remove = true;
        let p = plan(vec![app, sidecar]);
        for c in &p.containers {
            assert!(matches!(c.action, Action::Refused { .. }), "{c:?}");
        }
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
        assert_eq!(web.user_to_create.as_deref(), Some("svc-web"));
        let Action::Migrate(pg) = &p.containers[1].action else {
            panic!()
        };
        assert_eq!(
            (pg.uid, pg.gid, pg.user_to_create.clone()),
            (Some(999), Some(999), None)
        );
    }
}
