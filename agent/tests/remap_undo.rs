//! The undo's reverse walk on real files as root (issue 8, point 1): what
//! a workload makes while migrated goes back to the pre-run ids, what
//! belonged to a target id before the run stays, the same safety rules as
//! the forward walk, journaled and resumable after a kill; and the counts
//! of a resumed walk (each entry once).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/src/tree.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Mutex;

use fleet_agent::remap::manifest::reverse_path;
use fleet_agent::remap::{
    IdMapping, Progress, RemapError, RemapOptions, UndoOptions, remap, undo, undo_with,
};
use support::{acl_for, build_tree, net_bind_capability, snapshot};

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

fn mapping(pairs: &[(u32, u32)]) -> IdMapping {
    let map: BTreeMap<u32, u32> = pairs.iter().copied().collect();
    IdMapping {
        uids: map.clone(),
        gids: map,
        everything: None,
    }
}

/// The run's mapping in these tests: root's files to 2000, postgres' to 2999.
fn migrated() -> IdMapping {
    mapping(&[(0, 2000), (999, 2999)])
}

fn options(mapping: IdMapping) -> RemapOptions {
    RemapOptions {
        mapping,
        allow_protected_hardlinks: false,
        skip_if_root_owned_by: None,
        batch: 8192,
        threads: 0,
        expect_root: None,
    }
}

fn own(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap();
}

/// A file written by the workload running as `uid:gid`.
fn write_as(path: &Path, content: &[u8], uid: u32, gid: u32) {
    std::fs::write(path, content).unwrap();
    own(path, uid, gid);
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn mknod(path: &Path, kind: rustix::fs::FileType, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o644),
        dev,
    )
    .unwrap();
}

