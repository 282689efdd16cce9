//! The ownership remap on real files as root: every rule of the issue, and
//! invariant 1 (an undo restores every owner, mode, capability and ACL).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/src/tree.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_agent::remap::{IdMapping, RemapError, RemapOptions, remap, undo};
use support::{acl_for, build_tree, net_bind_capability, snapshot};

fn mapping(pairs: &[(u32, u32)]) -> IdMapping {
    let map: BTreeMap<u32, u32> = pairs.iter().copied().collect();
    IdMapping {
        uids: map.clone(),
        gids: map,
        everything: None,
    }
}

fn options(mapping: IdMapping) -> RemapOptions {
    RemapOptions {
        mapping,
        allow_protected_hardlinks: false,
        skip_if_root_owned_by: None,
        batch: 7,
        threads: 0,
        expect_root: None,
    }
}

#[test]
fn remap_then_undo_restores_everything_byte_for_byte() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    build_tree(&root, &outside);
    let before = snapshot(&root);
    let outside_before = snapshot(&outside);
    let manifest = base.path().join("manifest.jsonl");

    let report = remap(
        &root,
        &manifest,
        &options(mapping(&[(0, 2000), (999, 2999)])),
        &|_| {},
    )
    .unwrap();
    let after = snapshot(&root);

    // Remap, not flatten: 0 → 2000, 999 → 2999, 1000 untouched.
    assert_eq!(
        (after["data/root-file"].uid, after["data/root-file"].gid),
        (2000, 2000)
    );
    assert_eq!(
        (after["data/pg-file"].uid, after["data/pg-file"].gid),
        (2999, 2999)
    );
    assert_eq!(
        (after["data/app-file"].uid, after["data/app-file"].gid),
        (1000, 1000)
    );
    assert_eq!(after[""].uid, 2000, "the tree's root changes too");
    // chown clears setuid/setgid and file capabilities: they were put back.
    assert_eq!(after["data/setuid-bin"].mode & 0o7777, 0o4755);
    assert_eq!(after["data/setgid-bin"].mode & 0o7777, 0o2755);
    assert_eq!(after["data/sticky-dir"].mode & 0o7777, 0o1777);
    assert_eq!(
        after["data/capped-bin"].xattrs["security.capability"],
        net_bind_capability()
    );
    // ACL entries naming a remapped id are remapped.
    assert_eq!(
        after["data/acl-file"].xattrs["system.posix_acl_access"],
        acl_for(2999)
    );
    // Symlinks are changed themselves (lchown), their targets never.
    assert_eq!(after["data/abs-link-outside"].uid, 2000);
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "nothing outside the tree changed"
    );
    // A device node is never handed to a service user.
    assert_eq!(after["data/null-device"].uid, 0);
    assert_eq!(
        report.devices_left.paths,
        vec!["data/null-device".to_string()]
    );
    // A hard link whose other name is outside is refused; one inside is fine.
    assert_eq!(after["data/host-hardlink"].uid, 0);
    assert_eq!(report.refused_hardlinks.count, 1);
    assert!(
        report.refused_hardlinks.paths[0]
            .starts_with("data/host-hardlink (not all of its names are in the tree"),
        "{report:?}"
    );
    assert_eq!(after["data/inner-hardlink"].uid, 2000);
    // FIFOs and sockets change (through O_PATH: never opened).
    assert_eq!(after["data/fifo"].uid, 2000);
    assert_eq!(after["data/socket"].uid, 2000);
    // Contents are untouched.
    for (path, snap) in &before {
        assert_eq!(snap.content, after[path].content, "{path}");
    }

    let undone = undo(&root, &manifest).unwrap();
    assert!(undone.missing.is_empty(), "{undone:?}");
    assert_eq!(
        snapshot(&root),
        before,
        "the undo restores every owner, mode, xattr exactly"
    );
    assert_eq!(snapshot(&outside), outside_before);
    // Undo is safe to repeat.
    undo(&root, &manifest).unwrap();
    assert_eq!(snapshot(&root), before);
}

