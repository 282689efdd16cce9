//! What a live service does around a migration, on the real engine: it
//! writes on SIGTERM (a rollback stops it gracefully), its root entrypoint
//! makes runtime directories (the recreate gives them to the target ids),
//! the engine re-populates its empty volume (the recreate re-owns the
//! root), and its downtime runs from the old container's exit.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use bollard::models::{ContainerCreateBody, HostConfig};
use fleet_tests::engine::body;
use fleet_tests::fleet::{TestFleet, UsersCleanup, run_containers, users_of, write_policy};
use serde_json::Value;

/// `fleetctl migrate --container NAME [EXTRA] --yes -o json`, which must
/// succeed: its view, and the cleanup of the users it created.
async fn migrated(fleet: &TestFleet, name: &str, extra: &[&str]) -> (Value, UsersCleanup) {
    let mut args = vec!["migrate", "--container", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--yes", "-o", "json"]);
    let run = fleet.ctl(&args).await;
    let view = run.json();
    let users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "the migration succeeds: {run:?}");
    (view, users)
}

/// Writes a marker into /data on SIGTERM once it no longer runs as root.
const GRACEFUL: &str = r#"
trap 'if [ "$(id -u)" != 0 ]; then echo bye > /data/sigterm; fi; exit 0' TERM
while true; do sleep 1 & wait $!; done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_stops_the_migrated_service_with_its_own_stop_signal() {
    let fleet = TestFleet::start(1).await;
    let data = tempfile::tempdir().unwrap();
    let name = fleet
        .mounting(
            1,
            "graceful",
            &data.path().display().to_string(),
            &["sh", "-c", GRACEFUL],
        )
        .await;
    let (view, _users) = migrated(&fleet, &name, &[]).await;
    assert!(!data.path().join("sigterm").exists(), "not stopped yet");

    let id = view["run"]["id"].as_str().unwrap();
    let back = fleet.ctl(&["rollback", id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let marker = data.path().join("sigterm");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("bye\n"),
        "the migrated service got SIGTERM and wrote its marker before it was removed"
    );
    assert_eq!(
        std::fs::metadata(&marker).unwrap().uid(),
        0,
        "what it wrote then is the pre-run owner's again"
    );
}

/// Starts as root, makes its runtime directory `$DIR` (or takes the
/// image's) and gives it to `app`, then drops to `app` (the way redis's or
/// postgres's entrypoints do); the service cannot start without that
/// directory being its own.
const ENTRYPOINT: &str = r#"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$DIR" && chown app:app "$DIR" && chmod 750 "$DIR"
  exec su app -c "$SERVE"
fi
exec sh -c "$SERVE"
"#;
const SERVE: &str = "SERVE=echo $$ > $DIR/pid || exit 1; exec sleep 3600";

/// `docker exec NAME ARGV`: (exit code, stdout and stderr).
fn docker_exec(name: &str, argv: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("docker")
        .arg("exec")
        .arg(name)
        .args(argv)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn find_key<'v>(value: &'v Value, key: &str, out: &mut Vec<&'v Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    out.push(v);
                }
                find_key(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_key(v, key, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_directory_the_entrypoint_made_is_the_target_users_in_the_new_container() {
    let why = runtime_directory_migrates("/run/app").await;
    assert!(why.starts_with("created by the container"), "{why}");
}

/// The image ships `/var/cache/app`, root's: the plan learns the image's
/// owner from a created, never started, container of the image.
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_directory_of_the_image_the_entrypoint_gave_away_is_the_target_users_too() {
    let why = runtime_directory_migrates("/var/cache/app").await;
    assert!(
        why.contains("given to 1000:1000 mode 750") && why.contains("the image has 0:0 mode 755"),
        "{why}"
    );
}

/// Migrates a service whose root entrypoint gives `dir` to `app`, with
/// `strategy = "image-user"`: the plan names the directory, the migrated
/// service writes its pid file there. Returns the plan's reason for it.
async fn runtime_directory_migrates(dir: &str) -> String {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let policy = write_policy(
        base.path(),
        "[defaults]\nmin_healthy_secs = 2\ndeadline_secs = 30\n\n[[rule]]\nname = \"*-runtime\"\nstrategy = \"image-user\"\n",
    );
    let policy = policy.to_str().unwrap();
    let name = fleet
        .container(
            1,
            "runtime",
            ContainerCreateBody {
                env: Some(vec![SERVE.to_string(), format!("DIR={dir}")]),
                ..body(&fleet.image, &["sh", "-c", ENTRYPOINT])
            },
        )
        .await;
    let planned = fleet_tests::wait_for(
        "the entrypoint to drop to app",
        std::time::Duration::from_secs(20),
        || async {
            let plan = fleet
                .ctl(&[
                    "plan",
                    "--container",
                    &name,
                    "--policy",
                    policy,
                    "-o",
                    "json",
                ])
                .await;
            let view = plan.json();
            let mut dirs = Vec::new();
            find_key(&view, "runtime_dirs", &mut dirs);
            dirs.into_iter()
                .flat_map(|d| d.as_array().cloned().unwrap_or_default())
                .find(|d| d["path"] == dir)
        },
    )
    .await;
    let plan = fleet
        .ctl(&["plan", "--container", &name, "--policy", policy])
        .await;
    assert!(
        plan.stdout.contains(dir),
        "the plan names the runtime directory: {plan:?}"
    );

    // The migrated service starts and is verified.
    let (view, _users) = migrated(&fleet, &name, &["--policy", policy]).await;
    assert_eq!(
        run_containers(&view)[0]["target"],
        serde_json::json!({"uid": 1000, "gid": 1000})
    );
    let (code, out) = docker_exec(
        &name,
        &[
            "sh",
            "-c",
            &format!("id -u; stat -c '%u:%g %a' {dir}; cat {dir}/pid"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000:1000 750"], "{out}");
    assert!(
        !lines[2].is_empty(),
        "the service wrote its pid file: {out}"
    );
    planned["why"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_volume_the_engine_repopulates_keeps_the_root_the_ownership_step_gave_it() {
    let fleet = TestFleet::start(1).await;
    let volume = fleet.volume("empty").await;
    // /home/app is root's in the image; a volume there is filled from it.
    let name = fleet
        .container(
            1,
            "volume",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{volume}:/home/app")]),
                    ..Default::default()
                }),
                ..body(&fleet.image, &["sleep", "3600"])
            },
        )
        .await;
    // Its data were removed since: the volume is empty again, as a fresh
    // volume over an empty image directory is.
    let root = fleet.volume_path(&volume).await;
    for entry in std::fs::read_dir(&root).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert_eq!(std::fs::metadata(&root).unwrap().uid(), 0);

    let (view, _users) = migrated(&fleet, &name, &[]).await;
    let target = &run_containers(&view)[0]["target"];
    let (uid, gid) = (
        target["uid"].as_u64().unwrap() as u32,
        target["gid"].as_u64().unwrap() as u32,
    );
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "the volume root the engine reset at create is the target's again"
    );
    let (code, out) = docker_exec(&name, &["touch", "/home/app/written"]);
    assert_eq!(code, 0, "the migrated service writes its volume: {out}");

    let id = view["run"]["id"].as_str().unwrap();
    let back = fleet.ctl(&["rollback", id, "--yes"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the root as before the run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn downtime_runs_from_the_old_container_exiting_and_from_the_stop_request() {
    let fleet = TestFleet::start(1).await;
    // Takes a second to exit on SIGTERM: the two figures differ by it.
    let name = fleet
        .container(
            1,
            "slow-stop",
            ContainerCreateBody {
                stop_timeout: Some(10),
                ..body(
                    &fleet.image,
                    &[
                        "sh",
                        "-c",
                        "trap 'sleep 1; exit 0' TERM; while true; do sleep 1 & wait $!; done",
                    ],
                )
            },
        )
        .await;
    let (view, _users) = migrated(&fleet, &name, &[]).await;
    let id = view["run"]["id"].as_str().unwrap();
    let shown = fleet.ctl(&["runs", "show", id, "-o", "json"]).await;
    let shown = shown.json();
    let container = &run_containers(&shown)[0];
    let from_exit = container["downtime_ms"].as_u64().expect("downtime_ms");
    let from_stop = container["downtime_from_stop_ms"]
        .as_u64()
        .expect("downtime_from_stop_ms");
    assert!(
        from_stop >= from_exit + 900,
        "the stop's own wait for the exit is in the second figure only: {from_exit} ms, {from_stop} ms"
    );
    let table = fleet.ctl(&["runs", "show", id]).await;
    assert!(
        table.stdout.contains("from the stop request"),
        "{}",
        table.stdout
    );
}
