//! The agent's migration steps over gRPC against the real engine and real
//! files: the full round trip and its rollback (invariant 1), a hostile
//! container racing the ownership walk (invariant 3), failure paths rolled
//! back to the exact prior state, and idempotency of every mutating call.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use fleet_proto::agent::v1 as pb;
use fleet_tests::agent_client::{collect, key};
use fleet_tests::engine::body;
use fleet_tests::fleet::UsersCleanup;
use fleet_tests::host::{
    Host, backup, backups, bind, host, inspect, ownership, recreate, roll_back, stop, verify,
};
use fleet_tests::tree::{build_tree, snapshot};
use fleet_tests::unique;

#[tokio::test(flavor = "multi_thread")]
async fn full_migration_round_trip_then_rollback_restores_everything() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    let vol = base.path().join("vol");
    let outside = base.path().join("host");
    build_tree(&vol, &outside);
    let before = snapshot(&vol);
    let outside_before = snapshot(&outside);
    let name = unique("rt");
    let old_id = h
        .scope
        .run(
            &name,
            ContainerCreateBody {
                host_config: Some(bind(&vol, "/data")),
                ..body(&h.image, &["sleep", "3600"])
            },
        )
        .await;
    let run = unique("run");
    let user = format!("svc-fleet-rt-{}", std::process::id() % 100000);
    let _cleanup = UsersCleanup(vec![user.clone()]);
    let c = &mut h.client;

    let backup = collect(
        c.backup(backup(
            &run,
            &name,
            vec![pb::Hook {
                argv: vec!["sh".into(), "-c".into(), "echo quiesced".into()],
                timeout_secs: 10,
            }],
            7,
        ))
        .await,
    )
    .await
    .unwrap();
    let backup_id = backup.json()["id"].as_str().unwrap().to_string();
    assert!(
        backup.json()["hooks"][0]
            .as_str()
            .unwrap()
            .contains("quiesced")
    );
    let verified = c
        .verify_backup(pb::VerifyBackupRequest {
            backup_id: backup_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{}", verified.outcome_json);

    let made = collect(
        c.ensure_user(pb::EnsureUserRequest {
            key: key(&run, "user"),
            name: user.clone(),
            uid: None,
            gid: None,
            rootless: false,
        })
        .await,
    )
    .await
    .unwrap();
    let uid = made.json()["uid"].as_u64().unwrap() as u32;
    collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap();
    let owned = collect(
        c.change_ownership(ownership(&run, "ownership", &name, &[0, 999], uid))
            .await,
    )
    .await
    .unwrap();
    let report = &owned.json()["mounts"][0][1];
    assert!(report["changed"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(snapshot(&vol)["data/root-file"].uid, uid);
    assert_eq!(
        snapshot(&vol)["data/app-file"].uid,
        1000,
        "remap, not flatten"
    );
    let recreated = collect(c.recreate(recreate(&run, &name, uid)).await)
        .await
        .unwrap();
    let new_id = recreated.json()["new_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    let checked = collect(c.verify(verify(&run, "verify", &name, 30, 2, None)).await)
        .await
        .unwrap();
    assert_eq!(checked.json()["verdict"], "non-root");
    assert!(checked.json()["downtime_ms"].as_u64().is_some());
    assert_eq!(
        inspect(&h.scope, &name).await.config.unwrap().user.unwrap(),
        format!("{uid}:{uid}")
    );

    let undone = roll_back(c, &run).await.unwrap();
    let steps: Vec<&str> = undone.iter().map(|r| r.step_id.as_str()).collect();
    assert_eq!(
        steps,
        ["verify", "recreate", "ownership", "stop", "user", "backup"]
    );
    assert!(undone.iter().all(|r| r.undone));

    let back = inspect(&h.scope, &name).await;
    assert_eq!(
        back.id.as_deref(),
        Some(old_id.as_str()),
        "the very same container"
    );
    assert_eq!(back.state.unwrap().running, Some(true));
    assert_eq!(
        snapshot(&vol),
        before,
        "every owner, mode, xattr, capability, ACL and byte as before"
    );
    assert_eq!(snapshot(&outside), outside_before);
    assert!(
        !std::process::Command::new("getent")
            .args(["passwd", &user])
            .output()
            .unwrap()
            .status
            .success(),
        "the user is gone"
    );
    assert!(
        h.scope
            .docker()
            .inspect_container(&new_id, None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_root_container_cannot_steer_the_ownership_walk_out_of_its_volume() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    let vol = base.path().join("vol");
    let canary = base.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    for i in 0..100 {
        std::fs::write(canary.join(format!("host-file-{i}")), b"host").unwrap();
    }
    std::fs::write(canary.join("passwd"), b"root:x:0:0\n").unwrap();
    for d in 0..6 {
        let dir = vol.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..300 {
            std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    // A hard link to a host file, planted in the volume.
    std::fs::hard_link(canary.join("passwd"), vol.join("planted")).unwrap();
    let canary_before = snapshot(&canary);
    let name = unique("hostile");
    let swap = format!(
        "while true; do for i in 0 1 2 3 4 5; do mv /data/d$i /data/.p$i && ln -s {c} /data/d$i && rm /data/d$i && mv /data/.p$i /data/d$i; done; done",
        c = canary.display()
    );
    h.scope
        .run(
            &name,
            ContainerCreateBody {
                host_config: Some(bind(&vol, "/data")),
                ..body(&h.image, &["sh", "-c", &swap])
            },
        )
        .await;
    let run = unique("run");
    let mut raced = 0;
    for round in 0..6 {
        let step = format!("own{round}");
        let out = collect(
            h.client
                .change_ownership(ownership(
                    &run,
                    &step,
                    &name,
                    &[0, 2000 + round as u32 - 1],
                    2000 + round as u32,
                ))
                .await,
        )
        .await;
        let out = match out {
            Ok(out) => out,
            // Under load the container can win every retry on one
            // directory: the walk refuses (safe, nothing outside touched).
            Err(status)
                if status
                    .message()
                    .contains("kept changing while they were walked") =>
            {
                raced += 1;
                continue;
            }
            Err(status) => panic!("round {round}: {status:?}"),
        };
        let report = &out.json()["mounts"][0][1];
        raced += report["raced"]["count"].as_u64().unwrap() as usize
            + report["vanished"]["count"].as_u64().unwrap() as usize;
        assert!(
            report["refused_hardlinks"]["paths"][0]
                .as_str()
                .unwrap()
                .starts_with("planted"),
            "{report}"
        );
    }
    assert_eq!(
        snapshot(&canary),
        canary_before,
        "nothing outside the volume changed owner"
    );
    eprintln!("the container raced the walk {raced} times");
    // The container still races the undo's walk. Under load it can win
    // every pass over one directory: that undo refuses (nothing outside
    // touched) and, as documented, the next one resumes from its ledger.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match roll_back(&mut h.client, &run).await {
            Ok(_) => break,
            Err(status)
                if attempts < 5
                    && status
                        .message()
                        .contains("kept changing while they were walked") => {}
            Err(status) => panic!("rollback attempt {attempts}: {status:?}"),
        }
        assert_eq!(snapshot(&canary), canary_before, "after a refused undo");
    }
    assert_eq!(snapshot(&canary), canary_before);
}

/// Runs stop → ownership → recreate → verify; verify must fail; rollback
/// must bring back the same container and the same files.
async fn failure_is_rolled_back(h: &mut Host, make: ContainerCreateBody, vol: &Path, expect: &str) {
    let before = snapshot(vol);
    let name = unique("fails");
    let old_id = h.scope.run(&name, make).await;
    let c = &mut h.client;
    let run = unique("run");
    collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap();
    collect(
        c.change_ownership(ownership(&run, "ownership", &name, &[0], 1000))
            .await,
    )
    .await
    .unwrap();
    collect(c.recreate(recreate(&run, &name, 1000)).await)
        .await
        .unwrap();
    let failed = collect(c.verify(verify(&run, "verify", &name, 20, 3, None)).await)
        .await
        .unwrap_err();
    assert!(failed.message().contains(expect), "{}", failed.message());
    roll_back(c, &run).await.unwrap();
    let back = inspect(&h.scope, &name).await;
    assert_eq!(back.id.as_deref(), Some(old_id.as_str()));
    assert_eq!(
        back.state.unwrap().running,
        Some(true),
        "the old container runs again"
    );
    assert_eq!(snapshot(vol), before, "ownership as before");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_container_that_exits_at_once_is_rolled_back() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    std::fs::write(base.path().join("state"), b"x").unwrap();
    let make = ContainerCreateBody {
        host_config: Some(bind(base.path(), "/data")),
        ..body(
            &h.image,
            &[
                "sh",
                "-c",
                "[ \"$(id -u)\" = 0 ] && exec sleep 3600; echo 'need root'; exit 3",
            ],
        )
    };
    failure_is_rolled_back(&mut h, make, base.path(), "exited (code 3)").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_container_whose_healthcheck_goes_unhealthy_is_rolled_back() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    let image = h.image.clone();
    let make = ContainerCreateBody {
        healthcheck: Some(HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), "[ \"$(id -u)\" = 0 ]".into()]),
            interval: Some(500_000_000),
            retries: Some(1),
            ..Default::default()
        }),
        host_config: Some(bind(base.path(), "/data")),
        ..body(&image, &["sleep", "3600"])
    };
    failure_is_rolled_back(&mut h, make, base.path(), "unhealthy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_container_that_cannot_bind_its_privileged_port_is_rolled_back() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    let image = h.image.clone();
    let make = ContainerCreateBody {
        host_config: Some(HostConfig {
            sysctls: Some(HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "1024".to_string(),
            )])),
            ..bind(base.path(), "/data")
        }),
        ..body(&image, &["httpd", "-f", "-p", "80", "-h", "/data"])
    };
    failure_is_rolled_back(&mut h, make, base.path(), "exited").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mutating_call_sent_twice_has_one_effect() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    let vol = base.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    for i in 0..20 {
        std::fs::write(vol.join(format!("f{i}")), b"x").unwrap();
    }
    let before = snapshot(&vol);
    let name = unique("twice");
    let old_id = h
        .scope
        .run(
            &name,
            ContainerCreateBody {
                host_config: Some(bind(&vol, "/data")),
                ..body(&h.image, &["sleep", "3600"])
            },
        )
        .await;
    let run = unique("run");
    let user = format!("svc-fleet-tw-{}", std::process::id() % 100000);
    let _cleanup = UsersCleanup(vec![user.clone()]);
    let c = &mut h.client;
    for attempt in 0..2 {
        let replayed = attempt == 1;
        let b = collect(c.backup(backup(&run, &name, vec![], 1)).await)
            .await
            .unwrap();
        assert_eq!(b.result.replayed, replayed);
        let u = collect(
            c.ensure_user(pb::EnsureUserRequest {
                key: key(&run, "user"),
                name: user.clone(),
                uid: None,
                gid: None,
                rootless: false,
            })
            .await,
        )
        .await
        .unwrap();
        assert_eq!(u.result.replayed, replayed);
        assert_eq!(
            u.json()["created_user"],
            true,
            "the recorded result, not a second creation"
        );
        let uid = u.json()["uid"].as_u64().unwrap() as u32;
        let s = collect(c.stop(stop(&run, "stop", &name)).await)
            .await
            .unwrap();
        assert_eq!(s.result.replayed, replayed);
        let o = collect(
            c.change_ownership(ownership(&run, "ownership", &name, &[0], uid))
                .await,
        )
        .await
        .unwrap();
        assert_eq!(o.result.replayed, replayed);
        let r = collect(c.recreate(recreate(&run, &name, uid)).await)
            .await
            .unwrap();
        assert_eq!(r.result.replayed, replayed);
        let v = collect(c.verify(verify(&run, "verify", &name, 20, 1, None)).await)
            .await
            .unwrap();
        assert_eq!(v.result.replayed, replayed);
    }
    // One backup, one checkpoint container, one new container.
    let backups = backups(c).await;
    assert_eq!(
        backups
            .iter()
            .filter(|b| b["container_name"] == name.as_str())
            .count(),
        1
    );
    let names: Vec<String> = h
        .scope
        .docker()
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .filter(|n| n.contains(&name))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The step kind is part of its identity.
    let wrong = collect(c.stop(stop(&run, "ownership", &name)).await)
        .await
        .unwrap_err();
    assert!(
        wrong.message().contains("was a ownership step")
            || wrong.message().contains("was an ownership step"),
        "{}",
        wrong.message()
    );
    roll_back(c, &run).await.unwrap();
    // A rollback sent twice has one effect too.
    let again = roll_back(c, &run).await.unwrap();
    assert!(again.iter().all(|r| r.replayed && r.undone));
    assert_eq!(
        inspect(&h.scope, &name).await.id.as_deref(),
        Some(old_id.as_str())
    );
    assert_eq!(snapshot(&vol), before);
    // An undone run's steps are not done again under the same ids.
    let refused = collect(c.stop(stop(&run, "stop", &name)).await)
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("was undone"),
        "{}",
        refused.message()
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_runs_http_and_exec_probes_and_reports_their_failure() {
    let mut h = host().await;
    let port = 30000 + std::process::id() % 20000;
    let name = unique("probed");
    let make = ContainerCreateBody {
        exposed_ports: Some(vec!["8080/tcp".into()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![bollard::models::PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            )])),
            ..Default::default()
        }),
        ..body(&h.image, &["httpd", "-f", "-p", "8080", "-h", "/etc"])
    };
    h.scope.run(&name, make).await;
    let c = &mut h.client;
    let run = unique("run");
    collect(c.recreate(recreate(&run, &name, 1000)).await)
        .await
        .unwrap();
    let http = pb::Probe {
        kind: Some(pb::probe::Kind::HttpUrl(format!(
            "http://127.0.0.1:{port}/passwd"
        ))),
    };
    let ok = collect(
        c.verify(verify(&run, "verify-http", &name, 20, 1, Some(http)))
            .await,
    )
    .await
    .unwrap();
    assert_eq!(
        ok.json()["probe"],
        format!("http http://127.0.0.1:{port}/passwd 200")
    );
    let exec = pb::Probe {
        kind: Some(pb::probe::Kind::Exec(pb::ExecProbe {
            argv: vec!["sh".into(), "-c".into(), "id -u; exit 4".into()],
        })),
    };
    let failed = collect(
        c.verify(verify(&run, "verify-exec", &name, 20, 1, Some(exec)))
            .await,
    )
    .await
    .unwrap_err();
    assert!(
        failed.message().contains("exited 4") && failed.message().contains("1000"),
        "{}",
        failed.message()
    );
    let missing = pb::Probe {
        kind: Some(pb::probe::Kind::TcpAddress("127.0.0.1:1".into())),
    };
    let failed = collect(
        c.verify(verify(&run, "verify-tcp", &name, 20, 1, Some(missing)))
            .await,
    )
    .await
    .unwrap_err();
    assert!(
        failed.message().contains("TCP probe to 127.0.0.1:1 failed"),
        "{}",
        failed.message()
    );
    roll_back(c, &run).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_streams_its_progress_up_to_its_totals() {
    let mut h = host().await;
    let base = tempfile::tempdir().unwrap();
    // Two mounts, 48 MiB in big files and many small ones: several reports
    // (every 16 MiB at the latest), counted across both mounts.
    let mounts = [(base.path().join("a"), 8), (base.path().join("b"), 4)];
    for (dir, big) in &mounts {
        std::fs::create_dir_all(dir.join("small")).unwrap();
        for i in 0..*big {
            std::fs::write(dir.join(format!("big{i}")), vec![i as u8; 4 << 20]).unwrap();
        }
        for i in 0..500 {
            std::fs::write(dir.join(format!("small/{i}")), format!("{i}")).unwrap();
        }
    }
    let name = unique("progress");
    let binds = mounts
        .iter()
        .enumerate()
        .map(|(i, (dir, _))| format!("{}:/m{i}", dir.display()))
        .collect();
    let create = ContainerCreateBody {
        host_config: Some(HostConfig {
            binds: Some(binds),
            ..Default::default()
        }),
        ..body(&h.image, &["sleep", "3600"])
    };
    h.scope.run(&name, create).await;
    let run = unique("run");
    let done = collect(h.client.backup(backup(&run, &name, vec![], 1)).await)
        .await
        .unwrap();
    let counts: Vec<(u64, u64)> = done
        .progress
        .iter()
        .filter(|p| p.entries > 0 || p.bytes > 0)
        .map(|p| (p.entries, p.bytes))
        .collect();
    assert!(counts.len() >= 4, "several reports: {counts:?}");
    assert!(
        counts
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "counts only grow: {counts:?}"
    );
    let meta = done.json();
    let mut totals = (0, 0);
    for m in meta["mounts"].as_array().unwrap() {
        totals.0 += m["outcome"]["entries"].as_u64().unwrap();
        totals.1 += m["outcome"]["bytes"].as_u64().unwrap();
    }
    assert_eq!(
        counts.last(),
        Some(&totals),
        "the last report is the totals"
    );
    assert!(totals.1 >= 48 << 20 && totals.0 >= 1000, "{totals:?}");
}
