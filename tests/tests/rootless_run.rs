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
