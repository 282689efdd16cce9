//! A rollback is exact for what the workload did while migrated, too
//! (DESIGN invariant 7): files it created and files it replaced by rename
//! go back to the pre-run ids, and the dedicated account's ids are never
//! handed to the next service.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_tests::fleet::{TestFleet, UsersCleanup, run_containers, user_exists, users_of};
use fleet_tests::tree::{Snap, build_tree, snapshot};

/// Writes only once it no longer runs as root (that is, once migrated): new
/// files, a directory of segments, a dump replaced by rename (a cache
/// rewriting its dump file), a setuid file of its own.
const WORKLOAD: &str = r#"
if [ "$(id -u)" = 0 ]; then exec sleep 3600; fi
i=0
while true; do
  echo "$i" > /data/data/new.$i
  mkdir -p /data/data/wal && echo seg > /data/data/wal/seg.$i
  echo "dump $i" > /data/data/dump.tmp && mv /data/data/dump.tmp /data/data/root-file
  touch /data/data/own-setuid && chmod 4755 /data/data/own-setuid
  i=$((i+1))
  sleep 0.1
done
"#;

/// Owner, group, mode and xattrs: what a rollback must put back (content
/// and mtimes of what the workload wrote are the workload's business).
fn owners(tree: &BTreeMap<String, Snap>) -> BTreeMap<String, (u32, u32, u32, usize)> {
    tree.iter()
        .map(|(path, s)| (path.clone(), (s.uid, s.gid, s.mode, s.xattrs.len())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_workload_wrote_while_migrated_goes_back_to_the_pre_run_ids() {
    let fleet = TestFleet::start(1).await;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    build_tree(&data, &base.path().join("outside"));
    let store = fleet
        .mounting(
            1,
            "store",
            &data.display().to_string(),
            &["sh", "-c", WORKLOAD],
        )
        .await;
    let before = snapshot(&data);

    let run = fleet
        .ctl(&["migrate", "--container", &store, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{run:?}");
    let id = view["run"]["id"].as_str().unwrap().to_string();
    let first = run_containers(&view)[0]["target"].clone();
    let target_uid = first["uid"].as_u64().unwrap() as u32;
    assert_ne!(target_uid, 0);

    // The migrated service writes for a while.
    fleet_tests::wait_for(
        "the migrated store to write and replace files",
        Duration::from_secs(30),
        || async {
            let tree = snapshot(&data);
            let written = tree.keys().filter(|p| p.starts_with("data/new.")).count();
            (written >= 5 && tree["data/root-file"].uid == target_uid).then_some(())
        },
    )
    .await;

    let back = fleet.ctl(&["rollback", &id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let after = snapshot(&data);
    let (was, now) = (owners(&before), owners(&after));
    for (path, owner) in &was {
        if let Some(now) = now.get(path) {
            // A recorded inode gets its own metadata back; a name whose
            // inode the workload replaced holds a new file: root's again.
            if path == "data/root-file" {
                assert_eq!((now.0, now.1), (0, 0), "{path}: the replaced dump");
            } else {
                assert_eq!(now, owner, "{path}: as before the run");
            }
        }
    }
    let new: Vec<_> = now.keys().filter(|p| !was.contains_key(*p)).collect();
    assert!(new.len() >= 6, "the workload's own entries: {new:?}");
    for path in &new {
        let (uid, gid, mode, _) = now[*path];
        assert_eq!(
            (uid, gid),
            (0, 0),
            "{path} was created while migrated: given back to the pre-run ids"
        );
        if path.as_str() == "data/own-setuid" {
            assert_eq!(mode & 0o4000, 0o4000, "its setuid bit kept");
        }
    }
    assert!(
        after
            .values()
            .all(|s| s.uid != target_uid && s.gid != target_uid),
        "nothing of the tree keeps the removed account's ids"
    );
    for user in users_of(&view) {
        assert!(!user_exists(&user), "{user} removed by the rollback");
    }

    // A second, unrelated dedicated migration: never the first one's ids.
    let other = fleet.sleeper(1, "other").await;
    let run = fleet
        .ctl(&["migrate", "--container", &other, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _other_users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{run:?}");
    let second = run_containers(&view)[0]["target"].clone();
    assert_ne!(
        second["uid"], first["uid"],
        "the removed account's uid was handed to the next service"
    );
    assert_ne!(second["gid"], first["gid"]);
}
