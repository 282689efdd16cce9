//! A rootful Docker container moved under its own account's rootless
//! Podman, step by step over gRPC as the controller drives it, on the real
//! engines of this machine: the account with its subordinate ranges, the
//! account's engine started by the agent (no systemd here), the image
//! loaded as the account, the data remapped through the account's user
//! namespace (default and keep-id), the named volume handed over, the
//! container created and verified there; then the rollback, which gives
//! back the very same rootful container, every inode's stat, and removes
//! the account and its ranges.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use fleet_core::userns::{self, AccountIds, IdKind, Mapping, UsernsMode};
use fleet_proto::agent::v1 as pb;
use fleet_tests::agent_client::{Client, Outcome, collect, key};
use fleet_tests::engine::body;
use fleet_tests::fleet::AccountCleanup;
use fleet_tests::host::{host, inspect, roll_back, stop, verify};
use fleet_tests::tree::{Snap, acl_for, snapshot};
use fleet_tests::{TEST_LABEL, unique};

fn uid_of(name: &str) -> Option<u32> {
    let out = std::process::Command::new("id")
        .args(["-u", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Files owned by 0, 999 and 1000, a directory of 999's, an ACL naming
/// 999 and a setuid file.
fn fill(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("root-file"), b"owned by 0\n").unwrap();
    std::fs::write(root.join("pg-file"), b"owned by 999\n").unwrap();
    std::fs::write(root.join("app-file"), b"owned by 1000\n").unwrap();
    std::fs::write(root.join("sub/deep"), b"deep\n").unwrap();
    chown(&root.join("pg-file"), 999, 999);
    chown(&root.join("app-file"), 1000, 1000);
    chown(&root.join("sub"), 999, 999);
    rustix::fs::setxattr(
        root.join("app-file").as_path(),
        "system.posix_acl_access",
        &acl_for(999),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let setuid = root.join("setuid-bin");
    std::fs::write(&setuid, b"#!/bin/sh\n").unwrap();
    chown(&setuid, 1000, 1000);
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
}

/// The account as the host's files say, read the way the agent reads them.
fn account_ids(name: &str) -> AccountIds {
    let uid = uid_of(name).unwrap();
    let gid: u32 = String::from_utf8_lossy(
        &std::process::Command::new("id")
            .args(["-g", name])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let range = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0] == name).then(|| (f[1].parse::<u32>().unwrap(), f[2].parse::<u32>().unwrap()))
            })
            .unwrap()
    };
    let (subuid_start, count) = range("/etc/subuid");
    let (subgid_start, _) = range("/etc/subgid");
    AccountIds {
        uid,
        gid,
        subuid_start,
        subgid_start,
        count,
    }
}

fn acl_user_ids(value: &[u8]) -> Vec<u32> {
    value[4..]
        .chunks_exact(8)
        .filter(|e| u16::from_le_bytes([e[0], e[1]]) == 2)
        .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
        .collect()
}

/// Every entry as it must be after the move: the same but for its owner,
/// carried through the mapping (and ACL named users likewise); what root
/// owned is the new user's inside first, when there is one.
fn assert_carried(
    before: &BTreeMap<String, Snap>,
    after: &BTreeMap<String, Snap>,
    target: &Mapping,
    inside: Option<(u32, u32)>,
) {
    let carry = |kind, id: u32| {
        let moved = match (id, inside, kind) {
            (0, Some((uid, _)), IdKind::Uid) => uid,
            (0, Some((_, gid)), IdKind::Gid) => gid,
            _ => id,
        };
        userns::carry(&Mapping::Identity, target, kind, moved).unwrap()
    };
    for (path, old) in before {
        let new = after.get(path).unwrap_or_else(|| panic!("{path} is gone"));
        assert_eq!(new.uid, carry(IdKind::Uid, old.uid), "{path} uid");
        assert_eq!(new.gid, carry(IdKind::Gid, old.gid), "{path} gid");
        assert_eq!(new.mode, old.mode, "{path}: mode (setuid kept)");
        assert_eq!(new.content, old.content, "{path}: content");
        if let Some(acl) = old.xattrs.get("system.posix_acl_access") {
            let moved: Vec<u32> = acl_user_ids(acl)
                .into_iter()
                .map(|u| carry(IdKind::Uid, u))
                .collect();
            assert_eq!(
                acl_user_ids(&new.xattrs["system.posix_acl_access"]),
                moved,
                "{path}: ACL"
            );
        }
    }
}

async fn step(
    outcome: Result<tonic::Response<tonic::Streaming<pb::StepEvent>>, tonic::Status>,
) -> Outcome {
    collect(outcome).await.unwrap()
}

