//! Linked containers — one joins another's network and PID namespaces,
//! one mounts another's volumes (VolumesFrom) — move as one unit through a
//! real run: planned together in dependency order, migrated together, and
//! put back together, each partner again joined to the very container it
//! was joined to before.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use fleet_tests::engine::body;
use fleet_tests::fleet::{TestFleet, UsersCleanup, run_containers, seen, users_of, write_policy};
use fleet_tests::tree::{build_tree, snapshot};
use serde_json::Value;

/// The data's two users need one owner: the same explicit ids for both.
const POLICY: &str = r#"
[defaults]
min_healthy_secs = 1
deadline_secs = 30

[[rule]]
name = "*-net"
strategy = "2001:2001"

[[rule]]
name = "*-reader"
strategy = "2001:2001"
"#;

struct Group {
    net: String,
    side: String,
    reader: String,
}

/// `net` (root, with data), `side` in net's network and PID namespaces,
/// `reader` with net's volumes. `side_cmd` lets a test make it fail.
async fn group(fleet: &TestFleet, data: &Path, side_cmd: &[&str]) -> Group {
    let net = fleet.with_data(1, "net", data).await;
    let side = fleet
        .container(
            1,
            "side",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{net}")),
                    pid_mode: Some(format!("container:{net}")),
                    ..Default::default()
                }),
                ..body(&fleet.image, side_cmd)
            },
        )
        .await;
    let reader = fleet
        .container(
            1,
            "reader",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    volumes_from: Some(vec![net.clone()]),
                    ..Default::default()
                }),
                ..body(&fleet.image, &["sleep", "3600"])
            },
        )
        .await;
    Group { net, side, reader }
}

async fn network_mode(fleet: &TestFleet, name: &str) -> String {
    let doc = fleet.docker().inspect_container(name, None).await.unwrap();
    doc.host_config.unwrap().network_mode.unwrap_or_default()
}

impl Group {
    /// What the engine says each member is now.
    async fn seen(&self, fleet: &TestFleet) -> [fleet_tests::fleet::Seen; 3] {
        [
            seen(fleet.docker(), &self.net).await,
            seen(fleet.docker(), &self.side).await,
            seen(fleet.docker(), &self.reader).await,
        ]
    }
}

async fn id_of(fleet: &TestFleet, name: &str) -> String {
    seen(fleet.docker(), name).await.id
}

/// The network namespace of a container's main process.
async fn net_ns(fleet: &TestFleet, name: &str) -> String {
    let doc = fleet.docker().inspect_container(name, None).await.unwrap();
    let pid = doc.state.unwrap().pid.unwrap();
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .display()
        .to_string()
}

