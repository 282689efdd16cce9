//! Invariant 4: only the controller can drive an agent; only operators can
//! drive the controller. Every refusal here is a real TLS handshake or a
//! real RPC against real servers.

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::agent::v1 as agent_pb;
use fleet_proto::agent::v1::agent_client::AgentClient;
use fleet_proto::controller::v1 as pb;
use fleet_proto::controller::v1::controller_client::ControllerClient;
use fleet_tests::cli::fleetctl;
use fleet_tests::pki::TestPki;
use fleet_tests::servers::{AgentOptions, start_agent, start_controller};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn no_client_cert_config(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_refuses_a_client_without_certificate() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let channel = tls::channel(
        &controller.address,
        no_client_cert_config(&pki),
        Duration::from_secs(3),
    )
    .unwrap();
    let status = ControllerClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("a client without certificate must be refused");
    let explained = tls::explain_connect_error("controller", &status);
    assert!(tls::ConnectFailure::of(&tls::error_chain(&status)).is_refusal());
    assert!(
        explained.contains("requires a client certificate"),
        "unclear refusal: {explained}"
    );
}

/// Presents `name`'s certificate to the controller without fleetctl's own
/// pre-flight check, so the refusal seen is the server's.
async fn server_refusal(pki: &TestPki, address: &str, name: &str) -> String {
    let material = TlsMaterial::load(&pki.files(name)).unwrap();
    let channel = tls::channel(
        address,
        material.client_config(Role::Controller).unwrap(),
        Duration::from_secs(3),
    )
    .unwrap();
    let status = ControllerClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("the server must refuse this certificate");
    // fleetctl never retries what is certainly a refusal.
    let failure = tls::ConnectFailure::of(&tls::error_chain(&status));
    assert!(failure.is_refusal(), "{failure:?}: {status:?}");
    tls::explain_connect_error("controller", &status)
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_refuses_a_certificate_from_another_ca() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let refusal = server_refusal(&pki, &controller.address, "mallory").await;
    assert!(
        refusal.contains("not signed by the same fleet CA"),
        "unclear refusal: {refusal}"
    );
    // fleetctl says what is wrong before the server has to.
    let out = fleetctl(&controller.address, &pki.files("mallory"), &["whoami"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let error = out.error.unwrap();
    assert!(
        error.contains("mallory.pem is not signed by the fleet CA"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_refuses_an_expired_certificate() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let refusal = server_refusal(&pki, &controller.address, "old").await;
    assert!(
        refusal.contains("has expired"),
        "unclear refusal: {refusal}"
    );
    let out = fleetctl(&controller.address, &pki.files("old"), &["whoami"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let error = out.error.unwrap();
    assert!(
        error.contains("old.pem has expired (valid until"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_refuse_to_start_with_an_expired_certificate() {
    let pki = TestPki::new();
    let expired = fleet_core::role::Role::Controller;
    let files = pki.issue(expired, "ctl", &["127.0.0.1"]);
    // Replace the fresh certificate with the expired operator's: wrong role
    // aside, the expiry must be named first.
    std::fs::copy(pki.files("old").cert, &files.cert).unwrap();
    std::fs::copy(pki.files("old").key, &files.key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = fleet_tests::servers::agent_config(
        files,
        &AgentOptions::default(),
        pki.dir().to_path_buf(),
    );
    let error = fleet_agent::run(config, listener, fleet_core::CancellationToken::new())
        .await
        .expect_err("an agent with an expired certificate must not start");
    assert!(error.to_string().contains("has expired"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_refuses_an_agent_certificate_on_its_operator_api() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    for args in [
        &["whoami"][..],
        &["hosts", "list"],
        &["hosts", "add", "x", "127.0.0.1:1"],
    ] {
        let out = fleetctl(&controller.address, &pki.files("agent"), args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        let error = out.error.unwrap();
        assert!(
            error.contains("refused") && error.contains("not a certificate with role agent"),
            "{args:?}: unclear refusal: {error}"
        );
    }
    // The controller's own certificate is no operator either.
    let out = fleetctl(
        &controller.address,
        &pki.files("controller"),
        &["hosts", "list"],
    )
    .await;
    assert!(out.error.unwrap().contains("role controller"));
}

#[tokio::test(flavor = "multi_thread")]
async fn viewer_reads_but_cannot_change_the_fleet() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let viewer = pki.files("bob");
    let operator = pki.files("alice");

    let out = fleetctl(&controller.address, &viewer, &["whoami"]).await;
    assert_eq!(
        out.stdout.trim_end(),
        format!("bob (viewer) at {}", controller.address)
    );
    assert_eq!(
        fleetctl(&controller.address, &viewer, &["hosts", "list"])
            .await
            .code,
        0
    );

    let out = fleetctl(
        &controller.address,
        &viewer,
        &["hosts", "add", "web1", "127.0.0.1:7443"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("viewers may only read"),
        "{out:?}"
    );

    let out = fleetctl(
        &controller.address,
        &operator,
        &["hosts", "add", "web1", "127.0.0.1:7443"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = fleetctl(&controller.address, &viewer, &["hosts", "remove", "web1"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("may not call RemoveHost")
    );
    // Refused means refused: the host is still there.
    let listed = fleetctl(
        &controller.address,
        &viewer,
        &["hosts", "list", "-o", "json"],
    )
    .await;
    assert_eq!(listed.json()[0]["name"], "web1");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_accepts_only_the_controller() {
    let pki = TestPki::new();
    let options = AgentOptions {
        engine_socket: "/nonexistent/engine.sock".into(),
        ..Default::default()
    };
    let agent = start_agent(pki.files("agent"), options).await;
    for name in ["alice", "bob", "agent"] {
        let material = TlsMaterial::load(&pki.files(name)).unwrap();
        let channel = tls::channel(
            &agent.address,
            material.client_config(Role::Agent).unwrap(),
            Duration::from_secs(3),
        )
        .unwrap();
        let status = AgentClient::new(channel)
            .inspect(agent_pb::InspectRequest::default())
            .await
            .expect_err("only the controller may call the agent");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{name}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains("accepts only the fleet controller"),
            "{name}: {}",
            status.message()
        );
    }
    // The controller gets through authorization (and then meets the missing engine).
    let material = TlsMaterial::load(&pki.files("controller")).unwrap();
    let channel = tls::channel(
        &agent.address,
        material.client_config(Role::Agent).unwrap(),
        Duration::from_secs(3),
    )
    .unwrap();
    let status = AgentClient::new(channel)
        .inspect(agent_pb::InspectRequest::default())
        .await
        .expect_err("no engine at that socket");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("/nonexistent/engine.sock"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_check_the_role_of_the_server_they_reach() {
    let pki = TestPki::new();
    let agent = start_agent(pki.files("agent"), AgentOptions::default()).await;
    // fleetctl pointed at an agent: the agent's certificate is not a controller's.
    let out = fleetctl(&agent.address, &pki.files("alice"), &["whoami"]).await;
    assert_eq!(out.code, 1);
    let error = out.error.unwrap();
    assert!(
        error.contains("has role agent, expected controller"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn there_is_no_plaintext_mode() {
    let pki = TestPki::new();
    let controller = start_controller(pki.files("controller"), &[]).await;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", controller.address))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3));
    let result = match endpoint.connect().await {
        Ok(channel) => ControllerClient::new(channel)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err(), "plaintext gRPC must not be answered");
}

/// A controller of another fleet: its certificate and its own CA, in a
/// directory of their own. `same_name`: a second `certs init`, whose CA
/// has the very name of the fleet's (the signature, not the issuer, is
/// what differs).
fn controller_from_another_ca(same_name: bool) -> (tempfile::TempDir, fleet_core::tls::TlsFiles) {
    use fleet_core::pki::{self, IssueRequest, Validity};
    let dir = tempfile::tempdir().unwrap();
    let request = IssueRequest {
        role: Role::Controller,
        name: "impostor".into(),
        sans: vec!["127.0.0.1".into()],
        validity: Validity::days_from_now(1).unwrap(),
    };
    if same_name {
        pki::init_ca(dir.path(), false).unwrap();
        pki::issue(dir.path(), dir.path(), &request, true).unwrap();
    } else {
        let (ca, issuer) = pki::ephemeral_ca().unwrap();
        let (cert, key) = pki::issue_pem(&issuer, &request).unwrap();
        std::fs::write(dir.path().join(pki::CA_CERT_FILE), ca).unwrap();
        std::fs::write(dir.path().join("impostor.pem"), cert).unwrap();
        std::fs::write(dir.path().join("impostor.key"), key).unwrap();
    }
    let files = fleet_core::tls::TlsFiles {
        ca: dir.path().join(pki::CA_CERT_FILE),
        cert: dir.path().join("impostor.pem"),
        key: dir.path().join("impostor.key"),
    };
    (dir, files)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_from_another_ca_and_a_server_that_is_not_there_are_said_in_plain_words() {
    let pki = TestPki::new();
    for same_name in [false, true] {
        let (_dir, impostor) = controller_from_another_ca(same_name);
        let controller = start_controller(impostor, &[]).await;
        let out = fleetctl(&controller.address, &pki.files("alice"), &["whoami"]).await;
        assert_eq!(out.code, 1, "{out:?}");
        let error = out.error.unwrap();
        assert!(
            error.starts_with(&format!(
                "the controller {} presented a certificate not signed by the fleet CA given with --ca",
                controller.address
            )) && !error.contains("BadSignature")
                && !error.contains("refused"),
            "{error}"
        );
    }

    let port = fleet_tests::process::free_port();
    let out = fleetctl(
        &format!("127.0.0.1:{port}"),
        &pki.files("alice"),
        &["whoami"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let error = out.error.unwrap();
    assert!(
        error.starts_with(&format!(
            "nothing is listening at the controller 127.0.0.1:{port}"
        )),
        "{error}"
    );
}