fn userns_pb(mode: UsernsMode) -> Option<pb::Userns> {
    Some(pb::Userns {
        keep_id: match mode {
            UsernsMode::Default => None,
            UsernsMode::KeepId { uid, gid } => Some(pb::KeepId { uid, gid }),
        },
    })
}

struct Moved {
    account: AccountIds,
    volume_dir: PathBuf,
    /// Copied across mounts, not renamed.
    copied: bool,
    run: String,
}

/// The whole move of `name` (bind at /b, volume at /data) under `user`.
async fn move_rootless(
    c: &mut Client,
    name: &str,
    user: &str,
    mode: UsernsMode,
    inside: Option<(u32, u32)>,
) -> Moved {
    let run = unique("rl");
    let made = step(
        c.ensure_user(pb::EnsureUserRequest {
            key: key(&run, "user"),
            name: user.into(),
            uid: None,
            gid: None,
            rootless: true,
        })
        .await,
    )
    .await;
    assert!(made.json()["subuids"].is_array(), "{}", made.json());
    let account = account_ids(user);
    let loaded = step(
        c.load_image(pb::LoadImageRequest {
            key: key(&run, "image"),
            container: name.into(),
            account: user.into(),
        })
        .await,
    )
    .await;
    assert_eq!(loaded.json()["image"]["loaded"], true, "{}", loaded.json());
    let notes = loaded.json()["notes"].to_string();
    assert!(
        notes.contains("does not run this host"),
        "the agent says it runs the engine: {notes}"
    );
    step(c.stop(stop(&run, "stop", name)).await).await;
    step(
        c.change_ownership(pb::ChangeOwnershipRequest {
            key: key(&run, "ownership"),
            container: name.into(),
            carry: Some(pb::Carry {
                account: user.into(),
                userns: userns_pb(mode),
                uid: inside.map(|i| i.0),
                gid: inside.map(|i| i.1),
            }),
            ..Default::default()
        })
        .await,
    )
    .await;
    let moved = step(
        c.move_volumes(pb::MoveVolumesRequest {
            key: key(&run, "volumes"),
            container: name.into(),
            account: user.into(),
        })
        .await,
    )
    .await;
    let volume_dir = PathBuf::from(moved.json()["volumes"][0]["to"].as_str().unwrap());
    let copied = moved.json()["volumes"][0]["copied"].as_bool().unwrap();
    let placed = step(
        c.place(pb::PlaceRequest {
            key: key(&run, "place"),
            container: name.into(),
            account: user.into(),
            userns: userns_pb(mode),
            uid: inside.map(|i| i.0),
            gid: inside.map(|i| i.1),
        })
        .await,
    )
    .await;
    let notes = placed.json()["unit_notes"].to_string();
    assert!(
        notes.contains("systemd does not run this host")
            && notes.contains(&format!("fleet-{name}.service")),
        "{notes}"
    );
    let mut check = verify(&run, "verify", name, 30, 2, None);
    check.account = user.into();
    let verified = step(c.verify(check).await).await;
    assert!(
        verified.json()["verdict"]
            .as_str()
            .unwrap()
            .contains(&format!("host uid {}", account.uid)),
        "{}",
        verified.json()
    );
    Moved {
        account,
        volume_dir,
        copied,
        run,
    }
}

/// `podman ARGS` as the account, against its own engine.
fn as_account(account: &AccountIds, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("runuser")
        .args(["-u", &uid_name(account.uid), "--", "env"])
        .arg(format!("XDG_RUNTIME_DIR=/run/user/{}", account.uid))
        .args([
            "podman",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .args(args)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON paths where `a` and `b` differ, with both values.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    json_diff(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{at}/{k}"),
                    )
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| json_diff(p, q, &format!("{at}/{i}")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => vec![format!("{at}: {a} → {b}")],
    }
}

/// What `systemd --user` would do at boot for a `Type=notify` unit: its
/// `ExecStart=` (systemd's quoting and specifiers undone) as the account.
fn boot_from_unit(account: &AccountIds, user: &str, unit: &str, service: &str) {
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-U", &account.uid.to_string()])
        .status();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let runtime = format!("/run/user/{}", account.uid);
    let _ = std::fs::remove_dir_all(&runtime);
    std::fs::create_dir(&runtime).unwrap();
    chown(Path::new(&runtime), account.uid, account.gid);
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<String> = systemd_words(line)
        .into_iter()
        .map(|w| {
            w.replace("%t", &runtime)
                .replace("%n", service)
                .replace("%%", "%")
                .replace("$$", "$")
        })
        .collect();
    let home = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == user).then(|| f[5].to_string())
        })
        .unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", user, "--", "env"])
        .arg(format!("HOME={home}"))
        .arg(format!("XDG_RUNTIME_DIR={runtime}"))
        .arg(format!("PODMAN_SYSTEMD_UNIT={service}"))
        .args(&args)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the unit's ExecStart failed: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command line split as systemd splits it: words, double quotes with
