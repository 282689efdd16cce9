//! `--target rootless` as an operator runs it: `fleetctl plan` names what
//! blocks a rootless move (a low port, the host's network, a device) with
//! nothing changed, `fleetctl migrate` moves a container under its own
//! account's rootless Podman through the controller's whole sequence, and
//! `fleetctl rollback` gives back the same rootful container and removes
//! the account the run made.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig, PortBinding};
use fleet_tests::engine::body;
use fleet_tests::fleet::{AccountCleanup, TestFleet, run_containers, user_exists, write_policy};

fn action<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["hosts"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the plan: {plan}"))
        .get("action")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_rootless_cannot_do_blocks_the_plan_and_a_service_moves_and_rolls_back() {
    let fleet = TestFleet::start(1).await;
    let none = |cmd: &[&str]| ContainerCreateBody {
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..body(&fleet.image, cmd)
    };
    let web = fleet.container(1, "web", none(&["sleep", "3600"])).await;
    let low = fleet
        .container(
            1,
            "low",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    port_bindings: Some(HashMap::from([(
                        "80/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some("80".into()),
                        }]),
                    )])),
                    ..Default::default()
                }),
                exposed_ports: Some(vec!["80/tcp".to_string()]),
                ..body(&fleet.image, &["sleep", "3600"])
            },
        )
        .await;
    let hostnet = fleet
        .container(
            1,
            "hostnet",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some("host".into()),
                    ..Default::default()
                }),
                ..body(&fleet.image, &["sleep", "3600"])
            },
        )
        .await;
    let device = fleet
        .container(
            1,
            "device",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    devices: Some(vec![DeviceMapping {
                        path_on_host: Some("/dev/zero".into()),
                        path_in_container: Some("/dev/zero2".into()),
                        cgroup_permissions: Some("rwm".into()),
                    }]),
                    ..Default::default()
                }),
                ..body(&fleet.image, &["sleep", "3600"])
            },
        )
        .await;
    let account = format!("svc-rlrun-{}", std::process::id() % 100000);
    let _cleanup = AccountCleanup(account.clone());
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        &format!("[[rule]]\nname = \"{web}\"\ntarget = \"rootless\"\naccount = \"{account}\"\n"),
    );
    let policy = policy.to_str().unwrap();

    // The plan: each blocker named, with its container refused.
    let plan = fleet
        .ctl(&[
            "plan", "--host", "h1", "--target", "rootless", "--policy", policy, "-o", "json",
        ])
        .await;
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    for (name, says) in [
        (&low, "below this host's unprivileged port start"),
        (&hostnet, "uses the host's network"),
        (&device, "device"),
    ] {
        let a = action(&plan, name);
        assert_eq!(a["kind"], "refused", "{name}: {a}");
        assert!(a.to_string().contains(says), "{name}: {a}");
    }
    let moved = action(&plan, &web);
    assert_eq!(moved["kind"], "migrate", "{moved}");
    assert_eq!(moved["target"]["placement"], "rootless", "{moved}");
    assert_eq!(moved["target"]["account"]["name"], account.as_str());
    assert!(!user_exists(&account), "a plan changes nothing");

    // The move of the one that can.
    let before = fleet.docker().inspect_container(&web, None).await.unwrap();
    let run = fleet
        .ctl(&[
            "migrate",
            "--host",
            "h1",
            "--container",
            &web,
            "--target",
            "rootless",
            "--policy",
            policy,
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    assert_eq!(run.code, 0, "{view}");
    let record = run_containers(&view)
        .into_iter()
        .find(|c| c["plan"]["name"] == web.as_str())
        .unwrap();
    let kinds: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "backup", "user", "image", "stop", "volumes", "place", "verify"
        ],
        "{record}"
    );
    assert!(user_exists(&account));
    let checkpoint = fleet
        .docker()
        .inspect_container(before.id.as_deref().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        checkpoint.state.unwrap().running,
        Some(false),
        "the rootful copy is stopped"
    );
    assert!(checkpoint.name.unwrap().contains(".fleet-pre-"));
    let id = view["run"]["id"].as_str().unwrap().to_string();

    // The audit still has it: on the account's engine, rootless.
    let audit = fleet.ctl(&["audit", "--host", "h1", "-o", "json"]).await;
    assert_eq!(audit.code, 0, "{audit:?}");
    let audit = audit.json();
    let seen = audit["hosts"][0]["report"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == web.as_str() && c["account"] == account.as_str())
        .unwrap_or_else(|| panic!("{web} is not in the audit under {account}: {audit}"))
        .clone();
    assert!(
        seen["identity"]["verdict"].to_string().contains("rootless"),
        "{seen}"
    );
    let table = fleet.ctl(&["audit", "--host", "h1"]).await;
    assert!(
        table.stdout.contains(&format!("under {account}"))
            && table
                .stdout
                .contains("rootless-engine (root maps to host uid"),
        "{}",
        table.stdout
    );

    // Back: the same rootful container, running; the account gone.
    let back = fleet.ctl(&["rollback", &id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let after = fleet.docker().inspect_container(&web, None).await.unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.state.unwrap().running, Some(true));
    assert!(
        !user_exists(&account),
        "the account the run made is removed"
    );
}

