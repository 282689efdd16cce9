//! Fleet runs through fleetctl, as an operator drives them: several agents
//! (each scoped to its own containers on this machine's engine), one
//! controller, a policy; waves with a canary, the failure budget, rollback
//! of a finished run, prune, stale plans, dry runs, and who may do what.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig};
use fleet_tests::engine::body;
use fleet_tests::fleet::{
    TestFleet, UsersCleanup, root_only, run_containers as containers, seen, user_exists, users_of,
    write_policy,
};
use fleet_tests::tree::{Snap, build_tree, snapshot};

const POLICY: &str = r#"
[defaults]
min_healthy_secs = 1
deadline_secs = 30

[[rule]]
name = "*-mon"
exempt = "monitoring agent: reads the host's /proc"
"#;

/// Tags the test image under a name whose passwd has a user of that name
/// (`svc`, uid 999): the planner's "image's own user".
async fn svc_image(fleet: &TestFleet) -> String {
    let tag = format!("fleet-test/svc:{}", fleet.image.rsplit(':').next().unwrap());
    fleet
        .docker()
        .tag_image(
            &fleet.image,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some("fleet-test/svc".into()),
                tag: Some(tag.rsplit(':').next().unwrap().to_string()),
            }),
        )
        .await
        .unwrap();
    tag
}

struct HostSetup {
    web: String,
    db: String,
    mon: String,
    svc: String,
    data: PathBuf,
}

async fn populate(fleet: &TestFleet, host: usize, base: &Path, svc_image: &str) -> HostSetup {
    let data = base.join(format!("h{host}-data"));
    build_tree(&data, &base.join(format!("h{host}-outside")));
    HostSetup {
        web: fleet.sleeper(host, "web").await,
        db: fleet.with_data(host, "db", &data).await,
        mon: fleet
            .container(
                host,
                "mon",
                ContainerCreateBody {
                    host_config: Some(HostConfig {
                        pid_mode: Some("host".into()),
                        ..Default::default()
                    }),
                    ..body(&fleet.image, &["sleep", "3600"])
                },
            )
            .await,
        svc: fleet
            .container(host, "svc", body(svc_image, &["sleep", "3600"]))
            .await,
        data,
    }
}