/// backslash escapes.
fn systemd_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut escaped, mut any) =
        (Vec::new(), String::new(), false, false, false);
    for c in line.chars() {
        match (c, quoted, escaped) {
            (_, _, true) => {
                word.push(c);
                escaped = false;
            }
            ('\\', true, false) => escaped = true,
            ('"', _, false) => {
                quoted = !quoted;
                any = true;
            }
            (c, false, false) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (c, _, _) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The processes of the account's container `name`, as host uids.
fn host_uids_of(account: &AccountIds, name: &str) -> Vec<u32> {
    let out = as_account(account, &["inspect", "-f", "{{.State.Pid}}", name]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !pid.is_empty() && pid != "0",
        "no pid for {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect()
}

fn uid_name(uid: u32) -> String {
    let out = std::process::Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

async fn round_trip(mode: UsernsMode, inside: Option<(u32, u32)>, tag: &str) {
    let mut h = host().await;
    let docker = h.scope.docker().clone();
    let name = unique(&format!("rl-{tag}"));
    let user = format!("svc-rl-{tag}-{}", std::process::id() % 10000);
    let _cleanup = AccountCleanup(user.clone());

    // A bind mount under a directory every user may traverse (the account's
    // engine resolves the source as the account), and a named volume.
    let base = tempfile::Builder::new()
        .prefix("fleet-rl")
        .tempdir_in("/var/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bind = base.path().join("bind");
    fill(&bind);
    let volume = unique("rl-vol");
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some([(TEST_LABEL.to_string(), "1".to_string())].into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let volume_data = PathBuf::from(docker.inspect_volume(&volume).await.unwrap().mountpoint);
    fill(&volume_data);
    let bind_before = snapshot(&bind);
    let volume_before = snapshot(&volume_data);

    let old_id = h
        .scope
        .run(
            &name,
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![
                        format!("{}:/b", bind.display()),
                        format!("{volume}:/data"),
                    ]),
                    network_mode: Some("none".into()),
                    // It would come back on its own: the checkpoint must not.
                    restart_policy: Some(bollard::models::RestartPolicy {
                        name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                // Reads its data, writes a file while it runs moved.
                ..body(
                    &h.image,
                    &[
                        "sh",
                        "-c",
                        "cat /data/pg-file /b/app-file && exec sleep 3600",
                    ],
                )
            },
        )
        .await;

    // What the rollback must give back: the configuration, field by field.
    let configured = |doc: bollard::models::ContainerInspectResponse| {
        (
            doc.name,
            serde_json::to_value(doc.config).unwrap(),
            serde_json::to_value(doc.host_config).unwrap(),
            // The engine lists mounts in no particular order.
            serde_json::to_value(doc.mounts.map(|mut m| {
                m.sort_by(|a, b| a.destination.cmp(&b.destination));
                m
            }))
            .unwrap(),
            doc.image,
        )
    };
    let configured_before = configured(inspect(&h.scope, &old_id).await);
    let moved = move_rootless(&mut h.client, &name, &user, mode, inside).await;
    let target = Mapping::Rootless {
        account: moved.account,
        userns: mode,
    };

    // Every inode's host owner is the mapping's formula.
    assert_carried(&bind_before, &snapshot(&bind), &target, inside);
    let in_account = snapshot(&moved.volume_dir);
    assert_carried(&volume_before, &in_account, &target, inside);
    if moved.copied {
        // Across mounts the rootful directory stays, the remapped data in it.
        assert_carried(&volume_before, &snapshot(&volume_data), &target, inside);
    } else {
        assert!(
            !volume_data.exists(),
            "the data left the rootful engine's volume"
        );
    }
    // The service ran as the mapped host uid, read its data and wrote.
    let expected = target.host(IdKind::Uid, inside.map_or(0, |i| i.0)).unwrap();
    assert!(
        host_uids_of(&moved.account, &name)
            .iter()
            .all(|u| *u == expected)
    );
    as_account(
        &moved.account,
        &["exec", &name, "touch", "/data/written-while-moved"],
    );
    let written = snapshot(&moved.volume_dir);
    assert_eq!(
        written["written-while-moved"].uid, expected,
        "a file written while moved"
    );
    // The unit: root-owned, readable by the account's group only (its
    // environment may hold secrets), enabled for the account's boot.
    let service = format!("fleet-{name}.service");
    let unit_path = Path::new("/etc/systemd/user").join(&service);
    let meta = std::fs::symlink_metadata(&unit_path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, moved.account.gid, 0o640)
    );
    let wants = Path::new("/etc/systemd/user/default.target.wants").join(&service);
    assert!(
        std::fs::symlink_metadata(&wants)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A reboot, as far as a host without systemd has one: every process of
    // the account ends, its runtime directory is wiped, and what the unit
    // runs is the container again, as verified.
    boot_from_unit(
        &moved.account,
        &user,
        &std::fs::read_to_string(&unit_path).unwrap(),
        &service,
    );
    assert!(
        host_uids_of(&moved.account, &name)
            .iter()
            .all(|u| *u == expected),
        "the unit's container runs as the mapped uid"
    );
    let logs = as_account(&moved.account, &["logs", &name]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("owned by 999"),
        "the unit's container reads its data"
    );
    // The rootful container is the stopped checkpoint, never to restart.
    let checkpoint = inspect(&h.scope, &old_id).await;
    assert_eq!(checkpoint.state.unwrap().running, Some(false));
    assert_eq!(
        checkpoint.name.unwrap(),
        format!("/{name}.fleet-pre-{}", moved.run)
    );
    assert_eq!(
        checkpoint
            .host_config
            .unwrap()
            .restart_policy
            .unwrap()
            .name
            .unwrap()
            .to_string(),
        "no"
    );

    // Rollback: the very same rootful container, every inode as before;
    // in keep-id mode by the host itself, with no controller (break-glass).
    let order = [
        "verify",
        "place",
        "volumes",
        "ownership",
        "stop",
        "image",
        "user",
    ];
    if inside.is_some() {
        let out = std::process::Command::new(fleet_tests::process::workspace_binary("fleet-agent"))
            .args([
                "rollback",
                "--run",
                &moved.run,
                "--rootless-runtime",
                "runc",
                "--engine-socket",
            ])
            .arg(fleet_tests::engine::engine_socket())
            .arg("--state-dir")
            .arg(h.agent_state())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains(&format!("{} steps undone", order.len())),
            "{said}"
        );
        for step in order {
            assert!(
                said.contains(&format!("undone {step} ({step})")),
                "{step} not undone: {said}"
            );
        }
    } else {
        let undone = roll_back(&mut h.client, &moved.run).await.unwrap();
        let steps: Vec<&str> = undone.iter().map(|r| r.step_id.as_str()).collect();
        assert_eq!(steps, order);
    }
    let back = inspect(&h.scope, &name).await;
    assert_eq!(back.id.as_deref(), Some(old_id.as_str()));
    let configured_after = configured(back.clone());
    let differing = json_diff(
        &serde_json::to_value(&configured_before).unwrap(),
        &serde_json::to_value(&configured_after).unwrap(),
        "",
    );
    assert!(
        differing.is_empty(),
        "the rootful container's name, config, host config (restart policy included), mounts and image as before: {differing:?}"
    );
    assert_eq!(back.state.unwrap().running, Some(true));
    assert_eq!(snapshot(&bind), bind_before);
    let mut volume_after = snapshot(&volume_data);
    let new_file = volume_after
        .remove("written-while-moved")
        .expect("the file written while moved came back");
    assert_eq!(
        (new_file.uid, new_file.gid),
        (0, 0),
        "written by the container's user, who was root's before: root's again"
    );
    // The root directory's times moved with the new file; everything else is exact.
    let root_before = volume_before[""].clone();
    let root_after = volume_after.remove("").unwrap();
    assert_eq!(
        (root_after.uid, root_after.gid, root_after.mode),
        (root_before.uid, root_before.gid, root_before.mode)
    );
    let mut rest_before = volume_before.clone();
    rest_before.remove("");
    assert_eq!(volume_after, rest_before);
    assert!(
        !unit_path.exists() && std::fs::symlink_metadata(&wants).is_err(),
        "the unit and its link are removed"
    );
    // The account, its ranges and its storage are gone.
    assert_eq!(uid_of(&user), None, "the account is removed");
    for file in ["/etc/subuid", "/etc/subgid"] {
        assert!(
            !std::fs::read_to_string(file)
                .unwrap()
                .contains(&format!("{user}:")),
            "{file}"
        );
    }
    assert!(!Path::new(&format!("/var/lib/fleet-users/{user}")).exists());
    let _ = docker
        .remove_volume(
            &volume,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_container_moves_under_its_own_account_in_default_mode_and_back() {
    round_trip(UsernsMode::Default, None, "def").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_moves_in_keep_id_mode_with_its_service_user_as_the_account() {
    round_trip(
        UsernsMode::KeepId { uid: 999, gid: 999 },
        Some((999, 999)),
        "kid",
    )
    .await;
}