/// `/dev/net/tun` as a normal Debian host has it (0666, udev's mode) while
/// a test needs rootless networking; this machine's 0600 is restored after
/// (ROOTLESS.md §7: the machine's quirk, not the host's).
struct TunOpen(u32);

impl TunOpen {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/net/tun")
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
        TunOpen(mode)
    }
}

impl Drop for TunOpen {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
    }
}

/// The body of `GET /` at `address`, or why not.
fn get(address: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &address.parse().unwrap(),
        std::time::Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// An address of this host that is not loopback (the Docker bridge's).
fn outside_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_publish_stays_loopback_only_under_the_account() {
    let _tun = TunOpen::new();
    let fleet = TestFleet::start(1).await;
    let dir = tempfile::Builder::new()
        .prefix("fleet-rlweb")
        .tempdir_in("/var/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("index.html"), "served from the bind\n").unwrap();
    let port = fleet_tests::process::free_port();
    let web = fleet
        .container(
            1,
            "lweb",
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{}:/www", dir.path().display())]),
                    port_bindings: Some(HashMap::from([(
                        "8080/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(port.to_string()),
                        }]),
                    )])),
                    ..Default::default()
                }),
                exposed_ports: Some(vec!["8080/tcp".to_string()]),
                ..body(
                    &fleet.image,
                    &["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                )
            },
        )
        .await;
    let account = format!("svc-rlweb-{}", std::process::id() % 100000);
    let _cleanup = AccountCleanup(account.clone());
    let policy = write_policy(
        dir.path(),
        &format!(
            "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"{web}\"\ntarget = \"rootless\"\naccount = \"{account}\"\nprobe = {{ tcp = \"127.0.0.1:{port}\" }}\n"
        ),
    );
    let loopback = format!("127.0.0.1:{port}");
    let outside = format!("{}:{port}", outside_address());
    let wait_served = || async {
        for _ in 0..100 {
            if get(&loopback).is_ok_and(|t| t.contains("served from the bind")) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        wait_served().await,
        "the rootful service answers on loopback"
    );
    assert!(get(&outside).is_err(), "and not on {outside}");

    let run = fleet
        .ctl(&[
            "migrate",
            "--host",
            "h1",
            "--container",
            &web,
            "--policy",
            policy.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    assert_eq!(run.code, 0, "{view}");
    assert!(wait_served().await, "moved, it answers on loopback: {view}");
    assert!(
        get(&outside).is_err(),
        "moved, it still does not answer on {outside}"
    );
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex_port = format!(":{port:04X}");
    assert!(
        listening
            .lines()
            .any(|l| l.contains(&format!("0100007F{hex_port}"))
                && l.split_whitespace().nth(3) == Some("0A")),
        "something listens on 127.0.0.1:{port}"
    );
    assert!(
        !listening
            .lines()
            .any(|l| l.contains(&format!("00000000{hex_port}"))
                && l.split_whitespace().nth(3) == Some("0A")),
        "nothing listens on 0.0.0.0:{port}"
    );

    let id = view["run"]["id"].as_str().unwrap().to_string();
    let back = fleet.ctl(&["rollback", &id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    assert!(
        wait_served().await,
        "rolled back, the rootful service answers again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_that_existed_keeps_itself_and_its_ranges_after_the_rollback_and_an_overlapping_one_is_refused_by_the_plan()
 {
    let fleet = TestFleet::start(1).await;
    let pid = std::process::id() % 100000;
    let kept = format!("svc-rlpre-{pid}");
    let shared = format!("svc-rlovl-{pid}");
    let victim = format!("svc-rlvic-{pid}");
    let _kept_cleanup = AccountCleanup(kept.clone());
    let _shared_cleanup = AccountCleanup(shared.clone());
    let _victim_cleanup = AccountCleanup(victim.clone());
    let home = format!("/var/lib/fleet-users/{kept}");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Ranges far above what the agent allocates: the kept account's own,
    // and another account's that the shared one's overlaps.
    let base = 3_000_000 + (pid % 1000) * 300_000;
    let own = format!("{base}-{}", base + 65535);
    let theirs = format!("{}-{}", base + 100_000, base + 165_535);
    let overlapping = format!("{}-{}", base + 101_000, base + 166_535);
    {
        let _lock = fleet_tests::fleet::lock_accounts();
        run(&[
            "useradd",
            "--system",
            "--create-home",
            "--home-dir",
            &home,
            "--shell",
            "/usr/sbin/nologin",
            &kept,
        ]);
        run(&[
            "usermod",
            "--add-subuids",
            &own,
            "--add-subgids",
            &own,
            &kept,
        ]);
        run(&[
            "useradd",
            "--system",
            "--shell",
            "/usr/sbin/nologin",
            &victim,
        ]);
        run(&[
            "usermod",
            "--add-subuids",
            &theirs,
            "--add-subgids",
            &theirs,
            &victim,
        ]);
        run(&[
            "useradd",
            "--system",
            "--shell",
            "/usr/sbin/nologin",
            &shared,
        ]);
        run(&[
            "usermod",
            "--add-subuids",
            &overlapping,
            "--add-subgids",
            &overlapping,
            &shared,
        ]);
    }
    let none = |cmd: &[&str]| ContainerCreateBody {
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..body(&fleet.image, cmd)
    };
    let web = fleet.container(1, "preweb", none(&["sleep", "3600"])).await;
    let other = fleet.container(1, "ovlweb", none(&["sleep", "3600"])).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        &format!(
            "[defaults]\nmin_healthy_secs = 1\n\n[[rule]]\nname = \"{web}\"\ntarget = \"rootless\"\naccount = \"{kept}\"\n\n[[rule]]\nname = \"{other}\"\ntarget = \"rootless\"\naccount = \"{shared}\"\n"
        ),
    );
    let policy = policy.to_str().unwrap();

    // The overlapping account is refused by the plan, nothing moved.
    let plan = fleet
        .ctl(&[
            "plan",
            "--host",
            "h1",
            "--container",
            &other,
            "--policy",
            policy,
            "-o",
            "json",
        ])
        .await;
    let plan = plan.json();
    let a = action(&plan, &other);
    assert_eq!(a["kind"], "refused", "{a}");
    assert!(
        a.to_string().contains(&format!("overlap {victim}'s")),
        "{a}"
    );
    let refused = fleet
        .ctl(&[
            "migrate",
            "--host",
            "h1",
            "--container",
            &other,
            "--policy",
            policy,
            "--yes",
            "-o",
            "json",
        ])
        .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    let after = fleet
        .docker()
        .inspect_container(&other, None)
        .await
        .unwrap();
    assert_eq!(after.state.unwrap().running, Some(true), "put back running");
    assert!(
        user_exists(&shared),
        "a pre-existing account is never removed"
    );

    // The pre-existing account: used, then left exactly as it was.
    let subuid_before = std::fs::read_to_string("/etc/subuid").unwrap();
    let moved = fleet
        .ctl(&[
            "migrate",
            "--host",
            "h1",
            "--container",
            &web,
            "--policy",
            policy,
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = moved.json();
    assert_eq!(moved.code, 0, "{view}");
    let id = view["run"]["id"].as_str().unwrap().to_string();
    let back = fleet.ctl(&["rollback", &id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    assert!(user_exists(&kept), "the account that existed stays");
    let subuid_after = std::fs::read_to_string("/etc/subuid").unwrap();
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{kept}:")))
            .map(str::to_string)
    };
    assert_eq!(line(&subuid_after), line(&subuid_before), "its range stays");
    assert!(std::path::Path::new(&home).is_dir(), "its home stays");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_the_account_cannot_hold_fails_before_the_stop_and_changes_nothing() {
    let fleet = TestFleet::start(1).await;
    // A file owned by uid 100000: beyond the 65,536 ids an account maps.
    let dir = tempfile::tempdir().unwrap();
    let image = format!("fleet-test/bigid:{}", std::process::id());
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN touch /big && chown 100000:100000 /big\nLABEL fleet-test=1\n",
            fleet.image
        ),
    )
    .unwrap();
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let web = fleet
        .container(
            1,
            "bigid",
            ContainerCreateBody {
                image: Some(image.clone()),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..body(&image, &["sleep", "3600"])
            },
        )
        .await;
    let account = format!("svc-rlbig-{}", std::process::id() % 100000);
    let _cleanup = AccountCleanup(account.clone());
    let policy = write_policy(
        dir.path(),
        &format!("[[rule]]\nname = \"{web}\"\ntarget = \"rootless\"\naccount = \"{account}\"\n"),
    );
    let before = fleet.docker().inspect_container(&web, None).await.unwrap();
    let run = fleet
        .ctl(&[
            "migrate",
            "--host",
            "h1",
            "--container",
            &web,
            "--policy",
            policy.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    assert_ne!(run.code, 0, "{view}");
    let record = run_containers(&view)
        .into_iter()
        .find(|c| c["plan"]["name"] == web.as_str())
        .unwrap();
    let error = record["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.starts_with("image step failed")
            && error.contains("its file /big is owned by 100000:100000")
            && error.contains("give the account a larger subordinate range"),
        "{error}"
    );
    let kinds: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"stop"), "nothing stopped: {kinds:?}");
    let after = fleet.docker().inspect_container(&web, None).await.unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(
        after.state.unwrap().started_at,
        before.state.unwrap().started_at,
        "never stopped"
    );
    assert!(
        !user_exists(&account),
        "the account the run made is removed"
    );
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
}
