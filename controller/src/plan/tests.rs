//! The planner's unit tests: they plan whole hosts (`plan_host`), so they
//! cover the per-container decision, linked groups and the runbook order
//! together.

use std::collections::BTreeMap;

use super::*;
use fleet_core::audit::{ContainerReport, HostReport, MountReport, Verdict};

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
    let mut cs: Vec<ContainerReport> = ["a", "b", "c"].iter().map(|n| root(n, "busybox")).collect();
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
    .expect("the policy of this test parses");
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
            ids: fleet_core::target::Ids::new(999, 999).expect("999 is not root"),
        }
    );
}

/// A host that can take rootless targets, as this machine's probe says.
fn rootless_host(containers: Vec<ContainerReport>) -> HostReport {
    HostReport {
        containers,
        capabilities: fleet_core::capabilities::HostCapabilities {
            probed: true,
            podman_version: Some("podman version 4.3.1".into()),
            cgroup_version: 1,
            newuidmap: true,
            newgidmap: true,
            unprivileged_port_start: Some(1024),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn rootless_plan(report: &HostReport, policy: &str) -> HostPlan {
    let policy = Policy::parse(std::path::Path::new("p.toml"), policy)
        .unwrap_or_else(|e| panic!("the policy of this test parses: {e}"));
    plan_host(
        &host(),
        report,
        &policy,
        &Selection {
            rootless: true,
            ..Default::default()
        },
    )
}

fn reasons(plan: &HostPlan, name: &str) -> String {
    match &plan
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} is in the plan"))
        .action
    {
        Action::Refused { reasons } => reasons.join("; "),
        other => panic!("{name} is not refused: {other:?}"),
    }
}

#[test]
fn a_rootless_target_names_its_account_namespace_and_changes() {
    let mut web = root("web", "nginx");
    web.rootless_changes
        .push("the default bridge becomes slirp4netns".into());
    let p = rootless_plan(&rootless_host(vec![web]), "");
    let Action::Migrate(m) = &p.containers[0].action else {
        panic!("{:?}", p.containers[0].action);
    };
    assert_eq!(m.target.rootless_account(), Some("svc-web"));
    assert_eq!(m.target.to_string(), "rootless under svc-web");
    let notes = m.engine_notes.join("; ");
    assert!(
        notes.contains("slirp4netns") && notes.contains("cgroup v1"),
        "{notes}"
    );
}

#[test]
fn what_the_host_or_the_container_lacks_refuses_the_rootless_move() {
    let mut low = root("low", "nginx");
    low.rootless_blockers
        .push("low publishes 80/tcp on host port 80".into());
    let mut report = rootless_host(vec![low, root("web", "nginx")]);
    report.capabilities.newuidmap = false;
    let p = rootless_plan(&report, "");
    assert!(reasons(&p, "low").contains("host port 80"));
    assert!(
        reasons(&p, "web").contains("no newuidmap"),
        "{}",
        reasons(&p, "web")
    );
}

#[test]
fn keep_id_without_a_user_inside_and_an_account_with_other_ids_are_refused() {
    let mut report = rootless_host(vec![root("web", "nginx"), root("db", "pg")]);
    report.host_users.push(fleet_core::audit::HostAccount {
        name: "svc-db".into(),
        id: 1200,
    });
    let p = rootless_plan(
        &report,
        "[[rule]]\nname = \"web\"\nstrategy = \"dedicated\"\ntarget = \"rootless\"\nuserns = \"keep-id\"\n\n[[rule]]\nname = \"db\"\nstrategy = \"dedicated\"\nuser = \"svc-db\"\nuid = 1300\ntarget = \"rootless\"\n",
    );
    assert!(
        reasons(&p, "web").contains("keep-id"),
        "{}",
        reasons(&p, "web")
    );
    assert!(
        reasons(&p, "db").contains("exists on the host with uid 1200"),
        "{}",
        reasons(&p, "db")
    );
}

#[test]
fn an_existing_account_whose_range_overlaps_anothers_is_refused_at_plan_time() {
    let mut report = rootless_host(vec![root("web", "nginx")]);
    let range = |owner: &str, start: u32| fleet_core::audit::SubordinateRange {
        owner: owner.into(),
        start,
        count: 65536,
    };
    report.host_subuids = vec![range("alice", 100000), range("svc-web", 150000)];
    let p = rootless_plan(&report, "");
    let said = reasons(&p, "web");
    assert!(
        said.contains("svc-web's subordinate uids 150000-215535 overlap alice's 100000-165535"),
        "{said}"
    );
}
