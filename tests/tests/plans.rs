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
    assert_eq!(entry(&mut plan.clone(), &web)["action"]["uid"], 61500);
    assert_eq!(plan["basis"]["policy"]["text"], POLICY);

    let mut edits: Vec<(&str, Value, String)> = Vec::new();
    for field in ["uid", "gid"] {
        let mut p = plan.clone();
        entry(&mut p, &web)["action"][field] = 0.into();
        edits.push((
            "a target id of 0",
            p,
            format!(
                "saved plan was edited: container {web} on host h1: action.{field} is 0 in the file, but its policy gives 61500 now"
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
    entry(&mut p, &web)["action"]["uid"] = 61501.into();
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
            format!("config file {zero_gid} is malformed: line 5: rule 1: gid = 0 is root"),
        ),
        (
            vec!["migrate", "--policy", zero_gid, "--yes"],
            format!("config file {zero_gid} is malformed: line 5: rule 1: gid = 0 is root"),
        ),
        (
            vec!["plan", "--policy", misspelt],
            format!(
                "config file {misspelt} is malformed: line 3: rule 1: unknown order \"databse\": use one of stateless, cache, queue, database"
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
