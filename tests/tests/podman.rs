//! The audit against real Podman: rootful (with pod membership) and
//! rootless (container root is the user's own uid; other ids map into its
//! subordinate range).

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use fleet_tests::cli::fleetctl;
use fleet_tests::pki::TestPki;
use fleet_tests::podman::PodmanService;
use fleet_tests::servers::{AgentOptions, start_agent, start_controller};
use fleet_tests::unique;
use serde_json::Value;

async fn audit(podman: &PodmanService) -> Value {
    let pki = TestPki::new();
    let agent = start_agent(
        pki.files("agent"),
        AgentOptions {
            engine_socket: podman.socket.clone(),
            ..Default::default()
        },
    )
    .await;
    let controller =
        start_controller(pki.files("controller"), &[("pod-host", &agent.address)]).await;
    let out = fleetctl(
        &controller.address,
        &pki.files("alice"),
        &["audit", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

fn container<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["hosts"][0]["report"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {json}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn rootful_podman_verdicts_and_pod_membership() {
    let podman = tokio::task::spawn_blocking(PodmanService::rootful)
        .await
        .unwrap();
    let pod = unique("pod");
    let out = podman.podman(&[
        "pod",
        "create",
        "--infra=false",
        "--label",
        "fleet-test=1",
        "--name",
        &pod,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = unique("p-root");
    let user = unique("p-user");
    podman.run(&root, &["--pod", &pod], &["sleep", "1000"]);
    podman.run(&user, &["--user", "app"], &["sleep", "1000"]);

    let json = audit(&podman).await;
    let engine = &json["hosts"][0]["report"]["engine"];
    assert_eq!(engine["kind"], "podman");
    assert_eq!(engine["rootless"], false);
    let c = container(&json, &root);
    assert_eq!(c["identity"]["verdict"]["kind"], "root");
    assert_eq!(c["pod"], pod.as_str());
    let c = container(&json, &user);
    assert_eq!(c["identity"]["verdict"]["kind"], "non-root");
    assert_eq!(
        c["identity"]["uid"], 1000,
        "the name resolved through the image's passwd"
    );
    assert!(c.get("pod").is_none() || c["pod"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn rootless_podman_root_is_the_users_own_uid() {
    let podman = tokio::task::spawn_blocking(|| PodmanService::rootless("fleet-rl-test"))
        .await
        .unwrap();
    let (_, user_uid) = podman.user.clone().unwrap();
    let subuid_start = std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("fleet-rl-test:")?
                .split(':')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .expect("useradd gave the user subordinate ids");
    let root = unique("rl-root");
    let app = unique("rl-app");
    podman.run(&root, &[], &["sleep", "1000"]);
    podman.run(&app, &["--user", "1000"], &["sleep", "1000"]);

    let json = audit(&podman).await;
    assert_eq!(json["hosts"][0]["report"]["engine"]["rootless"], true);
    let c = container(&json, &root);
    assert_eq!(
        c["identity"]["verdict"],
        serde_json::json!({"kind": "rootless-engine", "host_uid": user_uid})
    );
    assert_eq!(
        c["identity"]["processes"][0]["uids"],
        serde_json::json!([0, 0, 0, 0])
    );
    assert_eq!(c["findings"][0]["check"], "4.1");
    assert_eq!(
        c["findings"][0]["severity"], "low",
        "root only inside the user namespace"
    );
    let c = container(&json, &app);
    assert_eq!(c["identity"]["verdict"]["kind"], "non-root");
    // podman troubleshooting #34: container uid n ≥ 1 → subuid_start + n − 1.
    let host = subuid_start + 1000 - 1;
    assert_eq!(
        c["identity"]["processes"][0]["host_uids"],
        serde_json::json!([host, host, host, host])
    );
}