#[test]
fn an_interrupted_walk_resumes_without_remapping_twice() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    for i in 0..50 {
        let p = root.join(format!("f{i}"));
        std::fs::write(&p, b"x").unwrap();
        std::os::unix::fs::chown(&p, Some(999), Some(999)).unwrap();
    }
    std::os::unix::fs::chown(&root, Some(999), Some(999)).unwrap();
    let before = snapshot(&root);
    let manifest = base.path().join("m.jsonl");
    // A chain: 999 → 1000 and 1000 → 1001. Remapping anything twice would
    // send a 999 file to 1001.
    let chain = mapping(&[(999, 1000), (1000, 1001)]);
    remap(&root, &manifest, &options(chain.clone()), &|_| {}).unwrap();
    // Pretend the crash came after the manifest was synced but before half
    // of the changes were made.
    for i in 0..25 {
        std::os::unix::fs::chown(root.join(format!("f{i}")), Some(999), Some(999)).unwrap();
    }
    let report = remap(&root, &manifest, &options(chain), &|_| {}).unwrap();
    assert_eq!(report.resumed, 51);
    // 25 finished now, 26 found done: each counted once.
    assert_eq!((report.entries, report.changed), (51, 51));
    let after = snapshot(&root);
    for (path, snap) in &after {
        assert_eq!(
            (snap.uid, snap.gid),
            (1000, 1000),
            "{path} remapped exactly once"
        );
    }
    undo(&root, &manifest).unwrap();
    assert_eq!(snapshot(&root), before);
}

#[test]
fn root_mismatch_shortcut_and_mapping_validation() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), b"x").unwrap();
    std::os::unix::fs::chown(&root, Some(2000), Some(2000)).unwrap();
    let mut opts = options(mapping(&[(0, 2000)]));
    opts.skip_if_root_owned_by = Some((2000, 2000));
    let report = remap(&root, &base.path().join("m"), &opts, &|_| {}).unwrap();
    assert!(report.skipped_root_already_owned);
    assert_eq!(snapshot(&root)["f"].uid, 0, "nothing walked");
    // Not re-owned by the run: no manifest, so nothing for an undo to reverse.
    assert!(!base.path().join("m").exists());

    let err = remap(
        &root,
        &base.path().join("m2"),
        &options(mapping(&[(1000, 0)])),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, RemapError::InvalidMapping(_)), "{err}");
}

fn mount(args: &[&str]) {
    let status = std::process::Command::new("mount")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "mount {args:?}");
}

fn umount(path: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .status();
}

#[test]
fn never_crosses_into_another_filesystem() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir_all(root.join("mnt")).unwrap();
    mount(&["-t", "tmpfs", "tmpfs", root.join("mnt").to_str().unwrap()]);
    std::fs::write(root.join("mnt/inner"), b"x").unwrap();
    let result = remap(
        &root,
        &base.path().join("m"),
        &options(mapping(&[(0, 2000)])),
        &|_| {},
    );
    let inner_uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(root.join("mnt/inner")).unwrap());
    umount(&root.join("mnt"));
    let report = result.unwrap();
    assert_eq!(report.other_filesystems.paths, vec!["mnt".to_string()]);
    assert_eq!(inner_uid, 0);
}

#[test]
fn read_only_trees_are_refused_before_anything_changes() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("src");
    let root = base.path().join("ro");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(source.join("f"), b"x").unwrap();
    mount(&["--bind", source.to_str().unwrap(), root.to_str().unwrap()]);
    mount(&["-o", "remount,bind,ro", root.to_str().unwrap()]);
    let manifest = base.path().join("m");
    let result = remap(&root, &manifest, &options(mapping(&[(0, 2000)])), &|_| {});
    umount(&root);
    let err = result.unwrap_err();
    assert!(matches!(err, RemapError::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"));
    assert!(!manifest.exists(), "not even a manifest");
}

#[test]
fn a_racing_process_swapping_directories_for_symlinks_cannot_lead_the_walk_out() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..200 {
        std::fs::write(outside.join(format!("canary{i}")), b"host").unwrap();
    }
    for d in 0..40 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let outside_before = snapshot(&outside);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The attacker: swap each directory with a symlink to the host tree and back.
    let attacker = {
        let root = root.clone();
        let outside = outside.clone();
        let stop = stop.clone();
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
    // Under load the attacker can win every retry on a directory: the walk
    // then refuses with KeptRacing (safe: nothing outside is touched), which
    // is an acceptable end of a round; any other error is not.
    let mut settled = 0;
    for round in 0..20 {
        let manifest = base.path().join(format!("m{round}"));
        let (from, to) = if round % 2 == 0 { (0, 2000) } else { (2000, 0) };
        // Undo-style remap back to 0 is not allowed; use undo instead.
        let result = if from == 0 {
            remap(&root, &manifest, &options(mapping(&[(from, to)])), &|_| {}).map(|_| ())
        } else {
            undo(&root, &base.path().join(format!("m{}", round - 1))).map(|_| ())
        };
        match result {
            Ok(()) => settled += 1,
            Err(RemapError::KeptRacing { .. }) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert!(settled > 0, "some rounds finished despite the race");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    assert!(swaps > 10, "the race really ran ({swaps} swaps)");
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "nothing outside the tree changed owner"
    );
    let _ = Duration::ZERO;
}

#[test]
fn a_symlink_anywhere_in_the_mount_path_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let real = base.path().join("real/data");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("f"), b"x").unwrap();
    // What a container that can write a mount's parent could plant.
    std::os::unix::fs::symlink(base.path().join("real"), base.path().join("planted")).unwrap();
    let via_link = base.path().join("planted/data");
    let err = remap(
        &via_link,
        &base.path().join("m"),
        &options(mapping(&[(0, 2000)])),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, RemapError::SymlinkInPath { .. }), "{err}");
    assert_eq!(snapshot(&real)["f"].uid, 0, "nothing changed");
}

