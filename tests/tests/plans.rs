//! Saved plans through fleetctl, against a real controller and agent: a
//! plan file is made again from the policy it records and today's audit,
//! and any edit (a target of 0, a container added, the policy changed) is
//! refused, naming the container and the difference, with nothing changed
//! on the host. And the agent itself never recreates a container as uid 0
//! or gid 0, whoever asks.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use fleet_proto::agent::v1 as pb;
use fleet_tests::agent_client::{collect, connect, key};
use fleet_tests::engine::body;
use fleet_tests::fleet::{Seen, TestFleet, seen};
use fleet_tests::tree::{Snap, build_tree, snapshot};
use serde_json::Value;

/// The web containers move to fixed ids; the health gate is short.
const POLICY: &str =
    "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"*-web\"\nstrategy = \"61500:61500\"\n";

/// Writes `text` to `dir/name`; its path.
fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Everything a refused start must leave as it was.
struct Host {
    containers: BTreeMap<String, Seen>,
    data: BTreeMap<String, Snap>,
}

async fn host_now(fleet: &TestFleet, names: &[&String], data: &Path) -> Host {
    let mut containers = BTreeMap::new();
    for name in names {
        containers.insert(name.to_string(), seen(fleet.docker(), name).await);
    }
    Host {
        containers,
        data: snapshot(data),
    }
}

fn assert_unchanged(before: &Host, after: &Host, what: &str) {
    assert_eq!(before.containers, after.containers, "{what}: containers");
    assert!(before.data == after.data, "{what}: the data's ownership");
}

