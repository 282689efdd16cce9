//! Dedicated users on this host, with its own shadow-utils: created,
//! idempotent, conflicts refused, and the undo removes only what it made.

#![allow(clippy::unwrap_used)]

use fleet_agent::users::{UserError, UserRequest, UserSettings, ensure_user, undo_user};

fn exists(name: &str) -> bool {
    std::process::Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn group_exists(name: &str) -> bool {
    std::process::Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// Removes the user even when the test fails.
struct Cleanup(&'static str);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(self.0).output();
        let _ = std::process::Command::new("groupdel").arg(self.0).output();
    }
}

fn settings(home: &std::path::Path) -> UserSettings {
    UserSettings {
        home_root: home.to_path_buf(),
        uid_range: (61500, 61599),
        ..Default::default()
    }
}

#[test]
fn creates_once_refuses_conflicts_and_undoes_only_its_own() {
    let _cleanup = Cleanup("svc-fleet-test-a");
    let home = tempfile::tempdir().unwrap();
    let settings = settings(home.path());
    let request = UserRequest {
        name: "svc-fleet-test-a".into(),
        uid: None,
        gid: None,
        rootless: true,
    };
    let created = ensure_user(&request, &settings).unwrap();
    assert!(created.created_user && created.created_group && created.created_home);
    assert!((61500..=61599).contains(&created.uid));
    assert_eq!(created.uid, created.gid);
    assert!(exists("svc-fleet-test-a"));
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
    let (start, end) = created.subuids.unwrap();
    assert!(
        subuid.contains(&format!("svc-fleet-test-a:{start}:{}", end - start + 1)),
        "{subuid}"
    );
    assert!(created.notes.iter().any(|n| n.contains("linger skipped")) || created.linger_enabled);

    // Again: success, nothing new.
    let again = ensure_user(&request, &settings).unwrap();
    assert!(!again.created_user && !again.created_group && again.subuids.is_none());
    assert_eq!((again.uid, again.gid), (created.uid, created.gid));

    // Same name, other ids: a conflict, never a silent reuse.
    let err = ensure_user(
        &UserRequest {
            uid: Some(created.uid + 1),
            ..request.clone()
        },
        &settings,
    )
    .unwrap_err();
    assert!(
        matches!(err, UserError::Conflict(ref m) if m.contains("exists with uid")),
        "{err}"
    );

    // Undoing the second call removes nothing.
    undo_user(&again).unwrap();
    assert!(exists("svc-fleet-test-a"));
    // Undoing the first removes the user, group, ranges and home.
    undo_user(&created).unwrap();
    assert!(!exists("svc-fleet-test-a"));
    assert!(!group_exists("svc-fleet-test-a"));
    assert!(
        !std::fs::read_to_string("/etc/subuid")
            .unwrap()
            .contains("svc-fleet-test-a")
    );
    assert!(!std::path::Path::new(&created.home).exists());
}

#[test]
fn an_id_that_belongs_to_another_user_is_refused() {
    let _cleanup = Cleanup("svc-fleet-test-b");
    let home = tempfile::tempdir().unwrap();
    let err = ensure_user(
        &UserRequest {
            name: "svc-fleet-test-b".into(),
            uid: Some(65534),
            gid: None,
            rootless: false,
        },
        &settings(home.path()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("uid 65534 already belongs to user 'nobody'"),
        "{err}"
    );
    assert!(!exists("svc-fleet-test-b"));
    let err = ensure_user(
        &UserRequest {
            name: "Bad Name".into(),
            uid: None,
            gid: None,
            rootless: false,
        },
        &settings(home.path()),
    )
    .unwrap_err();
    assert!(matches!(err, UserError::InvalidName { .. }));
}
