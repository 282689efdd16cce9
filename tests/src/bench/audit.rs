//! Audit figures (issue 2): one host's inspection against `docker inspect
//! $(docker ps -aq)`, cold and warm; a fleet-wide `fleetctl audit` over many
//! agent endpoints; the real agent's idle RSS.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_core::CancellationToken;
use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::agent::v1 as agent_pb;
use fleet_proto::agent::v1::agent_client::AgentClient;
use tokio::net::TcpListener;

use super::{median, ms, sibling_binary};
use crate::engine::{Scope, body, docker, test_image};
use crate::pki::TestPki;
use crate::process::tls_args;
use crate::servers::{AgentOptions, agent_config, start_agent};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Containers on the one-host inspection benchmark.
    #[arg(long, default_value_t = 50)]
    containers: usize,
    /// Agent endpoints for the fan-out benchmark.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Containers each endpoint reports in the fan-out benchmark.
    #[arg(long, default_value_t = 20)]
    containers_per_agent: usize,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

fn docker_inspect_all() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", "docker inspect $(docker ps -aq) > /dev/null"])
        .status()?;
    if !status.success() {
        bail!("docker inspect failed");
    }
    Ok(started.elapsed())
}

async fn inspect_over_grpc(
    client: &mut AgentClient<tonic::transport::Channel>,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let report = client
        .inspect(agent_pb::InspectRequest::default())
        .await?
        .into_inner();
    Ok((started.elapsed(), report.containers.len()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let existing = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?
        .len();
    if existing > 0 {
        eprintln!(
            "note: the engine already has {existing} containers; both sides inspect them too"
        );
    }
    let pki = TestPki::new();
    let scope = Scope::new(&docker);
    let mut ids = Vec::new();
    eprintln!("creating {} containers...", args.containers);
    for i in 0..args.containers {
        let name = crate::unique(&format!("bench{i}"));
        ids.push(scope.run(&name, body(&image, &["sleep", "3600"])).await);
    }

    println!("# fleet-bench\n");
    println!(
        "## 1. one host, {} containers: inspection",
        args.containers + existing
    );
    let controller_tls = TlsMaterial::load(&pki.files("controller"))?.client_config(Role::Agent)?;
    for (label, cache) in [
        ("cold (no cache)", false),
        ("warm (event-driven cache)", true),
    ] {
        let agent = start_agent(
            pki.files("agent"),
            AgentOptions {
                inspect_cache: cache,
                ..Default::default()
            },
        )
        .await;
        let channel = tls::channel(
            &agent.address,
            controller_tls.clone(),
            Duration::from_secs(5),
        )?;
        let mut client = AgentClient::new(channel).max_decoding_message_size(256 << 20);
        // Connect, and let the cache see the engine once.
        let (_, seen) = inspect_over_grpc(&mut client).await?;
        let _ = inspect_over_grpc(&mut client).await?;
        let mut fleet = Vec::new();
        let mut reference = Vec::new();
        for _ in 0..args.runs {
            reference.push(docker_inspect_all()?);
            fleet.push(inspect_over_grpc(&mut client).await?.0);
        }
        let (f, d) = (median(fleet), median(reference));
        let ratio = f.as_secs_f64() / d.as_secs_f64();
        println!(
            "- {label}: fleet agent {} / docker inspect $(docker ps -aq) {} = **{ratio:.3}** ({seen} containers, median of {})",
            ms(f),
            ms(d),
            args.runs
        );
    }

    // Fan-out: K containers on the engine, M endpoints sharing one inspector.
    let keep = args
        .containers_per_agent
        .saturating_sub(existing)
        .min(ids.len());
    for id in ids.drain(keep..) {
        let _ = docker
            .remove_container(
                &id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    println!(
        "\n## 2. fan-out: {} agent endpoints × {} containers",
        args.agents,
        keep + existing
    );
    let shutdown = CancellationToken::new();
    let state = tempfile::tempdir()?;
    let config = agent_config(
        pki.files("agent"),
        &AgentOptions::default(),
        state.path().into(),
    );
    let inspector = fleet_agent::start_inspector(&config, &shutdown);
    let server_tls = fleet_agent::server_tls(&pki.files("agent"))?;
    let steps = std::sync::Arc::new(fleet_agent::steps::StepRunner::new(
        state.path(),
        inspector.engine(),
        inspector.clone(),
        Default::default(),
    ));
    let mut hosts = String::new();
    for i in 0..args.agents {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        hosts.push_str(&format!(
            "[[hosts]]\nname = \"h{i:04}\"\naddress = \"{}\"\n",
            listener.local_addr()?
        ));
        tokio::spawn(fleet_agent::serve(
            inspector.clone(),
            steps.clone(),
            server_tls.clone(),
            listener,
            shutdown.clone(),
        ));
    }
    let controller_dir = tempfile::tempdir()?;
    let controller_listener = TcpListener::bind("127.0.0.1:0").await?;
    let controller_address = controller_listener.local_addr()?.to_string();
    let files = pki.files("controller");
    let config_path = controller_dir.path().join("controller.toml");
    std::fs::write(
        &config_path,
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nstate_dir = \"{}\"\n{hosts}",
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            controller_dir.path().join("state").display()
        ),
    )?;
    let controller_config = fleet_controller::ControllerFlags {
        config: Some(config_path),
        ..Default::default()
    }
    .resolve()?;
    tokio::spawn(fleet_controller::run(
        controller_config,
        controller_listener,
        shutdown.clone(),
    ));
    let fleetctl = sibling_binary("fleetctl")?;
    let alice = pki.files("alice");
    let audit = || -> anyhow::Result<(Duration, usize)> {
        let started = Instant::now();
        let out = tls_args(
            Command::new(&fleetctl).args(["--controller", &controller_address]),
            &alice,
        )
        .args(["audit", "-o", "json", "--skip-ownership"])
        .stderr(Stdio::inherit())
        .output()?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!("fleetctl audit failed with {}", out.status);
        }
        Ok((elapsed, out.stdout.len()))
    };
    // The first audit also opens the controller's 1,000 agent connections.
    let mut ready = false;
    for _ in 0..50 {
        if audit().is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !ready {
        bail!("the controller never answered");
    }
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..args.runs {
        let (d, b) = audit()?;
        samples.push(d);
        bytes = b;
    }
    let fan_out = median(samples);
    println!(
        "- `fleetctl audit -o json` over {} hosts: **{}** wall (median of {}, connections warm; {:.1} MB of JSON; goal ≤ 1 s)",
        args.agents,
        ms(fan_out),
        args.runs,
        bytes as f64 / 1e6
    );
    shutdown.cancel();

    println!("\n## 3. agent idle RSS");
    let agent_bin = sibling_binary("fleet-agent")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let files = pki.files("agent");
    let mut child = tls_args(
        Command::new(&agent_bin).args(["serve", "--listen", &format!("127.0.0.1:{port}")]),
        &files,
    )
    .arg("--state-dir")
    .arg(state.path())
    .env("FLEET_LOG", "warn")
    .spawn()?;
    let rss = |pid: u32| -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")?;
        Ok(kb / 1024.0)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss(child.id())?;
    let channel = tls::channel(
        &format!("127.0.0.1:{port}"),
        controller_tls,
        Duration::from_secs(5),
    )?;
    let mut client = AgentClient::new(channel);
    let _ = inspect_over_grpc(&mut client).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(child.id())?;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "- fleet-agent RSS: **{idle:.1} MiB** idle after start, {after:.1} MiB after serving an audit (goal ≤ 15 MiB)"
    );
    drop(scope);
    Ok(())
}