/// The saved plan's entry for container `name`.
fn entry<'a>(plan: &'a mut Value, name: &str) -> &'a mut Value {
    let containers = plan["hosts"][0]["containers"].as_array_mut().unwrap();
    let at = containers.iter().position(|c| c["name"] == name);
    &mut containers[at.unwrap_or_else(|| panic!("{name} is not in the plan"))]
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_saved_plans_are_refused_naming_the_container_and_nothing_changes() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let policy = &file(base.path(), "policy.toml", POLICY);
    let data = base.path().join("data");
    build_tree(&data, &base.path().join("outside"));
    let web = fleet.with_data(1, "web", &data).await;
    let app = fleet.sleeper(1, "app").await;
    let mut as_1000 = body(&fleet.image, &["sleep", "3600"]);
    as_1000.user = Some("1000:1000".into());
    let nonroot = fleet.container(1, "nonroot", as_1000).await;
    let before = host_now(&fleet, &[&web, &app, &nonroot], &data).await;

    let made = fleet.ctl(&["plan", "--policy", policy, "-o", "json"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    let plan = made.json();
    assert_eq!(
        entry(&mut plan.clone(), &web)["action"]["target"]["user"]["ids"]["uid"],
        61500
    );
    assert_eq!(plan["basis"]["policy"]["text"], POLICY);

    // A target id of 0 does not even read: the target's type has no root.
    for field in ["uid", "gid"] {
        let mut p = plan.clone();
        entry(&mut p, &web)["action"]["target"]["user"]["ids"][field] = 0.into();
        let path = file(base.path(), "root.json", &p.to_string());
        let out = fleet
            .ctl(&["migrate", "--plan", path.as_str(), "--yes"])
            .await;
        assert_eq!(out.code, 2, "a target {field} of 0: {out:?}");
        let error = out.error.clone().unwrap_or_default();
        assert!(
            error.contains(&format!("{field} 0 is root"))
                && error.contains("a migration's target is never root")
                && error.contains("nothing was changed"),
            "a target {field} of 0: {error}"
        );
    }
    let mut edits: Vec<(&str, Value, String)> = Vec::new();
    for field in ["uid", "gid"] {
        let mut p = plan.clone();
        entry(&mut p, &web)["action"]["target"]["user"]["ids"][field] = 61501.into();
        edits.push((
            "another target id",
            p,
            format!(
                "saved plan was edited: container {web} on host h1: action.target.user.ids.{field} is 61501 in the file, but its policy gives 61500 now"
            ),
        ));
    }
    // A container the policy leaves alone, made to migrate in the file.
    let mut p = plan.clone();
    let web_action = entry(&mut p, &web)["action"].clone();
    entry(&mut p, &nonroot)["action"] = web_action;
    edits.push((
        "a container added to the migration",
        p,
        format!(
            "container {nonroot} on host h1: the file says migrate (61500:61500), but its policy says skip (already runs as uid 1000) now"
        ),
    ));
    // A container added to a plan made for another.
    let narrow = fleet
        .ctl(&[
            "plan",
            "--policy",
            policy,
            "--container",
            &web,
            "-o",
            "json",
        ])
        .await
        .json();
    let mut p = narrow.clone();
    let app_entry = entry(&mut plan.clone(), &app).clone();
    p["hosts"][0]["containers"]
        .as_array_mut()
        .unwrap()
        .push(app_entry);
    edits.push((
        "a container added to the file",
        p,
        format!(
            "container {app} on host h1 is not among the containers it was planned for (--container {web})"
        ),
    ));
    // The policy in the file rewritten to match an edited target.
    let mut p = plan.clone();
    p["basis"]["policy"]["text"] = POLICY.replace("61500:61500", "61501:61501").into();
    entry(&mut p, &web)["action"]["target"]["user"]["ids"]["uid"] = 61501.into();
    edits.push((
        "the recorded policy",
        p,
        "the policy recorded in it no longer has the sha256".to_string(),
    ));

    for (what, edited, needle) in edits {
        let path = file(base.path(), "edited.json", &edited.to_string());
        for extra in [&["--yes"][..], &["--dry-run"][..]] {
            let mut args = vec!["migrate", "--plan", path.as_str()];
            args.extend_from_slice(extra);
            let out = fleet.ctl(&args).await;
            assert_eq!(out.code, 1, "{what}: {out:?}");
            let error = out.error.clone().unwrap_or_default();
            assert!(
                error.contains(&needle) && error.contains("nothing was changed"),
                "{what}: want {needle:?} in {error}"
            );
        }
        assert_unchanged(
            &before,
            &host_now(&fleet, &[&web, &app, &nonroot], &data).await,
            what,
        );
    }
    let runs = fleet.ctl(&["runs", "list", "-o", "json"]).await.json();
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(0),
        "no run started: {runs}"
    );

    // The file as `plan --out` wrote it applies: made again, it says the same.
    let saved = &base.path().join("plan.json").display().to_string();
    let out = fleet
        .ctl(&["plan", "--policy", policy, "--out", saved])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let path_line = format!("{} → /data: ", data.display());
    assert!(out.stdout.contains(&path_line), "{}", out.stdout);
    let apply = ["migrate", "--plan", saved, "--dry-run", "-o", "json"];
    let dry = fleet.ctl(&apply).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let view = dry.json();
    let planned: Vec<(&str, &str)> = view["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["plan"]["name"].as_str().unwrap(),
                c["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(planned.contains(&(web.as_str(), "pending")), "{view}");
    assert!(
        planned.contains(&(nonroot.as_str(), "not-migrated")),
        "{view}"
    );
    assert_unchanged(
        &before,
        &host_now(&fleet, &[&web, &app, &nonroot], &data).await,
        "dry run",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_is_not_narrowed_or_replanned_and_zero_ids_never_load() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let policy = &file(base.path(), "policy.toml", POLICY);
    let web = fleet.sleeper(1, "web").await;
    let before = seen(fleet.docker(), &web).await;
    let saved = base.path().join("plan.json");
    let saved = saved.to_str().unwrap();
    let made = fleet
        .ctl(&["plan", "--policy", policy, "--out", saved])
        .await;
    assert_eq!(made.code, 0, "{made:?}");

    let other = &file(
        base.path(),
        "other.toml",
        "[defaults]\nmin_healthy_secs = 2\n",
    );
    let zero_gid = &file(
        base.path(),
        "zero-gid.toml",
        "[[rule]]\nname = \"*-web\"\nstrategy = \"dedicated\"\nuid = 2001\ngid = 0\n",
    );
    let misspelt = &file(
        base.path(),
        "misspelt.toml",
        "[[rule]]\nname = \"*-web\"\norder = \"databse\"\n",
    );
    for (args, needle) in [
        (
            vec![
                "migrate",
                "--plan",
                saved,
                "--container",
                web.as_str(),
                "--yes",
            ],
            "--container cannot be combined with --plan".to_string(),
        ),
        (
            vec!["migrate", "--plan", saved, "--host", "h1", "--dry-run"],
            "--host cannot be combined with --plan".to_string(),
        ),
        (
            vec!["migrate", "--plan", saved, "--policy", other, "--yes"],
            format!("--policy {other} is not the policy the saved plan was made with"),
        ),
        (
            vec!["plan", "--policy", zero_gid],
            format!("policy {zero_gid} is malformed: line 5: rule 1: gid = 0 is root"),
        ),
        (
            vec!["migrate", "--policy", zero_gid, "--yes"],
            format!("policy {zero_gid} is malformed: line 5: rule 1: gid = 0 is root"),
        ),
        (
            vec!["plan", "--policy", misspelt],
            format!(
                "policy {misspelt} is malformed: line 3: rule 1: unknown order \"databse\": use one of stateless, cache, queue, database"
            ),
        ),
    ] {
        let out = fleet.ctl(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        let error = out.error.clone().unwrap_or_default();
        assert!(
            error.contains(&needle),
            "{args:?}: want {needle:?} in {error}"
        );
        assert_eq!(seen(fleet.docker(), &web).await, before, "{args:?}");
    }
    // The plan's own policy named again is fine.
    let same = fleet
        .ctl(&["migrate", "--plan", saved, "--policy", policy, "--dry-run"])
        .await;
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(seen(fleet.docker(), &web).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_a_target_gid_of_zero_as_well_as_uid_zero() {
    let fleet = TestFleet::start(1).await;
    let web = fleet.sleeper(1, "web").await;
    let before = seen(fleet.docker(), &web).await;
    let mut agent = connect(&fleet.agents[0].address, &fleet.pki.files("controller"));
    let run = "plans-zero-ids";
    for (step, uid, gid) in [("gid0", 61500, 0), ("uid0", 0, 61500), ("both", 0, 0)] {
        let refused = collect(
            agent
                .recreate(pb::RecreateRequest {
                    key: key(run, step),
                    container: web.clone(),
                    uid,
                    gid,
                    allow_layer_loss: false,
                    together: Vec::new(),
                })
                .await,
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(&format!(
                "never sets uid 0 or gid 0 (asked for {uid}:{gid})"
            )),
            "{refused:?}"
        );
        assert_eq!(seen(fleet.docker(), &web).await, before, "{step}");
    }
    // Refused before the journal: nothing to undo, nothing recorded.
    let journal = agent
        .journal(pb::JournalRequest { run_id: run.into() })
        .await;
    if let Ok(journal) = journal {
        let records: Value = serde_json::from_str(&journal.into_inner().records_json).unwrap();
        assert_eq!(records.as_array().map(Vec::len), Some(0), "{records}");
    }
}

/// Tags the test image as `repo:tag` (its passwd and busybox; the name
/// is what the planner reads).
async fn tagged(fleet: &TestFleet, repo: &str, tag: &str) -> String {
    fleet
        .docker()
        .tag_image(
            &fleet.image,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(repo.into()),
                tag: Some(tag.into()),
            }),
        )
        .await
        .unwrap();
    format!("{repo}:{tag}")
}

/// `name:x:id:...` of this machine's passwd or group: (id, name).
fn host_accounts(path: &str) -> Vec<(u32, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_string();
            f.next()?;
            Some((f.next()?.parse().ok()?, name))
        })
        .collect()
}

/// What the plan should say about uid `uid` and gid `gid` on this host.
fn expected_collisions(uid: u32, gid: u32) -> Vec<String> {
    let mut out: Vec<String> = host_accounts("/etc/passwd")
        .into_iter()
        .filter(|(id, _)| *id == uid)
        .map(|(id, name)| format!("uid {id} is the host's user {name}"))
        .collect();
    out.extend(
        host_accounts("/etc/group")
            .into_iter()
            .filter(|(id, _)| *id == gid)
            .map(|(id, name)| format!("gid {id} is the host's group {name}")),
    );
    out
}

fn collisions(action: &Value) -> Vec<String> {
    action["host_id_collisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let kind = if c["kind"] == "uid" { "user" } else { "group" };
            format!(
                "{} {} is the host's {kind} {}",
                c["kind"].as_str().unwrap(),
                c["id"],
                c["owner"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn target_ids_of_host_accounts_are_named_and_the_policy_warns_refuses_or_picks_a_dedicated_account()
 {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    // The image's own user is svc, 999:999 (gid 999 is systemd-journal on
    // Debian); "fixed" asks for the ids of this machine's first accounts.
    let svc_image = tagged(&fleet, "fleet-test/svc", "plans").await;
    let svc = fleet
        .container(1, "svc", body(&svc_image, &["sleep", "3600"]))
        .await;
    let fixed = fleet.sleeper(1, "fixed").await;
    let (uid, _) = host_accounts("/etc/passwd")
        .into_iter()
        .find(|(id, _)| *id > 0)
        .unwrap();
    let (gid, _) = host_accounts("/etc/group")
        .into_iter()
        .find(|(id, _)| *id > 0)
        .unwrap();
    let rules = format!("[[rule]]\nname = \"*-fixed\"\nstrategy = \"{uid}:{gid}\"\n");
    let plan = |policy: String| {
        let path = file(base.path(), "policy.toml", &policy);
        let fleet = &fleet;
        async move { fleet.ctl(&["plan", "--policy", &path, "-o", "json"]).await }
    };
    let made = plan(rules.clone()).await;
    assert_eq!(made.code, 0, "{made:?}");
    let mut json = made.json();
    let fixed_action = entry(&mut json, &fixed)["action"].clone();
    let expected = expected_collisions(uid, gid);
    assert!(
        !expected.is_empty(),
        "this machine has accounts {uid} and {gid}"
    );
    assert_eq!(collisions(&fixed_action), expected, "{fixed_action}");
    let svc_action = entry(&mut json, &svc)["action"].clone();
    assert_eq!(
        (
            svc_action["target"]["user"]["ids"]["uid"].as_u64(),
            svc_action["target"]["user"]["ids"]["gid"].as_u64()
        ),
        (Some(999), Some(999))
    );
    assert_eq!(
        collisions(&svc_action),
        expected_collisions(999, 999),
        "{svc_action}"
    );

    // The table marks each one under its container.
    let path = file(base.path(), "policy.toml", &rules);
    let table = fleet.ctl(&["plan", "--policy", &path]).await;
    for c in &expected {
        assert!(
            table
                .stdout
                .contains(&format!("! {c}: without a user namespace")),
            "{}",
            table.stdout
        );
    }

    // refuse: the container is refused, naming the account.
    let refused = plan(format!(
        "[defaults]\non_host_id_collision = \"refuse\"\n{rules}"
    ))
    .await;
    let mut json = refused.json();
    let action = entry(&mut json, &fixed)["action"].clone();
    assert_eq!(action["kind"], "refused", "{action}");
    assert!(
        action["reasons"][0]
            .as_str()
            .unwrap()
            .contains(&expected[0]),
        "{action}"
    );

    // dedicated: a dedicated account instead, saying what it replaces.
    let swapped = plan(format!("{rules}on_host_id_collision = \"dedicated\"\n")).await;
    let mut json = swapped.json();
    let action = entry(&mut json, &fixed)["action"].clone();
    assert_eq!(action["kind"], "migrate", "{action}");
    assert!(
        action["target"]["user"]["name"]
            .as_str()
            .unwrap()
            .starts_with("svc-"),
        "{action}"
    );
    assert_eq!(action["target"]["user"]["kind"], "dedicated", "{action}");
    assert_eq!(action["target"]["user"]["uid"], Value::Null);
    let instead = action["instead_of"].as_str().unwrap();
    assert!(
        instead.starts_with(&format!("{uid}:{gid}: {}", expected[0])),
        "{instead}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_class_is_what_the_container_is_and_each_path_says_what_stays_as_it_is() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let redis = tagged(&fleet, "fleet-test/redis", "7").await;
    let cache = fleet
        .container(1, "cache", body(&redis, &["sleep", "3600"]))
        .await;
    let mut listens = body(&fleet.image, &["sleep", "3600"]);
    listens.exposed_ports = Some(vec!["5432/tcp".into()]);
    let orders = fleet.container(1, "orders", listens).await;
    let web = fleet.sleeper(1, "web").await;
    // Data of its own, not a known service: stateful, not "database".
    let data = base.path().join("data");
    build_tree(&data, &base.path().join("outside"));
    let files = fleet.with_data(1, "files", &data).await;
    let policy = file(
        base.path(),
        "policy.toml",
        "[[rule]]\nname = \"*\"\nstrategy = \"61530:61530\"\n",
    );
    let made = fleet
        .ctl(&["plan", "--policy", &policy, "-o", "json"])
        .await;
    assert_eq!(made.code, 0, "{made:?}");
    let json = made.json();
    let order: Vec<(String, String)> = json["hosts"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["class"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (web.clone(), "stateless".to_string()),
            (cache.clone(), "cache".to_string()),
            (files.clone(), "stateful".to_string()),
            (orders.clone(), "database".to_string()),
        ]
    );

    // The mount counts what the remap changes: not the device node, not
    // the hard link with a name outside, the inner hard link once.
    let mut json = json;
    let mount = entry(&mut json, &files)["action"]["mounts"][0].clone();
    let audit = fleet.ctl(&["audit", "-o", "json"]).await.json();
    let owners = audit["hosts"][0]["report"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == files.as_str())
        .unwrap()["mounts"][0]["ownership"]["top_owners"]
        .clone();
    let root_owned: u64 = owners
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["uid"] == 0 || o["gid"] == 0)
        .map(|o| o["entries"].as_u64().unwrap())
        .sum();
    assert_eq!(
        mount["changing"].as_u64().unwrap(),
        root_owned - 3,
        "{mount} {owners}"
    );
    assert_eq!(mount["left_alone_count"], 2, "{mount}");
    let left: Vec<&str> = mount["left_alone"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        left.contains(&"data/null-device (a device node: never handed to a service)")
            && left.iter().any(|l| l.starts_with(
                "data/host-hardlink (a hard link with 1 of its 2 names outside the tree"
            )),
        "{left:?}"
    );
    let table = fleet.ctl(&["plan", "--policy", &policy]).await;
    let source = mount["source"].as_str().unwrap();
    assert!(
        table.stdout.contains(&format!(
            "{source} → /data: {} of {} entries change owner, 2 left alone",
            mount["changing"], mount["entries"]
        )) && table.stdout.contains(&format!(
            "left alone: {source}/data/null-device (a device node"
        )),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_a_recreate_loses_is_refused_in_the_plan_before_anything_moves_unless_the_rule_allows_it()
 {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let name = fleet
        .container(
            1,
            "layered",
            body(
                &fleet.image,
                &["sh", "-c", "echo tuned > /etc/app.conf; exec sleep 3600"],
            ),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = seen(fleet.docker(), &name).await;
    let strict = file(
        base.path(),
        "strict.toml",
        "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"*\"\nstrategy = \"61540:61540\"\n",
    );
    let planned = fleet
        .ctl(&["plan", "--policy", &strict, "-o", "json"])
        .await;
    assert_eq!(planned.code, 0, "{planned:?}");
    let c = &planned.json()["hosts"][0]["containers"][0];
    assert_eq!(c["action"]["kind"], "refused", "{c}");
    let reason = c["action"]["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("/etc/app.conf") && reason.contains("allow_layer_loss = true"),
        "{reason}"
    );
    // The run refuses it too, and nothing was stopped or changed.
    let _ = fleet
        .ctl(&["migrate", "--policy", &strict, "--yes", "-o", "json"])
        .await;
    assert_eq!(seen(fleet.docker(), &name).await, before, "untouched");

    let lenient = file(
        base.path(),
        "lenient.toml",
        "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"*\"\nstrategy = \"61540:61540\"\nallow_layer_loss = true\n",
    );
    let planned = fleet
        .ctl(&["plan", "--policy", &lenient, "-o", "json"])
        .await;
    let c = &planned.json()["hosts"][0]["containers"][0];
    assert_eq!(c["action"]["kind"], "migrate", "{c}");
    assert_eq!(c["action"]["layer_loss_allowed"][0], "/etc/app.conf", "{c}");
    let table = fleet.ctl(&["plan", "--policy", &lenient]).await;
    assert!(
        table
            .stdout
            .contains("! the recreate loses what its writable layer holds (/etc/app.conf)"),
        "{}",
        table.stdout
    );
    let run = fleet
        .ctl(&["migrate", "--policy", &lenient, "--yes", "-o", "json"])
        .await;
    assert_eq!(
        run.code, 0,
        "the recreate was told the loss is allowed: {run:?}"
    );
    let after = seen(fleet.docker(), &name).await;
    assert_eq!(after.user, "61540:61540");
    assert!(after.is_non_root(), "{after:?}");
}