#[test]
fn the_undo_gives_back_what_the_workload_made_while_migrated() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    build_tree(&root, &outside);
    // Entries that belonged to the target ids before the run (a service
    // already using them): the undo must leave them as they are.
    write_as(&root.join("data/svc-file"), b"svc", 2000, 2000);
    std::fs::create_dir(root.join("data/svc-dir")).unwrap();
    own(&root.join("data/svc-dir"), 2999, 2999);
    write_as(&root.join("data/svc-dir/inner"), b"svc", 2999, 2999);
    write_as(&root.join("data/app-acl"), b"app", 1000, 1000);
    set_xattr(&root.join("data/app-acl"), ACL_ACCESS, &acl_for(2000));
    let before = snapshot(&root);

    let report = remap(&root, &base.path().join("m"), &options(migrated()), &|_| {}).unwrap();
    assert_eq!(report.kept, 4, "{report:?}");

    // The workload, running as 2000 and 2999 while migrated.
    let data = root.join("data");
    std::fs::create_dir(data.join("wal")).unwrap();
    own(&data.join("wal"), 2999, 2999);
    set_xattr(&data.join("wal"), ACL_DEFAULT, &acl_for(2999));
    for i in 0..20 {
        write_as(&data.join(format!("wal/{i:08}")), b"segment", 2999, 2999);
    }
    write_as(&data.join("new-log"), b"log", 2000, 2000);
    // Dumps replaced by rename: new inodes under recorded names.
    write_as(&data.join(".pg-file.tmp"), b"new dump", 2999, 2999);
    std::fs::rename(data.join(".pg-file.tmp"), data.join("pg-file")).unwrap();
    write_as(&data.join(".root-file.tmp"), b"new root", 2000, 2000);
    std::fs::rename(data.join(".root-file.tmp"), data.join("root-file")).unwrap();
    let setuid = data.join("new-setuid");
    write_as(&setuid, b"#!/bin/sh\n", 2000, 2000);
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    set_xattr(&setuid, "security.capability", &net_bind_capability());
    write_as(&data.join("new-acl"), b"acl", 2999, 2999);
    set_xattr(&data.join("new-acl"), ACL_ACCESS, &acl_for(2999));
    mknod(&data.join("new-fifo"), rustix::fs::FileType::Fifo, 0);
    own(&data.join("new-fifo"), 2000, 2000);
    std::os::unix::fs::symlink(outside.join("secret/passwd"), data.join("new-link")).unwrap();
    own(&data.join("new-link"), 2000, 2000);
    // Two names, both inside.
    write_as(&data.join("new-a"), b"a", 2000, 2000);
    std::fs::hard_link(data.join("new-a"), data.join("wal/new-b")).unwrap();
    // Two names, one outside the tree (it could be a host file).
    write_as(&outside.join("escape-target"), b"host", 2000, 2000);
    std::fs::hard_link(outside.join("escape-target"), data.join("escape")).unwrap();
    // A device node: never opened, never chowned.
    mknod(
        &data.join("new-null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    );
    own(&data.join("new-null"), 2000, 2000);
    // Not a target id: not the undo's business.
    write_as(&data.join("app-new"), b"app", 1000, 1000);
    let outside_before = snapshot(&outside);

    let undone = undo(&root, &base.path().join("m")).unwrap();
    let after = snapshot(&root);
    // Every entry that existed before the run is owned exactly as before
    // (the replaced dumps included: new inodes, given the old owners).
    for (path, was) in &before {
        let now = &after[path];
        assert_eq!(
            (now.uid, now.gid, now.mode, &now.xattrs),
            (was.uid, was.gid, was.mode, &was.xattrs),
            "{path}"
        );
    }
    let owner = |p: &str| (after[p].uid, after[p].gid);
    // New entries: by the pre-run ids.
    assert_eq!(owner("data/wal"), (999, 999));
    assert_eq!(after["data/wal"].xattrs[ACL_DEFAULT], acl_for(999));
    for i in 0..20 {
        assert_eq!(owner(&format!("data/wal/{i:08}")), (999, 999));
    }
    assert_eq!(owner("data/new-log"), (0, 0));
    assert_eq!(owner("data/new-setuid"), (0, 0));
    assert_eq!(
        after["data/new-setuid"].mode & 0o7777,
        0o4755,
        "setuid kept"
    );
    assert_eq!(
        after["data/new-setuid"].xattrs["security.capability"],
        net_bind_capability(),
        "capability kept"
    );
    assert_eq!(owner("data/new-acl"), (999, 999));
    assert_eq!(after["data/new-acl"].xattrs[ACL_ACCESS], acl_for(999));
    assert_eq!(owner("data/new-fifo"), (0, 0));
    assert_eq!(owner("data/new-link"), (0, 0), "the link itself");
    assert_eq!(owner("data/new-a"), (0, 0));
    assert_eq!(owner("data/wal/new-b"), (0, 0));
    assert_eq!(
        owner("data/escape"),
        (2000, 2000),
        "a name outside: refused"
    );
    assert_eq!(
        owner("data/new-null"),
        (2000, 2000),
        "a device: never chowned"
    );
    assert_eq!(owner("data/app-new"), (1000, 1000));
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "nothing outside the tree changed (the symlink's target, the hard link's other name)"
    );
    // wal, 20 segments, new-log, the two dumps, new-setuid, new-acl,
    // new-fifo, new-link, new-a (one inode, two names).
    assert_eq!(undone.reverse_mapped, 29, "{undone:?}");
    assert_eq!(undone.devices_left.paths, vec!["data/new-null".to_string()]);
    assert_eq!(undone.refused_hardlinks.count, 1, "{undone:?}");
    assert!(
        undone.refused_hardlinks.paths[0].starts_with("data/escape (not all of its names"),
        "{undone:?}"
    );
    assert_eq!(undone.reverse_skipped, None);
    assert!(reverse_path(&base.path().join("m")).exists());

    // Again: nothing left to do, and the total is kept.
    let again = undo(&root, &base.path().join("m")).unwrap();
    assert_eq!(again.reverse_mapped, 29, "{again:?}");
    assert_eq!(snapshot(&root), after);
}

