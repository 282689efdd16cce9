//! The run options and operator controls, through the real fleetctl
//! against a real controller and real agents on the real engine: pause,
//! resume and abort mid-run, `--on-failure halt`, `--max-parallel`,
//! `--max-failures P%`, `--selector` and `--container`, `rollback --host`,
//! `runs watch --after`, the policy's hooks, probes and order, bad input,
//! confirmation off a terminal, and a dry run that changes nothing on a
//! full host snapshot.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_agent::container::Api;
use fleet_agent::engine::{Engine, EngineChoice};
use fleet_tests::engine::engine_socket;
use fleet_tests::fleet::{
    HOST_LABEL, Seen, TestFleet, UsersCleanup, lock_accounts, root_only, run_containers, seen,
    user_exists, users_of, write_policy,
};
use fleet_tests::process::{tls_args, workspace_binary};
use fleet_tests::tree::{Snap, build_tree, snapshot};
use fleet_tests::wait_for;
use serde_json::Value;

/// Short health gates: every test stays within seconds.
const POLICY: &str = "[defaults]\nmin_healthy_secs = 1\ndeadline_secs = 20\n";

/// A fleet, a scratch directory, and `POLICY` + the test's own rules.
struct Setup {
    fleet: TestFleet,
    base: tempfile::TempDir,
    policy: PathBuf,
}

impl std::ops::Deref for Setup {
    type Target = TestFleet;
    fn deref(&self) -> &TestFleet {
        &self.fleet
    }
}

async fn setup(hosts: usize, rules: &str) -> Setup {
    setup_labelled(&vec![&[][..]; hosts], rules).await
}

async fn setup_labelled(labels: &[&[(&str, &str)]], rules: &str) -> Setup {
    let fleet = TestFleet::start_labelled(labels).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(base.path(), &format!("{POLICY}{rules}"));
    Setup {
        fleet,
        base,
        policy,
    }
}

/// What `fleetctl migrate … -o json` left: its exit code, the run document,
/// and the users its plan makes (removed on drop).
struct Ran {
    code: u8,
    view: Value,
    _users: UsersCleanup,
}

impl Ran {
    fn id(&self) -> String {
        self.view["run"]["id"].as_str().unwrap().to_string()
    }
}

impl Setup {
    fn policy(&self) -> &str {
        self.policy.to_str().unwrap()
    }

    /// `fleetctl migrate --policy P --yes -o json ARGS`.
    async fn migrate(&self, args: &[&str]) -> Ran {
        let mut argv = vec!["migrate", "--policy", self.policy(), "--yes", "-o", "json"];
        argv.extend_from_slice(args);
        let out = self.ctl(&argv).await;
        assert!(out.error.is_none(), "{args:?}: {out:?}");
        let view = out.json();
        Ran {
            code: out.code,
            _users: UsersCleanup(users_of(&view)),
            view,
        }
    }

    /// Starts a run detached and returns once `name` is mid-migration: the
    /// moment an operator's pause or abort must wait for the next boundary.
    async fn detached_until_migrating(&self, args: &[&str], name: &str) -> Ran {
        let ran = self.migrate(&[args, &["--detach"]].concat()).await;
        assert_eq!(ran.code, 0, "{}", ran.view);
        let id = ran.id();
        wait_for(
            &format!("{name} to be mid-migration"),
            Duration::from_secs(30),
            || async {
                let view = self.show(&id).await;
                (container(&view, name)["state"] == "migrating").then_some(())
            },
        )
        .await;
        ran
    }

