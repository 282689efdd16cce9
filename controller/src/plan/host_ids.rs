//! Target ids that already belong to someone on the host. Without a user
//! namespace a container's uid and gid are the host's: an image user's
//! 999:999 is, on a Debian host, the `systemd-journal` group, so the
//! service would read and write what that group may, and the group the
//! service's files. An account the run is to create does not exist yet, so
//! it is never among them; one of the same name that exists already is
//! someone's (the service would share it) and is named like any other.

use fleet_core::audit::{HostAccount, HostReport};
use fleet_core::migration::{IdCollision, IdKind};

/// Every host account (for `uid`) and group (for `gid`) holding a target id.
pub fn collisions(host: &HostReport, uid: Option<u32>, gid: Option<u32>) -> Vec<IdCollision> {
    let theirs = |accounts: &[HostAccount], id: Option<u32>, kind: IdKind| -> Vec<IdCollision> {
        let Some(id) = id else {
            return Vec::new();
        };
        accounts
            .iter()
            .filter(|a| a.id == id)
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

/// Whether the host told its accounts at all: every host has root in its
/// passwd, so none means its agent could not read them (or predates them).
pub fn known(host: &HostReport) -> bool {
    !host.host_users.is_empty() && !host.host_groups.is_empty()
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
    fn a_target_id_of_a_host_account_is_named_even_one_of_the_dedicated_name() {
        let host = HostReport {
            host_users: vec![account("systemd-network", 998), account("svc-web", 2001)],
            host_groups: vec![account("systemd-journal", 999), account("svc-web", 2001)],
            ..Default::default()
        };
        let found = collisions(&host, Some(999), Some(999));
        assert_eq!(
            describe(&found),
            "gid 999 is the host's group systemd-journal"
        );
        let found = collisions(&host, Some(998), Some(999));
        assert_eq!(found.len(), 2);
        assert_eq!(
            describe(&found),
            "uid 998 is the host's user systemd-network; gid 999 is the host's group systemd-journal"
        );
        // An existing account of the dedicated user's name is someone's:
        // the service would share it (a rule naming `postgres` on a host
        // that has postgres:999 already).
        assert_eq!(
            describe(&collisions(&host, Some(2001), Some(2001))),
            "uid 2001 is the host's user svc-web; gid 2001 is the host's group svc-web"
        );
        // Ids the agent allocates are checked by the agent.
        assert!(collisions(&host, None, None).is_empty());
        assert!(known(&host));
        assert!(!known(&HostReport::default()));
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
        plan_on(&report(), policy)
    }

    fn plan_on(report: &HostReport, policy: &str) -> Action {
        let host = Host {
            name: "h1".into(),
            address: "127.0.0.1:1".into(),
            labels: BTreeMap::new(),
            source: HostSource::Config,
        };
        let policy = Policy::parse(Path::new("p.toml"), policy).unwrap();
        let mut p = plan_host(&host, report, &policy, &Selection::default());
        p.containers.remove(0).action
    }

    #[test]
    fn warn_by_default_refuse_or_dedicated_when_the_policy_says() {
        let Action::Migrate(m) = plan("") else {
            panic!("warn still migrates")
        };
        assert_eq!(
            m.target.user().known_ids(),
            Some(fleet_core::target::Ids::new(999, 999).unwrap())
        );
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
        assert_eq!(m.target.to_string(), "dedicated user svc-cache");
        assert_eq!(
            (m.target.user().known_ids(), m.target.user().to_create()),
            (None, Some("svc-cache"))
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

    /// A host whose agent reported no accounts cannot be checked: a
    /// refusal the policy asked for fails closed, a warning goes on.
    #[test]
    fn unknown_host_accounts_fail_closed_when_the_policy_checks() {
        let mut blind = report();
        blind.host_users.clear();
        blind.host_groups.clear();
        blind.warnings = vec!["cannot read the host's /etc/group: denied".into()];
        for setting in ["refuse", "dedicated"] {
            let Action::Refused { reasons } = plan_on(
                &blind,
                &format!("[defaults]\non_host_id_collision = \"{setting}\"\n"),
            ) else {
                panic!("{setting}: refused")
            };
            assert!(
                reasons[0].contains("accounts are unknown")
                    && reasons[0].contains("/etc/group: denied"),
                "{reasons:?}"
            );
        }
        assert!(matches!(plan_on(&blind, ""), Action::Migrate(_)));
    }

    /// `dedicated` cannot fix a collision with the very account it would
    /// use: an existing account of that name keeps its ids.
    #[test]
    fn a_dedicated_name_that_exists_with_the_colliding_ids_is_refused() {
        let mut host = report();
        host.host_users.push(HostAccount {
            name: "svc-cache".into(),
            id: 999,
        });
        let Action::Refused { reasons } =
            plan_on(&host, "[defaults]\non_host_id_collision = \"dedicated\"\n")
        else {
            panic!("refused")
        };
        assert!(
            reasons[0].contains("the dedicated account svc-cache exists already"),
            "{reasons:?}"
        );
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