#[test]
fn with_an_everything_mapping_new_entries_go_back_to_the_roots_original_owner() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    own(&root, 7, 8);
    write_as(&root.join("a"), b"a", 0, 0);
    write_as(&root.join("b"), b"b", 1000, 5);
    write_as(&root.join("svc"), b"svc", 2000, 2000);
    let before = snapshot(&root);
    let manifest = base.path().join("m");
    let everything = IdMapping {
        everything: Some((2000, 2000)),
        ..Default::default()
    };
    let report = remap(&root, &manifest, &options(everything), &|_| {}).unwrap();
    assert_eq!((report.changed, report.kept), (3, 1), "{report:?}");
    write_as(&root.join("new"), b"n", 2000, 2000);
    write_as(&root.join("new-gid"), b"n", 2000, 9);
    let undone = undo(&root, &manifest).unwrap();
    let after = snapshot(&root);
    for (path, was) in &before {
        assert_eq!(
            (after[path].uid, after[path].gid),
            (was.uid, was.gid),
            "{path}"
        );
    }
    assert_eq!((after["new"].uid, after["new"].gid), (7, 8));
    assert_eq!((after["new-gid"].uid, after["new-gid"].gid), (7, 9));
    assert_eq!(undone.reverse_mapped, 2);
}

/// Runs `remap` or `undo` in a child process (fleet-remap-child, of the
/// tests crate) with a fault point armed: it aborts there, with no
/// destructor and no flush, as under `kill -9`.
fn killed_at(what: &str, root: &Path, manifest: &Path, mapping: &IdMapping, fault: &str) {
    let exe = std::env::current_exe().unwrap();
    let child = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("fleet-remap-child");
    assert!(
        child.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
        child.display()
    );
    let status = std::process::Command::new(child)
        .env("FLEET_FAULT", fault)
        .env("REMAP_CHILD", what)
        .env("REMAP_ROOT", root)
        .env("REMAP_MANIFEST", manifest)
        .env("REMAP_MAPPING", serde_json::to_string(mapping).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the {what} aborted at {fault}: {status:?}"
    );
}

/// Small batches, so a kill lands between commits of a small tree.
fn small_batches(mapping: IdMapping) -> RemapOptions {
    RemapOptions {
        batch: 100,
        ..options(mapping)
    }
}

const UNDO_BATCHES: UndoOptions = UndoOptions {
    batch: 100,
    threads: 0,
};

/// `dirs` directories of `files` files owned by 0, and in each directory
/// `svc` files that already belonged to 2000.
fn big_tree(root: &Path, dirs: usize, files: usize, svc: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::File::create(dir.join(format!("f{f:05}"))).unwrap();
        }
        for s in 0..svc {
            write_as(&dir.join(format!("svc{s}")), b"", 2000, 2000);
        }
    }
}

fn owners(root: &Path, prefix: &str) -> Vec<(String, u32, u32)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| p.rsplit('/').next().is_some_and(|n| n.starts_with(prefix)))
        .map(|(p, s)| (p, s.uid, s.gid))
        .collect()
}

/// Each (dev, ino) appears once among a manifest's records.
fn assert_recorded_once(manifest: &Path) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v.get("end").is_some() {
            continue;
        }
        assert!(
            seen.insert((v["dev"].as_u64(), v["ino"].as_u64())),
            "recorded twice in {}: {line}",
            manifest.display()
        );
    }
}