fn contents(tree: &BTreeMap<String, Snap>) -> BTreeMap<String, String> {
    tree.iter()
        .map(|(k, v)| (k.clone(), v.content.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_in_waves_then_a_rollback_of_the_finished_run() {
    let fleet = TestFleet::start(3).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let policy = policy.to_str().unwrap();
    let svc = svc_image(&fleet).await;
    let mut setups = Vec::new();
    for host in 1..=3 {
        setups.push(populate(&fleet, host, base.path(), &svc).await);
    }
    let mut before = BTreeMap::new();
    for s in &setups {
        for name in [&s.web, &s.db, &s.mon, &s.svc] {
            before.insert(name.clone(), seen(fleet.docker(), name).await);
        }
    }
    let trees_before: Vec<_> = setups.iter().map(|s| snapshot(&s.data)).collect();
    // On h1 also a store on a named volume whose files root wrote: it
    // appends to them at every start, so it starts only if they moved too.
    let volume = fleet.volume("h1-store-data").await;
    let store = fleet
        .mounting(
            1,
            "store",
            &volume,
            &["sh", "-c", "echo started >> /data/log && exec sleep 3600"],
        )
        .await;
    let store_before = seen(fleet.docker(), &store).await;
    let store_data = fleet.volume_path(&volume).await;
    let store_log = store_data.join("log");
    fleet_tests::wait_for(
        "the store's first start",
        std::time::Duration::from_secs(10),
        || async { std::fs::metadata(&store_log).ok() },
    )
    .await;

    // The plan: what each becomes, in runbook order.
    let plan = fleet.ctl(&["plan", "--policy", policy, "-o", "json"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    let h1 = &plan["hosts"][0];
    let by_name = |name: &str| {
        h1["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let s1 = &setups[0];
    assert_eq!(by_name(&s1.mon)["action"]["kind"], "exempt");
    assert_eq!(by_name(&s1.svc)["action"]["kind"], "migrate");
    assert_eq!(
        by_name(&s1.svc)["action"]["target"]["user"]["ids"]["uid"],
        999,
        "the image's own user"
    );
    assert!(
        by_name(&s1.web)["action"]["target"]["user"]["kind"] == "dedicated",
        "dedicated"
    );
    assert_eq!(
        by_name(&s1.db)["class"],
        "stateful",
        "data, not a known database"
    );
    assert!(
        by_name(&s1.web)["order"].as_u64() < by_name(&s1.db)["order"].as_u64(),
        "stateless before databases"
    );
    assert!(
        by_name(&s1.db)["action"]["mounts"][0]["changing"]
            .as_u64()
            .unwrap()
            > 0
    );

    // The run: canary h1, then h2, then h3.
    let run = fleet
        .ctl(&[
            "migrate", "--policy", policy, "--canary", "1", "--batch", "1,50%", "--yes", "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{run:?}");
    let id = view["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(view["run"]["phase"], "succeeded");
    assert_eq!(
        view["run"]["waves"],
        serde_json::json!([["h1"], ["h2"], ["h3"]])
    );
    let mut downtimes = Vec::new();
    for (s, tree_before) in setups.iter().zip(&trees_before) {
        for name in [&s.web, &s.db, &s.svc] {
            let now = seen(fleet.docker(), name).await;
            assert!(now.running, "{name} runs");
            assert_ne!(now.user, "", "{name} has a User");
            assert!(now.is_non_root(), "{name} is not root: {now:?}");
        }
        assert_eq!(seen(fleet.docker(), &s.svc).await.process_uid, Some(999));
        assert_eq!(
            seen(fleet.docker(), &s.mon).await,
            before[&s.mon],
            "exempt: untouched"
        );
        let tree = snapshot(&s.data);
        assert_eq!(contents(&tree), contents(tree_before), "data intact");
        let db_uid = seen(fleet.docker(), &s.db).await.process_uid.unwrap();
        assert_eq!(
            tree["data/root-file"].uid, db_uid,
            "root's files moved to the new user"
        );
        assert_eq!(tree["data/app-file"].uid, 1000, "remap, not flatten");
    }
    for c in containers(&view) {
        if c["state"] == "migrated" {
            downtimes.push(c["downtime_ms"].as_u64().unwrap());
        }
    }
    let store_now = seen(fleet.docker(), &store).await;
    assert!(store_now.is_non_root(), "{store_now:?}");
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&store_log).unwrap();
        assert_eq!(
            Some(meta.uid()),
            store_now.process_uid,
            "the volume's files moved"
        );
        assert_eq!(
            std::fs::read_to_string(&store_log).unwrap(),
            "started\nstarted\n",
            "kept, and written again by the new user"
        );
    }
    assert_eq!(downtimes.len(), 10);
    eprintln!(
        "three-host run: {} ms end to end; downtime per container {:?} ms",
        view["run"]["finished_unix_ms"].as_u64().unwrap()
            - view["run"]["created_unix_ms"].as_u64().unwrap(),
        downtimes
    );

    // Who did it is in the audit log.
    let log = fleet.view(&["log", "-o", "json"]).await.json();
    let entries = log.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "run.start"
            && e["who"] == "alice"
            && e["target"] == id.as_str())
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "run.finished" && e["target"] == id.as_str())
    );

    // Days later: roll the finished run back, no canary.
    let back = fleet.ctl(&["rollback", &id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    for (s, tree_before) in setups.iter().zip(&trees_before) {
        for name in [&s.web, &s.db, &s.mon, &s.svc] {
            let now = seen(fleet.docker(), name).await;
            assert_eq!(now.id, before[name].id, "{name}: the very same container");
            assert_eq!(now.user, "", "{name}");
            assert!(now.running, "{name}");
        }
        assert_eq!(
            &snapshot(&s.data),
            tree_before,
            "ownership and data exactly as before"
        );
    }
    {
        use std::os::unix::fs::MetadataExt;
        let store_back = seen(fleet.docker(), &store).await;
        assert_eq!(store_back.id, store_before.id, "the very same store");
        assert_eq!(
            std::fs::metadata(&store_log).unwrap().uid(),
            0,
            "root's again"
        );
    }
    for user in users_of(&view) {
        assert!(!user_exists(&user), "user {user} removed");
    }
    let original = fleet.ctl(&["runs", "show", &id, "-o", "json"]).await.json();
    assert!(
        containers(&original)
            .iter()
            .all(|c| c["state"] != "migrated")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_in_wave_two_rolls_that_host_back_and_the_budget_decides() {
    let fleet = TestFleet::start(3).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let policy = policy.to_str().unwrap();
    let web1 = fleet.sleeper(1, "web").await;
    let web2 = fleet.sleeper(2, "web").await;
    let data = base.path().join("h2-data");
    build_tree(&data, &base.path().join("outside"));
    let tree_before = snapshot(&data);
    let bad = fleet
        .container(
            2,
            "bad",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{}:/data", data.display())]),
                    ..Default::default()
                }),
                ..root_only(&fleet.image)
            },
        )
        .await;
    let web3 = fleet.sleeper(3, "web").await;
    let before2 = (
        seen(fleet.docker(), &web2).await,
        seen(fleet.docker(), &bad).await,
    );

    let run = fleet
        .ctl(&[
            "migrate",
            "--policy",
            policy,
            "--canary",
            "1",
            "--batch",
            "1",
            "--max-failures",
            "1",
            "--on-failure",
            "rollback-host",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(
        run.code, 5,
        "failed and rolled back, within the budget: {view}"
    );
    assert_eq!(view["run"]["phase"], "completed-with-failures");
    assert_eq!(view["run"]["failed_hosts"], 1);
    let hosts = view["run"]["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["state"], "rolled-back");
    assert!(
        hosts[1]["error"].as_str().unwrap().contains("verify"),
        "{}",
        hosts[1]
    );
    // h2 exactly as before: its migrated web put back too.
    assert_eq!(seen(fleet.docker(), &web2).await, before2.0);
    assert_eq!(seen(fleet.docker(), &bad).await.id, before2.1.id);
    assert!(seen(fleet.docker(), &bad).await.running);
    assert_eq!(snapshot(&data), tree_before);
    // The budget allowed one failure: h1 and h3 went on.
    for web in [&web1, &web3] {
        assert!(seen(fleet.docker(), web).await.is_non_root());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exceeding_the_budget_halts_before_the_next_wave() {
    let fleet = TestFleet::start(2).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let bad = fleet.container(1, "bad", root_only(&fleet.image)).await;
    let web2 = fleet.sleeper(2, "web").await;
    let before = (
        seen(fleet.docker(), &bad).await,
        seen(fleet.docker(), &web2).await,
    );
    let run = fleet
        .ctl(&[
            "migrate",
            "--policy",
            policy.to_str().unwrap(),
            "--canary",
            "1",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 6, "halted: {view}");
    assert_eq!(view["run"]["phase"], "halted");
    assert!(
        view["run"]["note"]
            .as_str()
            .unwrap()
            .contains("failure budget"),
        "{view}"
    );
    assert_eq!(
        view["run"]["hosts"][1]["state"], "pending",
        "h2 never started"
    );
    let bad_now = seen(fleet.docker(), &bad).await;
    assert_eq!(
        (bad_now.id.as_str(), bad_now.user.as_str()),
        (before.0.id.as_str(), "")
    );
    assert_eq!(seen(fleet.docker(), &web2).await, before.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_plans_dry_runs_prune_refusals_and_roles() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let policy = policy.to_str().unwrap();
    let web = fleet.sleeper(1, "web").await;
    let before = seen(fleet.docker(), &web).await;
    let plan_path = base.path().join("plan.json");
    let plan_file = plan_path.to_str().unwrap();

    // A dry run changes nothing.
    let dry = fleet
        .ctl(&["migrate", "--policy", policy, "--dry-run", "-o", "json"])
        .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["containers"][0]["plan"]["name"], web.as_str());
    assert_eq!(seen(fleet.docker(), &web).await, before);
    assert!(
        fleet
            .ctl(&["runs", "list", "-o", "json"])
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A viewer may plan and read, never change.
    assert_eq!(fleet.view(&["plan", "-o", "json"]).await.code, 0);
    let refused = fleet.view(&["migrate", "--policy", policy, "--yes"]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.error.as_deref().unwrap().contains("viewer"),
        "{refused:?}"
    );

    // A saved plan goes stale when the container changes.
    let saved = fleet
        .ctl(&["plan", "--policy", policy, "--out", plan_file, "-o", "json"])
        .await;
    assert_eq!(saved.code, 0, "{saved:?}");
    // The operator raises its memory limit after the plan was saved.
    fleet
        .docker()
        .update_container(
            &web,
            bollard::models::ContainerUpdateBody {
                memory: Some(256 * 1024 * 1024),
                memory_swap: Some(-1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stale = fleet
        .ctl(&["migrate", "--plan", plan_file, "--policy", policy, "--yes"])
        .await;
    assert_ne!(stale.code, 0);
    assert!(
        stale.error.as_deref().unwrap().contains("stale"),
        "{stale:?}"
    );
    assert_eq!(seen(fleet.docker(), &web).await.id, before.id);

    // A fresh plan applies.
    fleet
        .ctl(&["plan", "--policy", policy, "--out", plan_file])
        .await;
    let run = fleet
        .ctl(&[
            "migrate", "--plan", plan_file, "--policy", policy, "--yes", "-o", "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{view}");
    let id = view["run"]["id"].as_str().unwrap().to_string();
    let checkpoint = format!("{web}.fleet-pre-{id}");
    assert!(
        fleet
            .docker()
            .inspect_container(&checkpoint, None)
            .await
            .is_ok(),
        "checkpoint kept"
    );

    // A viewer cannot roll back, prune, pause or abort.
    for args in [
        vec!["rollback", id.as_str(), "--yes"],
        vec!["prune", id.as_str(), "--yes"],
        vec!["runs", "pause", id.as_str()],
        vec!["runs", "abort", id.as_str()],
    ] {
        let out = fleet.view(&args).await;
        assert_ne!(out.code, 0, "{args:?}");
        assert!(
            out.error.as_deref().unwrap().contains("viewer"),
            "{args:?}: {out:?}"
        );
    }

    // Prune releases the checkpoints; a later rollback is refused, clearly.
    let pruned = fleet.ctl(&["prune", &id, "--yes"]).await;
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(
        fleet
            .docker()
            .inspect_container(&checkpoint, None)
            .await
            .is_err(),
        "checkpoint removed"
    );
    let late = fleet.ctl(&["rollback", &id, "--yes"]).await;
    assert_ne!(late.code, 0);
    assert!(
        late.error.as_deref().unwrap().contains("pruned"),
        "{late:?}"
    );
    let migrated = seen(fleet.docker(), &web).await;
    assert!(migrated.is_non_root());

    // Bad input: each a clear error, nothing changed.
    for (args, needle) in [
        (
            vec!["migrate", "--host", "nope", "--yes"],
            "unknown host 'nope'",
        ),
        (
            vec!["migrate", "--selector", "tier=none", "--yes"],
            "tier=none",
        ),
        (
            vec!["migrate", "--container", "no-such-*", "--yes"],
            "no container matches",
        ),
        (vec!["runs", "show", "no-such-run"], "no run 'no-such-run'"),
        (
            vec!["rollback", "no-such-run", "--yes"],
            "no run 'no-such-run'",
        ),
        (vec!["migrate", "--batch", "0", "--yes"], "batch size '0'"),
        (vec!["migrate", "--max-failures", "lots", "--yes"], "lots"),
    ] {
        let out = fleet.ctl(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.error.as_deref().unwrap().contains(needle),
            "{args:?}: {out:?}"
        );
    }
    let bad_policy = base.path().join("bad.toml");
    std::fs::write(&bad_policy, "[[rule]]\nname = \"*\"\nstrategy = \"0:0\"\n").unwrap();
    let out = fleet
        .ctl(&["plan", "--policy", bad_policy.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.error.as_deref().unwrap().contains("bad.toml"),
        "{out:?}"
    );
    assert!(out.error.as_deref().unwrap().contains("line 3"), "{out:?}");
    assert!(
        out.error.as_deref().unwrap().contains("uid or gid of 0"),
        "{out:?}"
    );
    assert_eq!(seen(fleet.docker(), &web).await, migrated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_run_holds_its_containers_until_resumed() {
    let fleet = TestFleet::start(2).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let policy = policy.to_str().unwrap();
    let web1 = fleet.sleeper(1, "web").await;
    let web2 = fleet.sleeper(2, "web").await;
    let before2 = seen(fleet.docker(), &web2).await;
    let run = fleet
        .ctl(&[
            "migrate",
            "--policy",
            policy,
            "--canary",
            "1",
            "--pause-after-canary",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 7, "paused after the canary: {view}");
    let id = view["run"]["id"].as_str().unwrap().to_string();
    assert!(seen(fleet.docker(), &web1).await.is_non_root());
    assert_eq!(seen(fleet.docker(), &web2).await, before2);

    // A second run may not touch what the paused run holds.
    let second = fleet
        .ctl(&["migrate", "--host", "h2", "--policy", policy, "--yes"])
        .await;
    assert_ne!(second.code, 0);
    let error = second.error.unwrap();
    assert!(error.contains(&id) && error.contains(&web2), "{error}");
    assert_eq!(seen(fleet.docker(), &web2).await, before2);

    assert_eq!(fleet.ctl(&["runs", "resume", &id]).await.code, 0);
    let watched = fleet.ctl(&["runs", "watch", &id, "-o", "json"]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert_eq!(watched.json()["run"]["phase"], "succeeded");
    assert!(seen(fleet.docker(), &web2).await.is_non_root());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_uid_that_belongs_to_another_user_is_refused_and_nothing_changes() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let taken = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.len() > 2 && fields[2] != "0")
                .then(|| (fields[0].to_string(), fields[2].to_string()))
        })
        .unwrap();
    let policy = write_policy(
        base.path(),
        &format!(
            "{POLICY}\n[[rule]]\nname = \"*-web\"\nstrategy = \"dedicated\"\nuser = \"svc-collide\"\nuid = {}\n",
            taken.1
        ),
    );
    let web = fleet.sleeper(1, "web").await;
    let before = seen(fleet.docker(), &web).await;
    let run = fleet
        .ctl(&[
            "migrate",
            "--policy",
            policy.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let _users = UsersCleanup(vec!["svc-collide".into()]);
    let view = run.json();
    assert_eq!(run.code, 6, "{view}");
    let error = view["run"]["hosts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("already belongs to user '{}'", taken.0)),
        "{error}"
    );
    assert_eq!(seen(fleet.docker(), &web).await, before, "nothing changed");
    assert!(!user_exists("svc-collide"));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_rollback_run_undoes_every_host_the_run_touched() {
    let fleet = TestFleet::start(2).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), POLICY);
    let web1 = fleet.sleeper(1, "web").await;
    let bad = fleet.container(2, "bad", root_only(&fleet.image)).await;
    let before = (
        seen(fleet.docker(), &web1).await,
        seen(fleet.docker(), &bad).await,
    );
    let run = fleet
        .ctl(&[
            "migrate",
            "--policy",
            policy.to_str().unwrap(),
            "--canary",
            "1",
            "--max-failures",
            "5",
            "--on-failure",
            "rollback-run",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 5, "{view}");
    assert_eq!(view["run"]["phase"], "rolled-back");
    assert_eq!(
        seen(fleet.docker(), &web1).await,
        before.0,
        "the canary host put back too"
    );
    let bad_now = seen(fleet.docker(), &bad).await;
    assert_eq!((bad_now.id, bad_now.user), (before.1.id, before.1.user));
    assert!(
        containers(&view)
            .iter()
            .all(|c| c["state"] == "rolled-back"),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_walk_left_alone_and_the_downtime_are_said_where_the_operator_looks() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    // Fixed ids: no account to create.
    let policy = write_policy(
        base.path(),
        "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"*-db\"\nstrategy = \"61540:61540\"\n",
    );
    let policy = policy.to_str().unwrap();
    let data = base.path().join("data");
    // A device node and a hard link whose other name is a host file.
    build_tree(&data, &base.path().join("outside"));
    let db = fleet.with_data(1, "db", &data).await;

    let run = fleet.ctl(&["migrate", "--policy", policy, "--yes"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // The migrate output: one warning line for the container.
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(&format!("[h1] {db} ownership: warning ")))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stdout);
    assert!(
        warnings[0].contains("left alone under its mounts (still owned as before): 1 hard link(s) with names outside the tree")
            && warnings[0].contains("1 device node(s)")
            && warnings[0].contains("(/data/data/null-device)"),
        "{}",
        warnings[0]
    );

    let id = fleet.ctl(&["runs", "list", "-o", "json"]).await.json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = fleet.ctl(&["runs", "show", &id, "-o", "json"]).await.json();
    let c = &containers(&view)[0];
    assert_eq!(c["state"], "migrated", "{view}");
    assert!(
        c["left_alone"]["hard_links"]["paths"][0]
            .as_str()
            .unwrap()
            .contains("host-hardlink"),
        "{c}"
    );
    assert!(
        c["left_alone"]["devices"]["paths"][0]
            .as_str()
            .unwrap()
            .ends_with("null-device"),
        "{c}"
    );
    let downtime = c["downtime_ms"].as_u64().unwrap();
    // The table: both downtimes when the agent measured both, and the note.
    let table = fleet.ctl(&["runs", "show", &id]).await;
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("h1") && l.contains(&db) && l.contains("migrated"))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    let shown =
        fleet_core::migration::downtime_text(Some(downtime), c["downtime_from_stop_ms"].as_u64())
            .unwrap();
    assert!(
        row.contains(&shown) && row.contains("left alone: 1 hard link(s)"),
        "{row}"
    );
    // The audit log's line of the container.
    let log = fleet.view(&["log", "-o", "json"]).await.json();
    let line = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "container.migrated")
        .unwrap_or_else(|| panic!("{log}"));
    let result = line["result"].as_str().unwrap();
    assert!(
        result.starts_with(&format!("runs as 61540:61540, downtime {shown}"))
            && result.contains("left alone under its mounts")
            && result.contains("1 device node(s)"),
        "{result}"
    );
}
