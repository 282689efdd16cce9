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
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.0).output();
        let _ = std::process::Command::new("groupdel").arg(&self.0).output();
    }
}

/// Homes under `home`, and a record of allocated ids of the test's own
/// (the host's record beside /etc/passwd would fill up over test runs).
fn settings(home: &std::path::Path) -> UserSettings {
    UserSettings {
        home_root: home.to_path_buf(),
        uid_range: (61500, 61599),
        id_record: Some(home.join(".allocated-ids")),
        ..Default::default()
    }
}

#[test]
fn creates_once_refuses_conflicts_and_undoes_only_its_own() {
    let _cleanup = Cleanup("svc-fleet-test-a".into());
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
    undo_user(&again, &settings).unwrap();
    assert!(exists("svc-fleet-test-a"));
    // Undoing the first removes the user, group, ranges and home.
    undo_user(&created, &settings).unwrap();
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
    let _cleanup = Cleanup("svc-fleet-test-b".into());
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
    // An existing account that is root (a policy's `user = "root"`).
    let err = ensure_user(
        &UserRequest {
            name: "root".into(),
            uid: None,
            gid: None,
            rootless: false,
        },
        &settings(home.path()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("never has uid or gid 0"), "{err}");
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

/// Several agents (threads here) creating users at the same moment: every
/// one gets ids of its own. shadow-utils checks an id is free before it
/// locks, so without fleet's host-wide lock two groups end up sharing a gid
/// (seen in CI: a later groupdel failed with "cannot remove the primary
/// group of user ..." of another run's user).
#[test]
fn concurrent_creations_never_share_an_id() {
    const N: usize = 6;
    let names: Vec<String> = (0..N).map(|i| format!("svc-fleet-test-c{i}")).collect();
    let _cleanup: Vec<Cleanup> = names.iter().map(|n| Cleanup(n.clone())).collect();
    let home = tempfile::tempdir().unwrap();
    let settings = UserSettings {
        uid_range: (61600, 61699),
        ..settings(home.path())
    };
    let barrier = std::sync::Barrier::new(N);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let (barrier, settings) = (&barrier, &settings);
                scope.spawn(move || {
                    barrier.wait();
                    ensure_user(
                        &UserRequest {
                            name: name.clone(),
                            uid: None,
                            gid: None,
                            rootless: false,
                        },
                        settings,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.expect("every concurrent creation succeeds"))
        .collect();
    let ids = |path: &str, column: usize| -> Vec<(String, u32)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("svc-fleet-test-c"))
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0].to_string(), f[column].parse().unwrap())
            })
            .collect()
    };
    let uids = ids("/etc/passwd", 2);
    let gids = ids("/etc/group", 2);
    assert_eq!(uids.len(), N, "{uids:?}");
    assert_eq!(gids.len(), N, "{gids:?}");
    let distinct = |v: &[(String, u32)]| {
        v.iter()
            .map(|(_, id)| *id)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(distinct(&uids), N, "uids shared: {uids:?}");
    assert_eq!(distinct(&gids), N, "gids shared: {gids:?}");
    for outcome in &outcomes {
        assert_eq!(outcome.uid, outcome.gid);
    }
    // And the undos, concurrent too, each remove exactly their own.
    std::thread::scope(|scope| {
        for outcome in &outcomes {
            let settings = &settings;
            scope.spawn(move || undo_user(outcome, settings).unwrap());
        }
    });
    for name in &names {
        assert!(!exists(name) && !group_exists(name), "{name} left behind");
    }
}

/// A rollback removes the account it made; files the service wrote may
/// still carry its ids. The next account never gets them, even from an
/// agent that starts afresh, and the record says who had them.
#[test]
fn an_id_fleet_gave_once_is_never_given_again() {
    let _cleanup = [
        Cleanup("svc-fleet-test-r1".into()),
        Cleanup("svc-fleet-test-r2".into()),
        Cleanup("svc-fleet-test-r3".into()),
    ];
    let home = tempfile::tempdir().unwrap();
    let settings = UserSettings {
        uid_range: (61700, 61799),
        ..settings(home.path())
    };
    let request = |name: &str, rootless: bool| UserRequest {
        name: name.into(),
        uid: None,
        gid: None,
        rootless,
    };
    let first = ensure_user(&request("svc-fleet-test-r1", true), &settings).unwrap();
    undo_user(&first, &settings).unwrap();
    assert!(!exists("svc-fleet-test-r1"));
    // The same settings again, as a restarted (or reinstalled) agent reads them.
    let settings = settings.clone();
    let second = ensure_user(&request("svc-fleet-test-r2", true), &settings).unwrap();
    assert_ne!(
        second.uid, first.uid,
        "a removed account's uid was handed out again"
    );
    assert_ne!(second.gid, first.gid);
    let (a, b) = (first.subuids.unwrap(), second.subuids.unwrap());
    assert!(
        b.0 > a.1 || b.1 < a.0,
        "subordinate ranges overlap: {a:?} {b:?}"
    );
    let record = std::fs::read_to_string(settings.id_record_path()).unwrap();
    assert!(
        record.contains("svc-fleet-test-r1") && record.contains(&first.uid.to_string()),
        "{record}"
    );
    // An explicit id the policy names is honoured, with a note.
    undo_user(&second, &settings).unwrap();
    let explicit = ensure_user(
        &UserRequest {
            uid: Some(first.uid),
            gid: Some(first.gid),
            ..request("svc-fleet-test-r3", false)
        },
        &settings,
    )
    .unwrap();
    assert_eq!(explicit.uid, first.uid);
    assert!(
        explicit
            .notes
            .iter()
            .any(|n| n.contains("given by fleet to an earlier account")),
        "{:?}",
        explicit.notes
    );
    undo_user(&explicit, &settings).unwrap();
}