#[test]
fn an_undo_killed_in_its_reverse_walk_finishes_when_run_again() {
    // Killed with a batch synced and none of it made, then with batches made.
    for fault in ["agent:reverse-synced:300", "agent:reverse-entries:300"] {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("vol");
        big_tree(&root, 2, 50, 10);
        let before = snapshot(&root);
        let manifest = base.path().join("mount-0.jsonl");
        let mapping = mapping(&[(0, 2000)]);
        remap(&root, &manifest, &options(mapping.clone()), &|_| {}).unwrap();
        // What the workload wrote while migrated: 20 directories, 2,000 files.
        for d in 0..20 {
            let dir = root.join(format!("new{d:02}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..100 {
                std::fs::File::create(dir.join(format!("n{f:04}"))).unwrap();
            }
        }
        let status = std::process::Command::new("chown")
            .args(["-R", "2000:2000"])
            .args((0..20).map(|d| root.join(format!("new{d:02}"))))
            .status()
            .unwrap();
        assert!(status.success());

        killed_at("undo", &root, &manifest, &mapping, fault);
        let reverse = reverse_path(&manifest);
        assert!(
            reverse.exists(),
            "{fault}: the reverse changes were journaled"
        );
        let given_back = owners(&root, "n").iter().filter(|o| o.1 == 0).count();
        assert!(
            given_back < 2_000,
            "{fault}: killed half-way ({given_back})"
        );
        let recorded = std::fs::read_to_string(&reverse).unwrap().lines().count() - 1;
        if fault.starts_with("agent:reverse-synced") {
            assert!(
                recorded > given_back,
                "{fault}: the last batch recorded, not made ({recorded} recorded, {given_back} made)"
            );
        } else {
            assert!(given_back >= 300, "{fault}: {given_back}");
        }

        let undone = undo_with(&root, &manifest, &UNDO_BATCHES).unwrap();
        assert_eq!(undone.reverse_mapped, 2_020, "{fault}: {undone:?}");
        assert_eq!(
            undone.restored, 103,
            "{fault}: 100 files, 2 directories, the root"
        );
        let new = owners(&root, "n");
        assert_eq!(new.len(), 2_020);
        assert!(new.iter().all(|o| (o.1, o.2) == (0, 0)), "{fault}");
        let after = snapshot(&root);
        for (path, was) in &before {
            assert_eq!(
                (after[path].uid, after[path].gid),
                (was.uid, was.gid),
                "{fault}: {path}"
            );
        }
        assert_recorded_once(&reverse);
        let again = undo(&root, &manifest).unwrap();
        assert_eq!(again.reverse_mapped, 2_020, "{fault}: the total is kept");
    }
}

#[test]
fn a_forward_walk_killed_and_resumed_counts_each_entry_once_and_keeps_what_was_the_targets() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    big_tree(&root, 20, 100, 15);
    let before = snapshot(&root);
    let manifest = base.path().join("mount-0.jsonl");
    let mapping = mapping(&[(0, 2000)]);
    killed_at(
        "remap",
        &root,
        &manifest,
        &mapping,
        "agent:ownership-entries:500",
    );
    let changed_before = owners(&root, "f").iter().filter(|o| o.1 == 2000).count();
    assert!(
        changed_before > 0 && changed_before < 2_000,
        "killed half-way"
    );

    let seen = Mutex::new(Vec::<Progress>::new());
    let report = remap(&root, &manifest, &small_batches(mapping), &|p| {
        seen.lock().unwrap().push(*p)
    })
    .unwrap();
    // The root, 20 directories, 20,000 files changed; 300 files kept.
    assert_eq!(report.entries, 2_321, "{report:?}");
    assert_eq!(
        report.changed, 2_021,
        "each once, before and after the kill"
    );
    assert_eq!(report.kept, 300);
    let seen = seen.into_inner().unwrap();
    let last = seen.last().unwrap();
    assert_eq!((last.entries, last.changed), (2_321, 2_021));
    assert!(
        seen.iter()
            .all(|p| p.entries <= 2_321 && p.changed <= 2_021)
    );
    assert_recorded_once(&manifest);

    // Migrated: the workload writes; then the undo.
    for i in 0..50 {
        write_as(&root.join(format!("d00/new{i}")), b"", 2000, 2000);
    }
    let undone = undo(&root, &manifest).unwrap();
    assert_eq!(undone.reverse_mapped, 50, "{undone:?}");
    let after = snapshot(&root);
    for (path, was) in &before {
        assert_eq!(
            (after[path].uid, after[path].gid),
            (was.uid, was.gid),
            "{path}"
        );
    }
    assert!(owners(&root, "new").iter().all(|o| (o.1, o.2) == (0, 0)));
}

