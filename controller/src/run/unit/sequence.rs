//! A unit's steps and the order they run in (the undo walks it backwards),
//! and the few facts about a member both the migration and the undo read.

use crate::plan::{Action, Migration};
use crate::run::ctx::RunCtx;
use crate::run::model::{ContainerRun, StepKind};

/// The step's key on the agent: the same on every attempt, so a replay is
/// safe.
pub(super) fn step_id(container_id: &str, kind: StepKind) -> String {
    format!(
        "{}.{}",
        &container_id[..container_id.len().min(12)],
        kind.as_str()
    )
}

fn kinds(migration: &Migration) -> Vec<StepKind> {
    let rootless = migration.target.rootless_account().is_some();
    let mut steps = vec![StepKind::Backup];
    if migration.target.user().to_create().is_some() {
        steps.push(StepKind::User);
    }
    // The image loads while the old container still runs: not downtime.
    if rootless {
        steps.push(StepKind::Image);
    }
    steps.push(StepKind::Stop);
    if !migration.mounts.is_empty() {
        steps.push(StepKind::Ownership);
    }
    if rootless {
        steps.extend([StepKind::Volumes, StepKind::Place]);
    } else {
        steps.push(StepKind::Recreate);
    }
    steps.push(StepKind::Verify);
    steps
}

/// Every step of the unit in the order it runs, as (member, kind).
pub(super) fn sequence(members: &[(String, Migration)]) -> Vec<(usize, StepKind)> {
    const ORDER: [StepKind; 9] = [
        StepKind::Backup,
        StepKind::User,
        StepKind::Image,
        StepKind::Stop,
        StepKind::Ownership,
        StepKind::Volumes,
        StepKind::Recreate,
        StepKind::Place,
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

pub(super) fn migration_of(c: &ContainerRun) -> Option<Migration> {
    match &c.plan.action {
        Action::Migrate(m) => Some(m.clone()),
        _ => None,
    }
}

/// `RUN host/container`: what an audit-log line about a container names.
pub(super) fn audit_target(ctx: &RunCtx, c: &ContainerRun) -> String {
    format!("{} {}/{}", ctx.id, c.host, c.plan.name)
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

    #[test]
    fn a_rootless_move_loads_the_image_before_the_stop_and_places_instead_of_recreating() {
        let mut m = migration(true, true);
        m.target = Target::Rootless {
            account: TargetUser::Dedicated {
                name: "svc-web".into(),
                uid: None,
                gid: None,
            },
            userns: fleet_core::userns::UsernsMode::Default,
            inside: None,
        };
        use StepKind::*;
        let kinds: Vec<StepKind> = sequence(&[("web".to_string(), m)])
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            kinds,
            [Backup, User, Image, Stop, Ownership, Volumes, Place, Verify]
        );
    }
}
