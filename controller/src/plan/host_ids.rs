//! Target ids that already belong to someone on the host. Without a user
//! namespace a container's uid and gid are the host's: an image user's
//! 999:999 is, on a Debian host, the `systemd-journal` group, so the
//! service would read and write what that group may, and the group the
//! service's files. The account a run creates itself is no collision.

use fleet_core::audit::{HostAccount, HostReport};
use fleet_core::migration::{IdCollision, IdKind};

/// Every host account (for `uid`) and group (for `gid`) holding a target
/// id, except the account and group named `creates` (the run's own).
pub fn collisions(
    host: &HostReport,
    uid: Option<u32>,
    gid: Option<u32>,
    creates: Option<&str>,
) -> Vec<IdCollision> {
    let theirs = |accounts: &[HostAccount], id: Option<u32>, kind: IdKind| -> Vec<IdCollision> {
        let Some(id) = id else {
            return Vec::new();
        };
        accounts
            .iter()
            .filter(|a| a.id == id && Some(a.name.as_str()) != creates)
            .map(|a| IdCollision {
                kind,
                id,
                owner: a.name.clone(),
            })
            .collect()
    };
    let mut out = theirs(&host.host_users, uid, IdKind::Uid);
    out.extend(theirs(&host.host_groups, gid, IdKind::Gid));
    out.sort();
    out.dedup();
    out
}

/// `gid 999 is the host's group systemd-journal; uid 998 is ...`.
pub fn describe(found: &[IdCollision]) -> String {
    found
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, id: u32) -> HostAccount {
        HostAccount {
            name: name.into(),
            id,
        }
    }

    #[test]
    fn a_target_id_of_a_host_account_is_named_but_not_the_runs_own() {
        let host = HostReport {
            host_users: vec![account("systemd-network", 998), account("svc-web", 2001)],
            host_groups: vec![account("systemd-journal", 999), account("svc-web", 2001)],
            ..Default::default()
        };
        let found = collisions(&host, Some(999), Some(999), None);
        assert_eq!(
            describe(&found),
            "gid 999 is the host's group systemd-journal"
        );
        let found = collisions(&host, Some(998), Some(999), None);
        assert_eq!(found.len(), 2);
        assert_eq!(
            describe(&found),
            "uid 998 is the host's user systemd-network; gid 999 is the host's group systemd-journal"
        );
        // The dedicated account the run creates (or made in an earlier run).
        assert!(collisions(&host, Some(2001), Some(2001), Some("svc-web")).is_empty());
        assert_eq!(
            collisions(&host, Some(2001), Some(2001), Some("svc-api")).len(),
            2
        );
        // Ids the agent allocates are checked by the agent.
        assert!(collisions(&host, None, None, Some("svc-x")).is_empty());
    }
}

#[cfg(test)]
mod plan_tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use fleet_core::audit::{ContainerReport, HostAccount, HostReport, ImageUser, Verdict};

    use crate::inventory::{Host, HostSource};
    use crate::plan::{Action, Selection, plan_host};
    use crate::policy::Policy;

    /// An image whose entrypoint drops to its user 999:999, on a host
    /// where gid 999 is systemd-journal (Debian's).
    fn report() -> HostReport {
        let mut c = ContainerReport {
            name: "cache".into(),
            id: "cache-id".into(),
            image: "acme/cache".into(),
            users: vec![ImageUser {
                name: "cache".into(),
                uid: 999,
                gid: 999,
            }],
            ..Default::default()
        };
        c.identity.verdict = Verdict::StartsAsRootDropsTo { uid: 999 };
        HostReport {
            containers: vec![c],
            host_users: vec![HostAccount {
                name: "systemd-network".into(),
                id: 998,
            }],
            host_groups: vec![HostAccount {
                name: "systemd-journal".into(),
                id: 999,
            }],
            ..Default::default()
        }
    }

    fn plan(policy: &str) -> Action {
        let host = Host {
            name: "h1".into(),
            address: "127.0.0.1:1".into(),
            labels: BTreeMap::new(),
            source: HostSource::Config,
        };
        let policy = Policy::parse(Path::new("p.toml"), policy).unwrap();
        let mut p = plan_host(&host, &report(), &policy, &Selection::default());
        p.containers.remove(0).action
    }

    #[test]
    fn warn_by_default_refuse_or_dedicated_when_the_policy_says() {
        let Action::Migrate(m) = plan("") else {
            panic!("warn still migrates")
        };
        assert_eq!((m.uid, m.gid), (Some(999), Some(999)));
        assert_eq!(
            m.host_id_collisions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["gid 999 is the host's group systemd-journal"]
        );

        let Action::Refused { reasons } = plan("[defaults]\non_host_id_collision = \"refuse\"\n")
        else {
            panic!("refused")
        };
        assert!(
            reasons[0].contains("gid 999 is the host's group systemd-journal")
                && reasons[0].contains("on_host_id_collision = \"dedicated\""),
            "{reasons:?}"
        );

        // A rule decides over the defaults.
        let Action::Migrate(m) = plan(
            "[defaults]\non_host_id_collision = \"refuse\"\n[[rule]]\nname = \"cache\"\non_host_id_collision = \"dedicated\"\n",
        ) else {
            panic!("dedicated migrates")
        };
        assert_eq!(m.strategy, "dedicated user svc-cache");
        assert_eq!(
            (m.uid, m.gid, m.user_to_create.as_deref()),
            (None, None, Some("svc-cache"))
        );
        assert!(m.host_id_collisions.is_empty());
        assert_eq!(
            m.instead_of.as_deref(),
            Some(
                "image user cache (999:999): gid 999 is the host's group systemd-journal (on_host_id_collision = \"dedicated\")"
            )
        );

        // Free ids: nothing to say.
        let Action::Migrate(m) = plan("[[rule]]\nname = \"*\"\nstrategy = \"2001:2001\"\n") else {
            panic!()
        };
        assert!(m.host_id_collisions.is_empty() && m.instead_of.is_none());
    }

    #[test]
    fn an_unknown_setting_is_refused_at_its_line() {
        for (text, line) in [
            ("[defaults]\non_host_id_collision = \"ignore\"\n", 2),
            (
                "[[rule]]\nname = \"a\"\non_host_id_collision = \"Warn\"\n",
                3,
            ),
        ] {
            let e = Policy::parse(Path::new("p.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("line {line}:"))
                    && e.contains("unknown on_host_id_collision")
                    && e.contains("\"warn\""),
                "{e}"
            );
        }
    }
}