#[test]
fn the_progress_of_a_resumed_walk_counts_what_the_interrupted_walk_did_once() {
    // Big enough for progress during the walk (every 4,096 entries), not
    // only at its end.
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    big_tree(&root, 20, 300, 15);
    let manifest = base.path().join("mount-0.jsonl");
    let mapping = mapping(&[(0, 2000)]);
    killed_at(
        "remap",
        &root,
        &manifest,
        &mapping,
        "agent:ownership-entries:3000",
    );
    let seen = Mutex::new(Vec::<Progress>::new());
    let report = remap(&root, &manifest, &small_batches(mapping), &|p| {
        seen.lock().unwrap().push(*p)
    })
    .unwrap();
    // The root, 20 directories, 6,000 files; 300 files kept.
    assert_eq!(
        (report.entries, report.changed),
        (6_321, 6_021),
        "{report:?}"
    );
    assert!(report.resumed >= 3_000, "{report:?}");
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() >= 2, "progress during the walk: {seen:?}");
    for p in &seen {
        assert!(
            p.entries <= 6_321 && p.changed <= 6_021 && p.changed <= p.entries,
            "an entry counted twice: {p:?}"
        );
    }
    let last = seen.last().unwrap();
    assert_eq!((last.entries, last.changed), (6_321, 6_021));
}

#[test]
fn an_undo_after_a_walk_that_never_finished_only_restores() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    big_tree(&root, 20, 100, 15);
    let before = snapshot(&root);
    let manifest = base.path().join("mount-0.jsonl");
    let mapping = mapping(&[(0, 2000)]);
    killed_at(
        "remap",
        &root,
        &manifest,
        &mapping,
        "agent:ownership-entries:500",
    );
    // The walk never finished, so the workload never ran with the new ids:
    // the target-owned files it had not recorded yet were the service's.
    let undone = undo(&root, &manifest).unwrap();
    assert!(undone.reverse_skipped.is_some(), "{undone:?}");
    assert_eq!(undone.reverse_mapped, 0);
    assert_eq!(snapshot(&root), before);
}

#[test]
fn a_racing_container_cannot_steer_the_reverse_walk_out_of_the_tree() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    std::fs::create_dir_all(&outside).unwrap();
    // Owned by a target id: a reverse walk led out there would take them.
    for i in 0..200 {
        write_as(&outside.join(format!("canary{i}")), b"host", 2000, 2000);
    }
    for d in 0..40 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let manifest = base.path().join("m");
    remap(&root, &manifest, &options(mapping(&[(0, 2000)])), &|_| {}).unwrap();
    for d in 0..40 {
        for n in 0..10 {
            write_as(&root.join(format!("d{d}/new{n}")), b"n", 2000, 2000);
        }
    }
    let outside_before = snapshot(&outside);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The container: swaps each directory with a symlink to the host tree and back.
    let attacker = {
        let (root, outside, stop) = (root.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in 0..40 {
                    let dir = root.join(format!("d{d}"));
                    let parked = root.join(format!(".p{d}"));
                    if std::fs::rename(&dir, &parked).is_ok() {
                        let _ = std::os::unix::fs::symlink(&outside, &dir);
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(&dir);
                        let _ = std::fs::rename(&parked, &dir);
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    // Under the race an undo may refuse (KeptRacing) and is run again, as
    // the controller would; any other error is a failure.
    for round in 0..10 {
        match undo(&root, &manifest) {
            Ok(_) => {}
            Err(RemapError::KeptRacing { .. }) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    assert!(swaps > 10, "the race really ran ({swaps} swaps)");
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "nothing outside the tree changed owner"
    );
    let undone = undo(&root, &manifest).unwrap();
    assert_eq!(undone.reverse_mapped, 400, "{undone:?}");
    assert!(owners(&root, "new").iter().all(|o| (o.1, o.2) == (0, 0)));
    assert!(owners(&root, "f").iter().all(|o| (o.1, o.2) == (0, 0)));
}
