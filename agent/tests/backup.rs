//! Checkpoint backups on real files: archive + manifest, verify, restore
//! exactly (content, owners, modes, xattrs, capabilities, ACLs, links,
//! special files, times).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/src/tree.rs"]
mod support;

use fleet_agent::backup::archive::{read_manifest, restore_mount, verify_mount, write_mount};
use support::{build_tree, snapshot};

#[test]
fn backup_verify_restore_round_trip() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    let outside = base.path().join("host");
    build_tree(&root, &outside);
    std::fs::write(root.join("data/big"), vec![42u8; 3 << 20]).unwrap();
    let before = snapshot(&root);
    let outside_before = snapshot(&outside);
    let archive = base.path().join("m.tar.zst");
    let manifest = base.path().join("m.manifest.jsonl");

    let outcome = write_mount(&root, &archive, &manifest, 2, &|_| {}).unwrap();
    assert_eq!(outcome.entries as usize, before.len());
    assert!(outcome.compressed_bytes < outcome.bytes, "{outcome:?}");
    let items = read_manifest(&manifest).unwrap();
    let capped = items
        .iter()
        .find(|i| i.p.as_deref() == Some("data/capped-bin"))
        .unwrap();
    assert!(capped.xattrs.contains_key("security.capability"));
    let link = items
        .iter()
        .find(|i| i.p.as_deref() == Some("data/abs-link-outside"))
        .unwrap();
    assert_eq!(link.kind, 'l');

    let verified = verify_mount(&archive, &manifest).unwrap();
    assert!(verified.problems.is_empty(), "{verified:?}");
    assert!(verified.bytes_checked >= 3 << 20);

    // Wreck the mount: delete, rewrite, chown, strip xattrs.
    std::fs::remove_dir_all(root.join("data/sub")).unwrap();
    std::fs::write(root.join("data/root-file"), b"changed").unwrap();
    std::os::unix::fs::lchown(root.join("data/pg-file"), Some(5), Some(5)).unwrap();
    rustix::fs::removexattr(root.join("data/capped-bin"), "security.capability").unwrap();
    std::fs::write(root.join("intruder"), b"x").unwrap();

    restore_mount(&root, &archive, &manifest).unwrap();
    assert_eq!(
        snapshot(&root),
        before,
        "restored exactly as the manifest says"
    );
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "nothing outside touched"
    );
}

#[test]
fn verify_notices_a_damaged_archive() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a"), b"alpha").unwrap();
    std::fs::write(root.join("b"), b"beta").unwrap();
    let archive = base.path().join("m.tar.zst");
    let manifest = base.path().join("m.jsonl");
    write_mount(&root, &archive, &manifest, 1, &|_| {}).unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    let sha_of_a = hex_sha(b"alpha");
    std::fs::write(&manifest, text.replace(&sha_of_a, &"0".repeat(64))).unwrap();
    let outcome = verify_mount(&archive, &manifest).unwrap();
    assert_eq!(outcome.problems.len(), 1, "{outcome:?}");
    assert!(outcome.problems[0].starts_with("a: content differs"));
}

fn hex_sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn a_backup_that_would_not_fit_is_refused_with_the_numbers() {
    use fleet_agent::backup::{BackupError, BackupStore, MountSpec};
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("big"), vec![1u8; 4 << 20]).unwrap();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success());
    let result = BackupStore::new(&state).preflight(&[MountSpec {
        kind: "bind".into(),
        source: data.clone(),
        destination: "/data".into(),
    }]);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&state)
        .status();
    match result {
        Err(BackupError::NoSpace {
            needed, available, ..
        }) => {
            assert_eq!(needed, 4 << 20);
            assert!(available <= 1 << 20);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
}
