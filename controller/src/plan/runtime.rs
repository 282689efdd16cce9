//! Runtime directories in the plan: each directory of the container's
//! writable layer outside its mounts that its processes own or write (a
//! root entrypoint's `chown` of `/var/run/app` before it drops privileges).
//! The recreated container starts from the image, where they are not the
//! service's; the recreate gives them to the target ids (mode kept), and
//! the plan says so before anything moves.

use fleet_core::audit::{ContainerReport, FileOwner};
use fleet_core::migration::RuntimeDirPlan;
use fleet_core::target::Ids;

/// The container's runtime directories, each with what the recreate gives
/// it: the target ids (None while they are a new user's, unknown until
/// made), its mode as it is now.
pub fn planned(c: &ContainerReport, target: Option<Ids>) -> Vec<RuntimeDirPlan> {
    c.runtime_dirs
        .iter()
        .map(|dir| RuntimeDirPlan {
            path: dir.path.clone(),
            now: dir.now,
            image: dir.image,
            target: target.map(|ids| FileOwner {
                uid: ids.uid(),
                gid: ids.gid(),
                mode: dir.now.mode,
            }),
            why: dir.why.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_core::audit::{
        HostReport, MountReport, OwnerCount, OwnershipSummary, RuntimeDir, Verdict,
    };

    use super::*;
    use crate::inventory::{Host, HostSource};
    use crate::plan::{Action, Selection, plan_host};
    use crate::policy::Policy;

    #[test]
    fn the_plan_shows_runtime_dirs_and_counts_only_what_the_remap_changes() {
        let mut c = ContainerReport {
            name: "app".into(),
            id: "app-id".into(),
            image: "acme/app".into(),
            ..Default::default()
        };
        c.identity.verdict = Verdict::Root;
        c.runtime_dirs.push(RuntimeDir {
            path: "/var/run/app".into(),
            now: FileOwner {
                uid: 0,
                gid: 0,
                mode: 0o1777,
            },
            image: None,
            why: "written (3 entries)".into(),
        });
        c.mounts.push(MountReport {
            kind: "volume".into(),
            source: "/srv/app".into(),
            destination: "/data".into(),
            ownership: OwnershipSummary {
                // 10 root-owned entries, of which 2 are left alone.
                top_owners: vec![OwnerCount {
                    uid: 0,
                    gid: 0,
                    entries: 10,
                }],
                entries: 10,
                root_changing: 8,
                left_alone: vec![
                    "dev/null (a device node: never handed to a service)".into(),
                    "x (a hard link with 1 of its 2 names outside the tree: they could be host files)".into(),
                ],
                left_alone_count: 2,
                ..Default::default()
            },
            ..Default::default()
        });
        let report = HostReport {
            containers: vec![c],
            ..Default::default()
        };
        let host = Host {
            name: "h1".into(),
            address: "a".into(),
            labels: BTreeMap::new(),
            source: HostSource::Config,
        };
        let policy = Policy::parse(
            std::path::Path::new("p.toml"),
            "[[rule]]\nname = \"app\"\nstrategy = \"2001:2002\"\n",
        )
        .unwrap();
        let p = plan_host(&host, &report, &policy, &Selection::default());
        let Action::Migrate(m) = &p.containers[0].action else {
            panic!("{:?}", p.containers[0])
        };
        assert_eq!((m.mounts[0].changing, m.mounts[0].entries), (8, 10));
        assert_eq!(m.mounts[0].left_alone_count, 2);
        assert_eq!(
            m.runtime_dirs[0].to_string(),
            "/var/run/app: 0:0 1777 now (written (3 entries)), not in the image → 2001:2002 1777"
        );
        // A dedicated user's ids are known only once it is made.
        let p = plan_host(&host, &report, &Policy::default(), &Selection::default());
        let Action::Migrate(m) = &p.containers[0].action else {
            panic!()
        };
        assert_eq!(m.runtime_dirs[0].target, None);
        assert!(
            m.runtime_dirs[0]
                .to_string()
                .ends_with("→ the new user's ids, 1777")
        );
    }
}
