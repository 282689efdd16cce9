//! Bad input gets one clear line naming the thing, the rest of the audit
//! goes on where that makes sense, and nothing crashes.

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fleet_tests::cli::{fleetctl, run_argv};
use fleet_tests::pki::TestPki;
use fleet_tests::servers::{AgentOptions, start_agent, start_controller};

fn host<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {json}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_hosts_are_reported_and_the_others_still_audited() {
    let pki = TestPki::new();
    let good = start_agent(pki.files("agent"), AgentOptions::default()).await;
    let no_engine = start_agent(
        pki.files("agent"),
        AgentOptions {
            engine_socket: "/run/nothing-here/docker.sock".into(),
            ..Default::default()
        },
    )
    .await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // A peer that accepts and then says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let controller = start_controller(
        pki.files("controller"),
        &[
            ("good", &good.address),
            ("no-engine", &no_engine.address),
            ("closed", &closed),
            ("silent", &silent_address),
        ],
    )
    .await;
    let alice = pki.files("alice");
    let started = Instant::now();
    let out = fleetctl(
        &controller.address,
        &alice,
        &["audit", "-o", "json", "--timeout", "2", "--skip-ownership"],
    )
    .await;
    assert_eq!(out.code, 0, "no gate asked for: {out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "hosts are asked in parallel, each with its deadline"
    );
    let json = out.json();

    assert_eq!(host(&json, "good")["status"], "ok");
    let h = host(&json, "no-engine");
    assert_eq!(h["status"], "agent-error");
    let error = h["error"].as_str().unwrap();
    assert!(
        error.contains("/run/nothing-here/docker.sock") && error.contains("agent no-engine"),
        "{error}"
    );
    let h = host(&json, "closed");
    assert_eq!(h["status"], "unreachable");
    assert!(
        h["error"]
            .as_str()
            .unwrap()
            .contains(&format!("nothing is listening at agent closed at {closed}"))
    );
    let h = host(&json, "silent");
    assert_eq!(h["status"], "timeout");
    assert!(
        h["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2000 ms"),
        "{h}"
    );
    assert_eq!(json["summary"]["hosts_not_audited"], 3);

    // A gate cannot vouch for hosts it could not see.
    let out = fleetctl(
        &controller.address,
        &alice,
        &[
            "audit",
            "--fail-on",
            "high",
            "--timeout",
            "2",
            "--host",
            "closed",
        ],
    )
    .await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stdout
            .contains("1 of 1 host not audited: closed (unreachable)"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_hosts_and_empty_selections_are_usage_errors() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[("db1", "127.0.0.1:1")]).await;
    let alice = pki.files("alice");
    let out = fleetctl(&controller.address, &alice, &["audit", "--host", "db9"]).await;
    assert_eq!(out.code, 2);
    assert_eq!(
        out.error.as_deref(),
        Some("unknown host 'db9' (known hosts: db1)")
    );
    let out = fleetctl(
        &controller.address,
        &alice,
        &["audit", "--selector", "env=prod"],
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(out.error.unwrap().contains("no host matches env=prod"));
    let out = fleetctl(
        &controller.address,
        &alice,
        &["audit", "--selector", "envprod"],
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(out.error.unwrap().contains("'envprod' is not key=value"));
    let out = fleetctl(&controller.address, &alice, &["hosts", "remove", "db9"]).await;
    assert_eq!(out.code, 2);
    assert!(out.error.unwrap().contains("unknown host 'db9'"));
    let out = fleetctl(&controller.address, &alice, &["hosts", "remove", "db1"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.error
            .unwrap()
            .contains("defined in the controller's config file")
    );
    let out = fleetctl(
        &controller.address,
        &alice,
        &["hosts", "add", "bad name", "127.0.0.1:1"],
    )
    .await;
    assert!(out.error.unwrap().contains("invalid host name 'bad name'"));
    let out = fleetctl(
        &controller.address,
        &alice,
        &["hosts", "add", "web", "no-port"],
    )
    .await;
    assert!(out.error.unwrap().contains("expected host:port"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_config_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7400\"\n[[hosts]]\nname = \"db1\"\nadress = \"x:1\"\n",
    )
    .unwrap();
    let flags = fleet_controller::ControllerFlags {
        config: Some(path.clone()),
        ..Default::default()
    };
    let error = flags.resolve().unwrap_err().to_string();
    assert!(
        error.contains(&path.display().to_string())
            && error.contains("line 4")
            && error.contains("adress"),
        "{error}"
    );

    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "engine = \"dockr\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
    )
    .unwrap();
    let flags = fleet_agent::AgentFlags {
        config: Some(path),
        ..Default::default()
    };
    let error = flags.resolve().unwrap_err().to_string();
    assert!(error.contains("unknown engine 'dockr'"), "{error}");

    let path = dir.path().join("fleetctl.toml");
    std::fs::write(&path, "controller = 7400\n").unwrap();
    let out = run_argv(&[
        "fleetctl".into(),
        "--config".into(),
        path.display().to_string(),
        "whoami".into(),
    ])
    .await;
    assert_eq!(out.code, 2);
    let error = out.error.unwrap();
    assert!(
        error.contains("fleetctl.toml") && error.contains("line 1"),
        "{error}"
    );

    // Nothing configured at all: say where it could come from.
    let out = run_argv(&[
        "fleetctl".into(),
        "--config".into(),
        dir.path().join("missing.toml").display().to_string(),
        "whoami".into(),
    ])
    .await;
    assert!(out.error.unwrap().contains("cannot read config file"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_certificate_files_are_named() {
    let pki = TestPki::new();
    let mut files = pki.files("alice");
    files.cert = pki.dir().join("nope.pem");
    let out = fleetctl("127.0.0.1:1", &files, &["whoami"]).await;
    assert_eq!(out.code, 2);
    let error = out.error.unwrap();
    assert!(
        error.contains("cannot read certificate") && error.contains("nope.pem"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_with_a_syntax_error_is_called_a_policy_and_says_what_was_expected() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\nmin_healthy_secs = 5\n\n[[rule]]\nimage = \"postgres:*\"\nstrategy = image-user\n",
    )
    .unwrap();
    let policy = policy.display().to_string();
    for args in [
        vec!["plan", "--policy", policy.as_str()],
        vec!["migrate", "--policy", policy.as_str(), "--yes"],
    ] {
        let out = fleetctl(&controller.address, &pki.files("alice"), &args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(
            out.error.unwrap(),
            format!(
                "policy {policy} is malformed: line 6, column 12: expected a quoted string, e.g. strategy = \"image-user\""
            ),
            "{args:?}"
        );
    }
}