#[test]
fn a_single_setuid_file_mount_keeps_its_bits_and_comes_back_exactly() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("tool");
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::setxattr(
        &file,
        "security.capability",
        &support::net_bind_capability(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let before = std::fs::symlink_metadata(&file).unwrap();
    let manifest = base.path().join("m");
    remap(&file, &manifest, &options(mapping(&[(0, 2000)])), &|_| {}).unwrap();
    let after = std::fs::symlink_metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((after.uid(), after.mode() & 0o7777), (2000, 0o4755));
    undo(&file, &manifest).unwrap();
    let back = std::fs::symlink_metadata(&file).unwrap();
    assert_eq!((back.uid(), back.mode()), (before.uid(), before.mode()));
    let mut cap = [0u8; 64];
    let n = rustix::fs::getxattr(&file, "security.capability", &mut cap[..]).unwrap();
    assert_eq!(
        &cap[..n],
        support::net_bind_capability().as_slice(),
        "the capability survived the probe and the round trip"
    );
}

#[test]
fn a_fifo_linked_from_outside_is_refused_too() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        outside.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::hard_link(outside.join("pipe"), root.join("pipe")).unwrap();
    let report = remap(
        &root,
        &base.path().join("m"),
        &options(mapping(&[(0, 2000)])),
        &|_| {},
    )
    .unwrap();
    assert_eq!(report.refused_hardlinks.count, 1, "{report:?}");
    assert_eq!(snapshot(&outside)["pipe"].uid, 0);
}

#[test]
fn a_file_that_took_a_recorded_inode_number_is_not_restored_but_given_back() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("old"), b"x").unwrap();
    std::os::unix::fs::chown(root.join("old"), Some(5), Some(5)).unwrap();
    let manifest = base.path().join("m");
    // 0 and 5 both go to 2000: the inverse takes 2000 back to the lowest, 0.
    remap(
        &root,
        &manifest,
        &options(mapping(&[(0, 2000), (5, 2000)])),
        &|_| {},
    )
    .unwrap();
    // A file made after the remap, owned by the service user; pretend the
    // manifest's record of `old` points at its inode (a reused number).
    std::fs::write(root.join("new"), b"y").unwrap();
    std::os::unix::fs::chown(root.join("new"), Some(2000), Some(2000)).unwrap();
    std::fs::set_permissions(root.join("new"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (old_ino, new_ino) = (
        std::fs::metadata(root.join("old")).unwrap().ino(),
        std::fs::metadata(root.join("new")).unwrap().ino(),
    );
    std::fs::remove_file(root.join("old")).unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            &format!("\"ino\":{old_ino},"),
            &format!("\"ino\":{new_ino},"),
        ),
    )
    .unwrap();
    let report = undo(&root, &manifest).unwrap();
    assert_eq!(
        report.impostors.paths,
        vec!["new".to_string()],
        "{report:?}"
    );
    let new = &snapshot(&root)["new"];
    // Not `old`'s record (5:5, 0644): the workload's file, given the prior ids.
    assert_eq!((new.uid, new.gid, new.mode & 0o7777), (0, 0, 0o600));
    assert_eq!(report.reverse_mapped, 1, "{report:?}");
}