fn states(view: &Value) -> Vec<(String, String)> {
    run_containers(view)
        .iter()
        .map(|c| {
            (
                c["plan"]["name"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One host, a work dir and the policy file in it.
async fn start() -> (TestFleet, tempfile::TempDir, String) {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let policy = policy.to_str().unwrap().to_string();
    (fleet, base, policy)
}

#[tokio::test(flavor = "multi_thread")]
async fn linked_containers_migrate_together_and_roll_back_as_one() {
    let (fleet, base, policy) = start().await;
    let data = base.path().join("data");
    build_tree(&data, &base.path().join("outside"));
    let g = group(&fleet, &data, &["sleep", "3600"]).await;
    let before = g.seen(&fleet).await;
    let old_net_id = before[0].id.clone();
    assert_eq!(
        network_mode(&fleet, &g.side).await,
        format!("container:{old_net_id}")
    );
    let tree_before = snapshot(&data);

    // Planned as one group, what is joined first.
    let plan = fleet
        .ctl(&["plan", "--policy", &policy, "-o", "json"])
        .await;
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    let planned: Vec<(&str, &str, usize)> = plan["hosts"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["action"]["kind"].as_str().unwrap(),
                c["group"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        planned,
        [
            (g.net.as_str(), "migrate", 2),
            (g.reader.as_str(), "migrate", 2),
            (g.side.as_str(), "migrate", 2),
        ],
        "{plan}"
    );
    // The shared data is changed once, by net.
    let reader_mounts = &plan["hosts"][0]["containers"][1]["action"]["mounts"];
    assert_eq!(reader_mounts.as_array().unwrap().len(), 0, "{plan}");

    let run = fleet
        .ctl(&["migrate", "--policy", &policy, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{view}");
    assert!(states(&view).iter().all(|(_, s)| s == "migrated"), "{view}");
    for name in [&g.net, &g.side, &g.reader] {
        let now = seen(fleet.docker(), name).await;
        assert!(now.is_non_root(), "{name}: {now:?}");
    }
    assert_eq!(seen(fleet.docker(), &g.net).await.process_uid, Some(2001));
    // The sidecar joined the new net container, not its stopped checkpoint.
    let new_net_id = id_of(&fleet, &g.net).await;
    assert_ne!(new_net_id, old_net_id);
    assert_eq!(
        network_mode(&fleet, &g.side).await,
        format!("container:{new_net_id}")
    );
    assert_eq!(net_ns(&fleet, &g.side).await, net_ns(&fleet, &g.net).await);
    // Net's root-owned data now belongs to 2001, as the reader sees it.
    let tree = snapshot(&data);
    // (Never a device node, nor a file with a name outside the tree.)
    let kept: Vec<&str> = tree
        .iter()
        .filter(|(path, s)| tree_before[*path].uid == 0 && s.uid != 2001)
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(kept, ["data/host-hardlink", "data/null-device"]);
    assert_eq!(tree["data/root-file"].uid, 2001);

    // Rolling back only the sidecar takes its partners back too.
    let id = view["run"]["id"].as_str().unwrap();
    let back = fleet
        .ctl(&[
            "rollback",
            id,
            "--container",
            "*-side",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let back_view = back.json();
    assert_eq!(back.code, 0, "{back_view}");
    assert_eq!(states(&back_view).len(), 3, "{back_view}");
    let after = g.seen(&fleet).await;
    assert_eq!(after, before, "the very same containers, running as before");
    assert_eq!(
        network_mode(&fleet, &g.side).await,
        format!("container:{old_net_id}")
    );
    assert_eq!(net_ns(&fleet, &g.side).await, net_ns(&fleet, &g.net).await);
    assert_eq!(snapshot(&data), tree_before, "ownership exactly as before");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_member_puts_the_whole_group_back() {
    let (fleet, base, policy) = start().await;
    let data = base.path().join("data");
    build_tree(&data, &base.path().join("outside"));
    // The sidecar insists on root: its verify fails after every member
    // has been recreated.
    let g = group(
        &fleet,
        &data,
        &[
            "sh",
            "-c",
            "[ \"$(id -u)\" = 0 ] && exec sleep 3600; exit 3",
        ],
    )
    .await;
    let before = g.seen(&fleet).await;
    let tree_before = snapshot(&data);
    let run = fleet
        .ctl(&["migrate", "--policy", &policy, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 6, "one failed host, budget 0: halted: {view}");
    assert!(
        states(&view).iter().all(|(_, s)| s == "rolled-back"),
        "{view}"
    );
    let after = g.seen(&fleet).await;
    assert_eq!(after, before);
    assert_eq!(net_ns(&fleet, &g.side).await, net_ns(&fleet, &g.net).await);
    assert_eq!(snapshot(&data), tree_before);
    for user in users_of(&view) {
        let known = std::process::Command::new("getent")
            .args(["passwd", &user])
            .output()
            .unwrap();
        assert!(!known.status.success(), "{user} removed");
    }
}

/// DESIGN invariant 2 for a group: the controller is killed in the middle
/// of the group — after the joined container's recreate, before its
/// dependents'; and, in a group whose sidecar fails, after the first undo's
/// intent. Restarted, each run ends whole: every member migrated (joined to
/// the new partner), or every member exactly as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_killed_mid_group_ends_with_the_whole_group_on_one_side() {
    use fleet_tests::cli::fleetctl;
    use fleet_tests::process::{free_port, spawn_controller, wait_died};
    const SIGABRT: i32 = 6;
    let root_only = [
        "sh",
        "-c",
        "[ \"$(id -u)\" = 0 ] && exec sleep 3600; exit 3",
    ];
    for (point, side_cmd) in [
        ("controller:after-done:recreate", &["sleep", "3600"][..]),
        ("controller:after-undo-intent:recreate", &root_only[..]),
    ] {
        let (fleet, base, policy) = start().await;
        let data = base.path().join("data");
        build_tree(&data, &base.path().join("outside"));
        let g = group(&fleet, &data, side_cmd).await;
        let before = g.seen(&fleet).await;
        let tree_before = snapshot(&data);
        let tls = fleet.pki.files("controller");
        let state = base.path().join("controller");
        let port = free_port();
        let hosts = [("h1", fleet.agents[0].address.as_str())];
        let mut crashing = spawn_controller(&tls, &state, port, &hosts, Some(point));
        let started = fleetctl(
            &crashing.address,
            &fleet.operator,
            &[
                "migrate", "--policy", &policy, "--yes", "--detach", "-o", "json",
            ],
        )
        .await;
        assert_eq!(started.code, 0, "{point}: {started:?}");
        let run = started.json()["run"]["id"].as_str().unwrap().to_string();
        assert_eq!(
            wait_died(&mut crashing.child, std::time::Duration::from_secs(90)),
            Some(SIGABRT),
            "{point}: the controller aborted mid-group"
        );
        drop(crashing);
        let restarted = spawn_controller(&tls, &state, port, &hosts, None);
        let watched = fleetctl(
            &restarted.address,
            &fleet.operator,
            &["runs", "watch", &run, "-o", "json"],
        )
        .await;
        let view = watched.json();
        let _users = UsersCleanup(users_of(&view));
        let states: Vec<String> = states(&view).into_iter().map(|(_, s)| s).collect();
        if side_cmd == ["sleep", "3600"] {
            assert_eq!(watched.code, 0, "{point}: {view}");
            assert!(states.iter().all(|s| s == "migrated"), "{point}: {view}");
            for member in g.seen(&fleet).await {
                assert!(member.is_non_root(), "{point}: {member:?}");
            }
            let new_net = id_of(&fleet, &g.net).await;
            assert_eq!(
                network_mode(&fleet, &g.side).await,
                format!("container:{new_net}"),
                "{point}: the sidecar joined the new net"
            );
        } else {
            assert_eq!(watched.code, 6, "{point}: {view}");
            assert!(states.iter().all(|s| s == "rolled-back"), "{point}: {view}");
            assert_eq!(g.seen(&fleet).await, before, "{point}: exactly as before");
            assert_eq!(snapshot(&data), tree_before, "{point}");
        }
        assert_eq!(
            net_ns(&fleet, &g.side).await,
            net_ns(&fleet, &g.net).await,
            "{point}: the sidecar shares net's namespace"
        );
    }
}
