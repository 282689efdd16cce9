//! The per-container decision: what the policy says for one container
//! (exempt, skip, refused, or migrate) and, for a migration, its target
//! user (the strategy's, the image's own, or a dedicated one; changed or
//! refused by `on_host_id_collision`), its mounts and expected downtime.

use std::num::NonZeroU32;

use fleet_core::audit::{ContainerReport, HostReport, Severity, Verdict};
use fleet_core::migration::{IdCollision, MountPlan};
use fleet_core::plan::{Action, ContainerPlan, Migration};
use fleet_core::target::{Ids, Target, TargetUser};

use super::class::{class_of, image_base};
use super::{host_ids, runtime};
use crate::inventory::Host;
use crate::plan::Selection;
use crate::policy::{Decision, OnHostIdCollision, Placement, Policy, Strategy, Subject};

/// Reasons a container cannot be migrated safely, from the audit.
fn refusals(c: &ContainerReport, include_pods: bool) -> Vec<String> {
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
        && !include_pods
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

/// The target user once `on_host_id_collision` has had its say, with the
/// collisions still to show and, when a dedicated account replaced the
/// user, what it replaced and why.
struct Settled {
    user: TargetUser,
    host_id_collisions: Vec<IdCollision>,
    instead_of: Option<String>,
}

/// Applies `on_host_id_collision` to the target ids that belong to someone
/// on the host: warn (keep them), refuse, or a dedicated account instead.
fn settle_host_ids(
    host: &HostReport,
    decision: &Decision,
    service: &str,
    mut user: TargetUser,
) -> Result<Settled, Vec<String>> {
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
                    || fleet_core::names::derive_user_name(service),
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
    Ok(Settled {
        user,
        host_id_collisions,
        instead_of,
    })
}

/// The container's data mounts (binds and volumes), each with what the
/// ownership walk found in it.
fn mount_plans(c: &ContainerReport) -> Vec<MountPlan> {
    c.mounts
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
        .collect()
}

/// The migration of a container the policy moves: its target user, its
/// mounts and the downtime to expect; Err with the reasons it is refused.
fn migration(
    c: &ContainerReport,
    host: &HostReport,
    decision: &Decision,
    placement: &Placement,
) -> Result<Migration, Vec<String>> {
    let service = c.compose_service.clone().unwrap_or_else(|| c.name.clone());
    let user = target_user(c, decision, &service)?;
    let (target, host_id_collisions, instead_of, mut engine_notes) = match placement {
        Placement::InPlace => {
            let settled = settle_host_ids(host, decision, &service, user)?;
            (
                Target::InPlace { user: settled.user },
                settled.host_id_collisions,
                settled.instead_of,
                Vec::new(),
            )
        }
        // The account's own ids are the agent's to allocate; the
        // namespace keeps the container's ids off the host's.
        Placement::Rootless { account, userns } => {
            let r = super::rootless::target(c, host, account.as_deref(), *userns, user, &service)?;
            (r.target, Vec::new(), None, r.notes)
        }
    };
    engine_notes.extend(c.engine_notes.iter().cloned());
    let from_ids = vec![0];
    let mounts = mount_plans(c);
    let changing: u64 = mounts.iter().map(|m| m.changing).sum();
    let backup_bytes = mounts.iter().map(|m| m.bytes).sum();
    // Stop (its own timeout at worst), the ownership walk (~200k entries/s
    // measured here), create and start, then the health gate.
    let expected_downtime_ms =
        1_000 + changing * 1_000 / 200_000 + decision.min_healthy_secs * 1_000;
    let known = target.user().known_ids();
    let runtime_dirs = match &target {
        Target::InPlace { .. } => runtime::planned(c, known),
        Target::Rootless { .. } => Vec::new(),
    };
    Ok(Migration {
        target,
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
        runtime_dirs,
        layer_loss_allowed: c.layer_loss.clone(),
        engine_notes,
    })
}

/// One container's plan: the policy's decision for it, and what that
/// makes of it given its identity and the audit's findings. Its order and
/// group are left for the host's plan to fill in.
pub(super) fn plan_container(
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
                let mut reasons = refusals(c, selection.include_pods);
                if !c.layer_loss.is_empty() && !decision.allow_layer_loss {
                    reasons.push(fleet_core::migration::layer_loss_refusal(&c.layer_loss));
                }
                if !reasons.is_empty() {
                    Action::Refused { reasons }
                } else {
                    let placement = decision.placement.clone().unwrap_or(if selection.rootless {
                        Placement::rootless()
                    } else {
                        Placement::InPlace
                    });
                    match migration(c, report, &decision, &placement) {
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