#[test]
fn undo_restores_the_first_record_of_an_entry() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("f"), b"x").unwrap();
    let before = snapshot(&root);
    let manifest = base.path().join("m");
    remap(
        &root,
        &manifest,
        &options(mapping(&[(0, 1000), (1000, 1001)])),
        &|_| {},
    )
    .unwrap();
    // A later record of the same entry (as a walk that saw it twice would
    // write) must not win over the first.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let record = text
        .lines()
        .find(|l| l.contains("\"p\":\"f\""))
        .unwrap()
        .to_string();
    let later = record.replace("\"uid\":0,", "\"uid\":1000,");
    std::fs::write(&manifest, format!("{text}{later}\n")).unwrap();
    undo(&root, &manifest).unwrap();
    assert_eq!(snapshot(&root), before);
}

#[test]
fn a_bind_mount_of_the_same_filesystem_inside_the_tree_is_not_entered() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let elsewhere = base.path().join("elsewhere");
    std::fs::create_dir_all(root.join("mnt")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("host-file"), b"x").unwrap();
    mount(&[
        "--bind",
        elsewhere.to_str().unwrap(),
        root.join("mnt").to_str().unwrap(),
    ]);
    let result = remap(
        &root,
        &base.path().join("m"),
        &options(mapping(&[(0, 2000)])),
        &|_| {},
    );
    let uid = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(elsewhere.join("host-file")).unwrap(),
    );
    umount(&root.join("mnt"));
    let report = result.unwrap();
    assert_eq!(report.other_filesystems.paths, vec!["mnt".to_string()]);
    assert_eq!(uid, 0, "same device number, other mount: not entered");
}

#[test]
fn reports_give_the_true_count_and_at_most_twenty_names() {
    use fleet_agent::remap::{Listed, RemapReport};
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let device = |path: &Path| {
        mknodat(
            CWD,
            path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            makedev(1, 3),
        )
        .unwrap()
    };
    for i in 0..30 {
        device(&root.join(format!("null{i:02}")));
        let host = outside.join(format!("h{i:02}"));
        std::fs::write(&host, b"").unwrap();
        std::fs::hard_link(&host, root.join(format!("link{i:02}"))).unwrap();
    }
    let manifest = base.path().join("m.jsonl");
    let mapping = mapping(&[(0, 2000)]);
    let report = remap(&root, &manifest, &options(mapping), &|_| {}).unwrap();
    let first: Vec<String> = (0..Listed::MAX).map(|i| format!("null{i:02}")).collect();
    assert_eq!(report.devices_left.count, 30, "{report:?}");
    assert_eq!(report.devices_left.paths, first);
    assert_eq!(report.refused_hardlinks.count, 30);
    assert_eq!(report.refused_hardlinks.paths.len(), Listed::MAX);
    assert!(report.refused_hardlinks.paths[0].starts_with("link00 (not all of its names"));
    assert!(report.refused_hardlinks.paths[19].starts_with("link19 "));
    // What a host's journal holds; and a report written before the cap
    // (every name, a plain list) still reads.
    let text = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<RemapReport>(&text).unwrap(), report);
    let old: RemapReport = serde_json::from_str(
        r#"{"root": "/r", "entries": 3, "changed": 1, "bytes": 0, "resumed": 0,
            "skipped_root_already_owned": false, "other_filesystems": [], "raced": [],
            "refused_hardlinks": ["x (not all of its names are in the tree)"],
            "devices_left": ["b", "a"], "vanished": [], "millis": 1}"#,
    )
    .unwrap();
    assert_eq!(old.devices_left.count, 2);
    assert_eq!(old.devices_left.paths, ["a", "b"]);
    assert_eq!(old.refused_hardlinks.count, 1);

    // Migrated: the workload makes 25 device nodes and 25 links to files
    // outside, all its own; the undo leaves them and says so, likewise.
    for i in 0..25 {
        let path = root.join(format!("new-null{i:02}"));
        device(&path);
        std::os::unix::fs::lchown(&path, Some(2000), Some(2000)).unwrap();
        let host = outside.join(format!("n{i:02}"));
        std::fs::write(&host, b"").unwrap();
        std::os::unix::fs::lchown(&host, Some(2000), Some(2000)).unwrap();
        std::fs::hard_link(&host, root.join(format!("new-link{i:02}"))).unwrap();
    }
    let undone = undo(&root, &manifest).unwrap();
    assert_eq!(undone.devices_left.count, 25, "{undone:?}");
    assert_eq!(undone.devices_left.paths.len(), Listed::MAX);
    assert_eq!(undone.devices_left.paths[0], "new-null00");
    assert_eq!(undone.refused_hardlinks.count, 25);
    assert_eq!(undone.refused_hardlinks.paths.len(), Listed::MAX);
}