    /// `fleetctl runs show RUN -o json`.
    async fn show(&self, id: &str) -> Value {
        let out = self.ctl(&["runs", "show", id, "-o", "json"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
    }

    /// `fleetctl runs list -o json`.
    async fn runs(&self) -> Value {
        self.ctl(&["runs", "list", "-o", "json"]).await.json()
    }

    async fn seen_all(&self, names: &[&String]) -> BTreeMap<String, Seen> {
        let mut out = BTreeMap::new();
        for name in names {
            out.insert(name.to_string(), seen(self.docker(), name).await);
        }
        out
    }

    /// Each container exactly as the engine showed it in `before`.
    async fn assert_unchanged(&self, before: &BTreeMap<String, Seen>) {
        for (name, was) in before {
            assert_eq!(&seen(self.docker(), name).await, was, "{name} untouched");
        }
    }

    async fn assert_non_root(&self, names: &[&String]) {
        for name in names {
            let now = seen(self.docker(), name).await;
            assert!(now.is_non_root(), "{name} migrated: {now:?}");
        }
    }

    /// The event lines `fleetctl runs watch RUN --after SEQ` prints, before
    /// its summary (which starts with an empty line).
    async fn events(&self, id: &str, after: u64) -> Vec<String> {
        let out = self
            .ctl(&["runs", "watch", id, "--after", &after.to_string()])
            .await;
        assert!(out.error.is_none(), "{out:?}");
        out.stdout
            .lines()
            .take_while(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The record of container `name` in a run document.
fn container(view: &Value, name: &str) -> Value {
    run_containers(view)
        .into_iter()
        .find(|c| c["plan"]["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {view}"))
}

/// The element of the JSON array `list` whose `key` is `value`.
fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {list}"))
}

/// The record of host `name` in a run document.
fn host<'a>(view: &'a Value, name: &str) -> &'a Value {
    find(&view["run"]["hosts"], "name", name)
}

fn names_in(view: &Value) -> Vec<String> {
    run_containers(view)
        .iter()
        .map(|c| c["plan"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn hosts_in(view: &Value) -> Vec<String> {
    view["run"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

/// A step's record (`backup`, `verify`, ...) of a container record.
fn step<'a>(record: &'a Value, kind: &str) -> &'a Value {
    find(&record["steps"], "kind", kind)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_mid_run_stops_at_the_next_container_and_resume_runs_to_the_end() {
    let s = setup(2, "").await;
    let first = s.sleeper(1, "a").await;
    let second = s.sleeper(1, "b").await;
    let later = s.sleeper(2, "web").await;
    let before = s.seen_all(&[&second, &later]).await;

    // Waves [h1], [h2]; the pause comes while h1's first container moves.
    let ran = s.detached_until_migrating(&["--canary", "1"], &first).await;
    let id = ran.id();
    let paused = s.ctl(&["runs", "pause", &id]).await;
    assert_eq!(paused.code, 0, "{paused:?}");
    let watched = s.ctl(&["runs", "watch", &id, "-o", "json"]).await;
    assert_eq!(watched.code, 7, "watch ends on the pause: {watched:?}");

    let view = s.show(&id).await;
    assert_eq!(view["run"]["phase"], "paused", "{view}");
    assert_eq!(
        container(&view, &first)["state"],
        "migrated",
        "the container under way finished"
    );
    for name in [&second, &later] {
        let record = container(&view, name);
        assert_eq!(record["state"], "pending", "{name}: no new work");
        assert_eq!(
            record["steps"],
            serde_json::json!([]),
            "{name}: not one step"
        );
    }
    assert_eq!(host(&view, "h2")["state"], "pending");
    s.assert_non_root(&[&first]).await;
    s.assert_unchanged(&before).await;
    let table = s.ctl(&["runs", "show", &id]).await;
    assert!(
        table.stdout.contains(&format!("run {id} paused")),
        "{table:?}"
    );
    let first_id = seen(s.docker(), &first).await.id;

    // Resume: the run continues where it stood, to the end.
    let resumed = s.ctl(&["runs", "resume", &id]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let watched = s.ctl(&["runs", "watch", &id, "-o", "json"]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    let view = watched.json();
    assert_eq!(view["run"]["phase"], "succeeded");
    s.assert_non_root(&[&first, &second, &later]).await;
    assert_eq!(
        seen(s.docker(), &first).await.id,
        first_id,
        "what was done before the pause is not done again"
    );
}

/// Two hosts, waves [h1] [h2]; h1 moves `a`, then `db` (with a data tree);
/// the operator aborts while `a` is mid-migration and watches the end.
struct Aborted {
    s: Setup,
    _ran: Ran,
    view: Value,
    first: String,
    db: String,
    later: String,
    before: BTreeMap<String, Seen>,
    data: PathBuf,
    tree_before: BTreeMap<String, Snap>,
}

async fn aborted_mid_run() -> Aborted {
    let s = setup(2, "").await;
    let data = s.base.path().join("data");
    build_tree(&data, &s.base.path().join("outside"));
    let tree_before = snapshot(&data);
    let first = s.sleeper(1, "a").await;
    let db = s.with_data(1, "db", &data).await;
    let later = s.sleeper(2, "web").await;
    let before = s.seen_all(&[&first, &db, &later]).await;

    let ran = s.detached_until_migrating(&["--canary", "1"], &first).await;
    let id = ran.id();
    let aborted = s.ctl(&["runs", "abort", &id]).await;
    assert_eq!(aborted.code, 0, "{aborted:?}");
    assert!(
        aborted.stdout.contains("next container boundary"),
        "{aborted:?}"
    );
    let watched = s.ctl(&["runs", "watch", &id, "-o", "json"]).await;
    assert_eq!(watched.code, 6, "aborted is exit code 6: {watched:?}");
    Aborted {
        view: watched.json(),
        s,
        _ran: ran,
        first,
        db,
        later,
        before,
        data,
        tree_before,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_mid_run_ends_it_aborted_with_every_container_whole() {
    let a = aborted_mid_run().await;
    let view = &a.view;
    assert_eq!(view["run"]["phase"], "aborted", "{view}");
    assert!(
        view["run"]["note"].as_str().unwrap().contains("aborted"),
        "{view}"
    );
    // Whole: each container migrated, or exactly as before.
    for (name, was) in &a.before {
        let record = container(view, name);
        let now = seen(a.s.docker(), name).await;
        match record["state"].as_str().unwrap() {
            "migrated" => assert!(now.is_non_root(), "{name}: {now:?}"),
            "pending" | "rolled-back" => assert_eq!(&now, was, "{name} as before"),
            other => panic!("{name} left {other}: {record}"),
        }
    }
    // The abort waited for the container under way and started nothing after.
    assert_eq!(container(view, &a.first)["state"], "migrated");
    assert_eq!(container(view, &a.db)["state"], "pending");
    assert_eq!(container(view, &a.later)["state"], "pending");
    assert_eq!(
        snapshot(&a.data),
        a.tree_before,
        "the database's data untouched"
    );
    assert_eq!(host(view, "h2")["state"], "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_run_has_no_host_left_running() {
    let Aborted { view, .. } = aborted_mid_run().await;
    assert_eq!(view["run"]["phase"], "aborted");
    for h in view["run"]["hosts"].as_array().unwrap() {
        assert_ne!(
            h["state"], "running",
            "a finished run with a host still running: {h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_halt_starts_no_new_work_and_keeps_what_migrated() {
    let s = setup(3, "").await;
    let web1 = s.sleeper(1, "web").await;
    let app2 = s.sleeper(2, "app").await;
    let bad2 = s.container(2, "bad", root_only(&s.image)).await;
    let web3 = s.sleeper(3, "web").await;
    let before = s.seen_all(&[&bad2, &web3]).await;

    // A budget of 2: only the failure policy can stop this run.
    let ran = s
        .migrate(&[
            "--canary",
            "1",
            "--batch",
            "1",
            "--max-failures",
            "2",
            "--on-failure",
            "halt",
        ])
        .await;
    let view = &ran.view;
    assert_eq!(ran.code, 6, "halted: {view}");
    assert_eq!(view["run"]["phase"], "halted");
    assert_eq!(view["run"]["failed_hosts"], 1);
    assert!(
        view["run"]["note"]
            .as_str()
            .unwrap()
            .contains("on-failure=halt"),
        "{view}"
    );
    assert_eq!(host(view, "h2")["state"], "failed");
    // What migrated stays migrated (halt is not a rollback) ...
    s.assert_non_root(&[&web1, &app2]).await;
    assert_eq!(container(view, &app2)["state"], "migrated");
    // ... the failed container is back as it was ...
    assert_eq!(container(view, &bad2)["state"], "rolled-back");
    let bad_now = seen(s.docker(), &bad2).await;
    assert_eq!(
        (&bad_now.id, &bad_now.user, bad_now.running),
        (&before[&bad2].id, &before[&bad2].user, true)
    );
    // ... and the later wave never started.
    assert_eq!(host(view, "h3")["state"], "pending");
    assert_eq!(container(view, &web3)["steps"], serde_json::json!([]));
    assert_eq!(seen(s.docker(), &web3).await, before[&web3]);
}

/// The events `host-started` and `host-done`/`host-failed` of watch lines
/// (`HH:MM:SS [h1] host-started ...`), in stream order: the most hosts
/// that were under way at once.
fn most_hosts_at_once(lines: &[String]) -> usize {
    let mut running = BTreeSet::new();
    let (mut most, mut started, mut ended) = (0, 0, 0);
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.get(2).copied() {
            Some("host-started") => {
                assert!(running.insert(words[1]), "started twice: {line}");
                started += 1;
                most = most.max(running.len());
            }
            Some("host-done" | "host-failed") => {
                assert!(running.remove(words[1]), "ended before it started: {line}");
                ended += 1;
            }
            _ => {}
        }
    }
    assert!(started > 0 && started == ended, "{lines:#?}");
    most
}

/// From the records' timestamps: the most containers migrating at once.
fn most_containers_at_once(view: &Value) -> usize {
    let spans: Vec<(u64, u64)> = run_containers(view)
        .iter()
        .map(|c| {
            (
                c["started_unix_ms"].as_u64().unwrap(),
                c["finished_unix_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    spans
        .iter()
        .map(|(at, _)| spans.iter().filter(|(a, b)| a <= at && at < b).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn max_parallel_bounds_a_wave_watch_after_skips_and_rollback_takes_one_host() {
    let s = setup(3, "").await;
    let webs = [
        s.sleeper(1, "web").await,
        s.sleeper(2, "web").await,
        s.sleeper(3, "web").await,
    ];
    let before = s.seen_all(&webs.iter().collect::<Vec<_>>()).await;

    // One wave of three hosts, two at a time.
    let ran = s.migrate(&["--canary", "0", "--max-parallel", "2"]).await;
    assert_eq!(ran.code, 0, "{}", ran.view);
    let id = ran.id();
    assert_eq!(
        ran.view["run"]["waves"],
        serde_json::json!([["h1", "h2", "h3"]])
    );
    let all = s.events(&id, 0).await;
    assert_eq!(
        most_hosts_at_once(&all),
        2,
        "never more than 2 hosts at once, and 2 did run together: {all:#?}"
    );
    assert_eq!(most_containers_at_once(&ran.view), 2, "{}", ran.view);

    // --after SEQ: only what came after event SEQ (events are numbered
    // from 1, one a line). The last SEQ is left to the test below.
    for after in [1, 5, all.len() as u64 - 1] {
        assert_eq!(
            s.events(&id, after).await,
            all[after as usize..].to_vec(),
            "--after {after}"
        );
    }

    // Rolling back one host puts back only its container.
    let migrated = s.seen_all(&webs.iter().collect::<Vec<_>>()).await;
    let back = s
        .ctl(&["rollback", &id, "--host", "h2", "--yes", "-o", "json"])
        .await;
    assert_eq!(back.code, 0, "{back:?}");
    let rollback = back.json();
    assert_eq!(hosts_in(&rollback), ["h2"]);
    assert_eq!(names_in(&rollback), [webs[1].as_str()]);
    assert_eq!(seen(s.docker(), &webs[1]).await, before[&webs[1]]);
    for web in [&webs[0], &webs[2]] {
        assert_eq!(
            seen(s.docker(), web).await,
            migrated[web],
            "{web} stays migrated"
        );
    }
    let original = s.show(&id).await;
    assert_eq!(container(&original, &webs[1])["state"], "rolled-back");
    assert_eq!(container(&original, &webs[0])["state"], "migrated");
    assert_eq!(container(&original, &webs[2])["state"], "migrated");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_after_seq_shows_exactly_the_events_after_it() {
    let s = setup(1, "").await;
    let web = s.sleeper(1, "web").await;
    let ran = s.migrate(&["--canary", "0"]).await;
    assert_eq!(ran.code, 0, "{}", ran.view);
    s.assert_non_root(&[&web]).await;
    let id = ran.id();
    let all = s.events(&id, 0).await;
    let view = s.show(&id).await;
    assert_eq!(
        view["run"]["note"],
        Value::Null,
        "nothing to note on a run that succeeded: {view}"
    );
    let log = s.ctl(&["log", "-o", "json"]).await.json();
    let reconciled: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run.reconciled")
        .collect();
    assert!(
        reconciled.is_empty(),
        "nothing was reconciled: {reconciled:?}"
    );
    for after in 0..=all.len() {
        assert_eq!(
            s.events(&id, after as u64).await,
            all[after..].to_vec(),
            "--after {after}"
        );
    }
}

/// Three hosts, one per wave, `--max-failures 50%`; the hosts in `bad`
/// hold a container that fails its health gate.
async fn half_may_fail(bad: &[usize]) -> (Setup, Ran, Vec<String>) {
    let s = setup(3, "").await;
    let mut names = Vec::new();
    for h in 1..=3 {
        names.push(if bad.contains(&h) {
            s.container(h, "bad", root_only(&s.image)).await
        } else {
            s.sleeper(h, "web").await
        });
    }
    let ran = s
        .migrate(&["--canary", "1", "--batch", "1", "--max-failures", "50%"])
        .await;
    // 50% of 3 hosts is 1.5: one failed host is allowed, a second is not
    // (rounding up would allow two and never halt below).
    assert_eq!(ran.view["run"]["budget"], 1, "{}", ran.view);
    (s, ran, names)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_percentage_budget_lets_a_run_finish_within_it() {
    let (s, ran, names) = half_may_fail(&[1]).await;
    let view = &ran.view;
    assert_eq!(ran.code, 5, "within the budget: {view}");
    assert_eq!(view["run"]["phase"], "completed-with-failures");
    assert_eq!(view["run"]["failed_hosts"], 1);
    assert_eq!(host(view, "h1")["state"], "rolled-back");
    s.assert_non_root(&[&names[1], &names[2]]).await;
    assert_eq!(seen(s.docker(), &names[0]).await.user, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_percentage_budget_exceeded_halts_before_the_next_wave() {
    let (s, ran, names) = half_may_fail(&[1, 2]).await;
    let view = &ran.view;
    assert_eq!(ran.code, 6, "beyond the budget: {view}");
    assert_eq!(view["run"]["phase"], "halted");
    assert_eq!(view["run"]["failed_hosts"], 2);
    let note = view["run"]["note"].as_str().unwrap();
    assert!(
        note.contains("failure budget of 1 (--max-failures 50%)"),
        "{note}"
    );
    assert_eq!(host(view, "h3")["state"], "pending");
    assert_eq!(container(view, &names[2])["steps"], serde_json::json!([]));
    let web3 = seen(s.docker(), &names[2]).await;
    assert_eq!((web3.user.as_str(), web3.running), ("", true));
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_and_container_globs_pick_exactly_what_they_name() {
    let s = setup_labelled(&[&[("tier", "web")], &[("tier", "db")]], "").await;
    let (web1, cache1) = (s.sleeper(1, "web").await, s.sleeper(1, "cache").await);
    let (web2, cache2) = (s.sleeper(2, "web").await, s.sleeper(2, "cache").await);
    let before = s.seen_all(&[&web1, &cache1, &web2, &cache2]).await;

    // Choices that match nothing: usage errors that name what was asked.
    for (args, needle) in [
        (vec!["--selector", "tier=none"], "no host matches tier=none"),
        (
            vec!["--container", "no-such-*"],
            "no container matches 'no-such-*'",
        ),
        (
            vec!["--selector", "tier=db", "--container", "*-h1-web"],
            "no container matches '*-h1-web' on host(s) h2",
        ),
    ] {
        let mut argv = vec!["migrate", "--policy", s.policy(), "--yes"];
        argv.extend_from_slice(&args);
        let out = s.ctl(&argv).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        let error = out.error.unwrap_or_default();
        assert!(error.contains(needle), "{args:?}: {error}");
    }
    assert_eq!(s.runs().await, serde_json::json!([]), "no run was started");
    s.assert_unchanged(&before).await;

    // A selector: every container of the hosts it names, no other host.
    let by_label = s.migrate(&["--selector", "tier=db", "--canary", "0"]).await;
    assert_eq!(by_label.code, 0, "{}", by_label.view);
    assert_eq!(hosts_in(&by_label.view), ["h2"]);
    let mut names = names_in(&by_label.view);
    names.sort();
    assert_eq!(names, [cache2.clone(), web2.clone()]);
    s.assert_non_root(&[&web2, &cache2]).await;
    assert_eq!(seen(s.docker(), &web1).await, before[&web1]);
    assert_eq!(seen(s.docker(), &cache1).await, before[&cache1]);

    // A glob: the containers it matches, nothing else on any host.
    let after_first = s.seen_all(&[&web2, &cache2]).await;
    let by_name = s
        .migrate(&["--container", "*-h1-c?che", "--canary", "0"])
        .await;
    assert_eq!(by_name.code, 0, "{}", by_name.view);
    assert_eq!(names_in(&by_name.view), [cache1.as_str()]);
    s.assert_non_root(&[&cache1]).await;
    assert_eq!(seen(s.docker(), &web1).await, before[&web1]);
    s.assert_unchanged(&after_first).await;
}

const HOOKS_PROBES_ORDER: &str = r#"
[[rule]]
name = "*-h1-db"
hooks = [["sh", "-c", "hostname > /data/hook-ran"]]
order = "5"

[[rule]]
name = "*-h1-web"
order = "database"
probe = { exec = ["sh", "-c", "exit 0"] }

[[rule]]
name = "*-h2-web"
probe = { exec = ["sh", "-c", "echo not ready; exit 7"] }

[[rule]]
name = "*-h3-web"
probe = { tcp = "127.0.0.1:1" }
"#;

/// Host `host`'s containers in the plan, by name, as (order, class).
fn planned_order(plan: &Value, host: &str) -> BTreeMap<String, (u64, String)> {
    find(&plan["hosts"], "host", host)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                (
                    c["order"].as_u64().unwrap(),
                    c["class"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_hooks_probes_and_order_decide_a_real_run() {
    let s = setup(3, HOOKS_PROBES_ORDER).await;
    let data = s.base.path().join("db-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("table"), "rows").unwrap();
    let db = s.with_data(1, "db", &data).await;
    let web = s.sleeper(1, "web").await;
    let exec_bad = s.sleeper(2, "web").await;
    let tcp_bad = s.sleeper(3, "web").await;
    let before = s.seen_all(&[&db, &exec_bad, &tcp_bad]).await;

    // The runbook puts the stateless web before the database; the policy's
    // `order` turns that round.
    let runbook = s.ctl(&["plan", "-o", "json"]).await;
    assert_eq!(runbook.code, 0, "{runbook:?}");
    let runbook = planned_order(&runbook.json(), "h1");
    assert_eq!(runbook[&web], (1, "stateless".into()));
    assert_eq!(runbook[&db], (2, "stateful".into()));
    let plan = s.ctl(&["plan", "--policy", s.policy(), "-o", "json"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = planned_order(&plan.json(), "h1");
    assert_eq!(plan[&db], (1, "5".into()));
    assert_eq!(plan[&web], (2, "database".into()));

    let ran = s.migrate(&["--canary", "0", "--max-failures", "2"]).await;
    let view = &ran.view;
    assert_eq!(ran.code, 5, "two hosts failed their probes: {view}");
    assert_eq!(host(view, "h1")["state"], "done", "{view}");

    // The run kept the policy's order: the database moved, then the web.
    let (db_run, web_run) = (container(view, &db), container(view, &web));
    assert!(
        db_run["finished_unix_ms"].as_u64() <= web_run["started_unix_ms"].as_u64(),
        "{db_run}\n{web_run}"
    );
    s.assert_non_root(&[&db, &web]).await;

    // The hook ran inside the container (its hostname is the old
    // container's short id), before the backup read the mount.
    let hook_ran = std::fs::read_to_string(data.join("hook-ran")).unwrap();
    assert_eq!(hook_ran.trim(), &before[&db].id[..12]);
    let backup = &step(&db_run, "backup")["outcome"];
    assert!(
        backup["hooks"][0]
            .as_str()
            .unwrap()
            .starts_with("sh -c hostname > /data/hook-ran"),
        "{backup}"
    );
    let manifest = s.agents[0]
        .state
        .path()
        .join("backups")
        .join(backup["id"].as_str().unwrap())
        .join(backup["mounts"][0]["manifest"].as_str().unwrap());
    assert!(
        std::fs::read_to_string(&manifest)
            .unwrap()
            .contains("hook-ran"),
        "the backup holds what the hook wrote"
    );

    // A passing probe is recorded; a failing one fails verify and the
    // container is put back exactly.
    assert_eq!(
        step(&web_run, "verify")["outcome"]["probe"],
        "exec sh -c exit 0 ok"
    );
    for (name, hostname, expected) in [
        (
            &exec_bad,
            "h2",
            "exec probe `sh -c echo not ready; exit 7` exited 7",
        ),
        (&tcp_bad, "h3", "TCP probe to 127.0.0.1:1 failed"),
    ] {
        let record = container(view, name);
        assert_eq!(record["state"], "rolled-back", "{record}");
        assert_eq!(step(&record, "verify")["status"], "undone", "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(
            error.starts_with("verify step failed") && error.contains(expected),
            "{error}"
        );
        assert_eq!(host(view, hostname)["state"], "rolled-back");
        let now = seen(s.docker(), name).await;
        assert_eq!(
            (&now.id, now.user.as_str(), now.running),
            (&before[name].id, "", true),
            "{name} back as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let s = setup(1, "").await;
    let web = s.sleeper(1, "web").await;
    let before = s.seen_all(&[&web]).await;

    // A dedicated user with uid 0: refused with the file and the line.
    let text = format!(
        "{POLICY}\n[[rule]]\nname = \"*-web\"\nstrategy = \"dedicated\"\nuser = \"svc-zero\"\nuid = 0\n"
    );
    let line = text.lines().position(|l| l == "uid = 0").unwrap() + 1;
    let zero = s.base.path().join("zero.toml");
    std::fs::write(&zero, &text).unwrap();
    let zero = zero.to_str().unwrap();
    for command in [
        vec!["plan", "--policy", zero],
        vec!["migrate", "--policy", zero, "--yes"],
    ] {
        let out = s.ctl(&command).await;
        assert_eq!(out.code, 2, "{command:?}: {out:?}");
        let error = out.error.unwrap_or_default();
        for needle in [zero, &format!("line {line}"), "rule 1", "uid = 0 is root"] {
            assert!(error.contains(needle), "{command:?}: {needle}: {error}");
        }
    }
    assert!(!user_exists("svc-zero"));

    // A run id that does not exist, to every command that takes one.
    let id = "20200101-000000-dead";
    for command in [
        vec!["runs", "show", id],
        vec!["runs", "show", id, "-o", "json"],
        vec!["runs", "watch", id],
        vec!["runs", "watch", id, "--after", "3"],
        vec!["runs", "pause", id],
        vec!["runs", "resume", id],
        vec!["runs", "abort", id],
        vec!["prune", id, "--yes"],
        vec!["rollback", id, "--yes"],
        vec!["rollback", id, "--host", "h1", "--yes"],
    ] {
        let out = s.ctl(&command).await;
        assert_eq!(out.code, 2, "{command:?}: {out:?}");
        let error = out.error.unwrap_or_default();
        assert!(
            error.contains(&format!("no run '{id}'")) && error.contains("fleetctl runs list"),
            "{command:?}: {error}"
        );
    }
    assert_eq!(s.runs().await, serde_json::json!([]));
    s.assert_unchanged(&before).await;
}

/// The fleetctl binary as an operator's script runs it, its stdin a pipe
/// (not a terminal) that answers `y`: (exit code, stdout, stderr).
async fn fleetctl_piped(s: &Setup, args: &[&str]) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut command = Command::new(workspace_binary("fleetctl"));
    tls_args(
        command.args(["--controller", &s.controller.address]),
        &s.operator,
    )
    .args(args)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"y\n");
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_yes_and_no_terminal_nothing_starts() {
    let s = setup(1, "").await;
    let web = s.sleeper(1, "web").await;
    let before = s.seen_all(&[&web]).await;
    let policy = s.policy().to_string();
    for (args, question) in [
        (
            vec!["migrate", "--policy", &policy],
            "start this migration run",
        ),
        (
            vec![
                "migrate", "--policy", &policy, "--canary", "0", "-o", "json",
            ],
            "start this migration run",
        ),
        (vec!["rollback", "some-run"], "roll back run some-run"),
        (
            vec!["prune", "some-run"],
            "release the checkpoints of run some-run",
        ),
    ] {
        let (code, stdout, stderr) = fleetctl_piped(&s, &args).await;
        assert_eq!(code, 2, "{args:?}: {stdout} {stderr}");
        assert!(
            stderr.contains(question)
                && stderr.contains("add --yes to confirm (no terminal to ask on)"),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    assert_eq!(s.runs().await, serde_json::json!([]), "no run was started");
    s.assert_unchanged(&before).await;
    // A dry run asks nothing: it changes nothing.
    let (code, stdout, stderr) =
        fleetctl_piped(&s, &["migrate", "--policy", &policy, "--dry-run"]).await;
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("dry run: nothing was changed"), "{stdout}");
}

/// Everything on the host a run could change, in full.
#[derive(Debug, PartialEq)]
struct HostSnapshot {
    /// Every container of the host (the agent's scope label) and every
    /// container named after this fleet: the engine's whole inspect
    /// document, nothing left out (a dry run restarts, renames and
    /// recreates nothing, so even State.StartedAt, Pid and RestartCount
    /// must stay the same).
    containers: BTreeMap<String, Value>,
    /// Every volume named after this fleet or mounted by one of those
    /// containers, as the engine describes it.
    volumes: BTreeMap<String, Value>,
    /// The account databases and the dedicated users' homes.
    accounts: BTreeMap<String, Option<String>>,
    homes: BTreeSet<String>,
    /// The bind-mounted data tree: every entry's bytes, owner, mode,
    /// xattrs, mtime.
    tree: BTreeMap<String, Snap>,
    /// The agent's state directory (journals, backups): path → size.
    agent_state: BTreeMap<String, u64>,
    /// The controller's runs and audit log.
    runs: Value,
    log: Value,
}

fn files_under(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            out.insert(rel, if meta.is_dir() { 0 } else { meta.len() });
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

async fn host_snapshot(s: &Setup, api: &Api<'_>, data: &Path) -> HostSnapshot {
    let label = &s.hosts[0].1;
    let mut containers = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    for listed in api.list().await.unwrap() {
        let ours = listed["Labels"][HOST_LABEL] == label.as_str()
            || listed["Names"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n.as_str().unwrap_or("").contains(&s.prefix));
        if !ours {
            continue;
        }
        let doc = api.inspect(listed["Id"].as_str().unwrap()).await.unwrap();
        for mount in doc["Mounts"].as_array().into_iter().flatten() {
            if mount["Type"] == "volume" {
                volumes.insert(mount["Name"].as_str().unwrap().to_string(), Value::Null);
            }
        }
        containers.insert(doc["Name"].as_str().unwrap().to_string(), doc);
    }
    let listed = s
        .docker()
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .unwrap();
    for volume in listed.volumes.into_iter().flatten() {
        if volume.name.contains(&s.prefix) {
            volumes.insert(volume.name.clone(), Value::Null);
        }
    }
    for (name, doc) in volumes.iter_mut() {
        let volume = s.docker().inspect_volume(name).await.unwrap();
        *doc = serde_json::to_value(volume).unwrap();
    }
    let accounts = [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/subuid",
        "/etc/subgid",
    ]
    .into_iter()
    .map(|f| (f.to_string(), std::fs::read_to_string(f).ok()))
    .collect();
    let homes = std::fs::read_dir("/var/lib/fleet-users")
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    HostSnapshot {
        containers,
        volumes,
        accounts,
        homes,
        tree: snapshot(data),
        agent_state: files_under(s.agents[0].state.path()),
        runs: s.runs().await,
        log: s.ctl(&["log", "-o", "json"]).await.json(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_changes_nothing_on_a_full_host_snapshot() {
    let s = setup(
        1,
        "\n[[rule]]\nname = \"*-mon\"\nexempt = \"monitoring agent\"\n",
    )
    .await;
    let data = s.base.path().join("data");
    build_tree(&data, &s.base.path().join("outside"));
    let web = s.sleeper(1, "web").await;
    let db = s.with_data(1, "db", &data).await;
    let volume = s.volume("vol").await;
    let queue = s
        .mounting(
            1,
            "queue",
            &volume,
            &["sh", "-c", "echo m > /data/msg; exec sleep 3600"],
        )
        .await;
    let mon = s.sleeper(1, "mon").await;
    let engine = Engine::new(EngineChoice::Auto, Some(engine_socket()));
    let api = Api::new(engine.connected().await.unwrap());

    // No fleet agent on this machine changes an account while we look.
    let accounts = tokio::task::spawn_blocking(lock_accounts).await.unwrap();
    let before = host_snapshot(&s, &api, &data).await;
    let dry = s
        .ctl(&["migrate", "--policy", s.policy(), "--dry-run", "-o", "json"])
        .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let table = s
        .ctl(&["migrate", "--policy", s.policy(), "--dry-run"])
        .await;
    assert_eq!(table.code, 0, "{table:?}");
    let after = host_snapshot(&s, &api, &data).await;
    drop(accounts);

    // The dry run planned real work ...
    let view = dry.json();
    assert_eq!(view["run"]["id"], "dry-run");
    for name in [&web, &db, &queue] {
        assert_eq!(container(&view, name)["state"], "pending", "{name}");
    }
    assert_eq!(container(&view, &mon)["plan"]["action"]["kind"], "exempt");
    let users = users_of(&view);
    assert_eq!(users.len(), 3, "{view}");
    assert!(
        table.stdout.contains("dry run: nothing was changed"),
        "{table:?}"
    );
    // ... and did none of it.
    assert_eq!(before.containers.len(), 4, "{:?}", before.containers.keys());
    assert_eq!(before.volumes.len(), 1, "{:?}", before.volumes.keys());
    for (name, doc) in &before.containers {
        assert_eq!(Some(doc), after.containers.get(name), "container {name}");
    }
    assert_eq!(before.containers, after.containers);
    assert_eq!(before.volumes, after.volumes);
    assert_eq!(before.accounts, after.accounts);
    assert_eq!(before.homes, after.homes);
    assert_eq!(before.tree, after.tree);
    assert_eq!(before.agent_state, after.agent_state);
    assert_eq!(before.runs, serde_json::json!([]));
    assert_eq!(before.runs, after.runs);
    assert_eq!(before.log, after.log);
    for user in &users {
        assert!(!user_exists(user), "{user}");
    }
}
