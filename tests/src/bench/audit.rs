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
use bollard::models::{ContainerCreateBody, HostConfig};
use futures::StreamExt;

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
    /// The containers of the one-host benchmark: `realistic` (named and
    /// numeric users across three images, mounts, stopped containers) or
    /// `empty` (every container with an empty `User`, the first figure).
    #[arg(long, default_value = "realistic")]
    mix: Mix,
    /// Only the one-host inspection (no fan-out, no RSS).
    #[arg(long)]
    inspection_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mix {
    Realistic,
    Empty,
}

/// One container of the realistic mix, by its index: out of every ten,
/// three with an empty `User`, one numeric (`1000:1000` or `1000`, which
/// takes its group from passwd), six named across three images (`nobody`,
/// `app`, `app:staff`, `svc`), of which three stopped (one created, two
/// exited) and two with a bind mount.
struct Kind {
    user: &'static str,
    image: usize,
    running: bool,
    exited: bool,
    mount: bool,
}

fn kind(i: usize) -> Kind {
    let k = |user, image, running, exited, mount| Kind {
        user,
        image,
        running,
        exited,
        mount,
    };
    match i % 10 {
        0..=2 => k("", i % 3, true, false, false),
        3 if i % 20 == 3 => k("1000:1000", 0, true, false, false),
        3 => k("1000", 1, true, false, false),
        4 => k("nobody", 0, true, false, false),
        5 => k("app", 1, true, false, false),
        6 => k("app:staff", 2, true, false, true),
        7 => k("nobody", 0, false, false, false),
        8 => k("app", 1, false, true, true),
        _ => k("svc", 2, false, true, false),
    }
}

/// The test image and two images built on it (their own ids and a layer
/// each, the same users).
async fn images(docker: &bollard::Docker) -> anyhow::Result<Vec<String>> {
    let base = test_image(docker).await;
    let mut images = vec![base.clone()];
    for variant in 1..=2 {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, data)?;
            Ok(())
        };
        add(
            "Dockerfile",
            format!("FROM {base}\nCOPY variant /etc/variant\n").as_bytes(),
        )?;
        add("variant", format!("{variant}\n").as_bytes())?;
        let context = builder.into_inner()?;
        let tag = format!("{base}-variant{variant}");
        let options = bollard::query_parameters::BuildImageOptions {
            t: Some(tag.clone()),
            rm: true,
            forcerm: true,
            labels: Some(std::collections::HashMap::from([(
                crate::TEST_LABEL.to_string(),
                "1".to_string(),
            )])),
            ..Default::default()
        };
        let mut build = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(step) = build.next().await {
            if let Some(error) = step?.error_detail.and_then(|d| d.message) {
                bail!("building {tag}: {error}");
            }
        }
        images.push(tag);
    }
    Ok(images)
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
    let images = images(&docker).await?;
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
    let mounts = tempfile::tempdir()?;
    eprintln!(
        "creating {} containers ({:?} mix)...",
        args.containers, args.mix
    );
    let mut exited = Vec::new();
    for i in 0..args.containers {
        let name = crate::unique(&format!("bench{i}"));
        if args.mix == Mix::Empty {
            ids.push(scope.run(&name, body(&images[0], &["sleep", "3600"])).await);
            continue;
        }
        let kind = kind(i);
        let cmd: &[&str] = if kind.exited {
            &["true"]
        } else {
            &["sleep", "3600"]
        };
        let mut create = ContainerCreateBody {
            user: Some(kind.user.to_string()),
            ..body(&images[kind.image], cmd)
        };
        if kind.mount {
            let dir = mounts.path().join(format!("m{i}"));
            std::fs::create_dir_all(dir.join("sub"))?;
            for f in 0..20 {
                std::fs::write(dir.join(format!("sub/f{f}")), b"data")?;
            }
            create.host_config = Some(HostConfig {
                binds: Some(vec![format!("{}:/data", dir.display())]),
                ..Default::default()
            });
        }
        let id = if kind.running || kind.exited {
            scope.run(&name, create).await
        } else {
            scope.create(&name, create).await
        };
        if kind.exited {
            exited.push(id.clone());
        }
        ids.push(id);
    }
    for id in &exited {
        docker
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>)
            .collect::<Vec<_>>()
            .await;
    }

    println!("# fleet-bench\n");
    println!(
        "## 1. one host, {} containers: inspection",
        args.containers + existing
    );
    if args.mix == Mix::Realistic {
        let kinds: Vec<Kind> = (0..args.containers).map(kind).collect();
        let count = |f: &dyn Fn(&Kind) -> bool| kinds.iter().filter(|k| f(k)).count();
        let named =
            |k: &Kind| !k.user.is_empty() && !k.user.starts_with(|c: char| c.is_ascii_digit());
        println!(
            "(realistic mix: {} empty User, {} numeric, {} named across 3 images of which {} stopped; {} with a bind mount)\n",
            count(&|k| k.user.is_empty()),
            count(&|k| k.user.starts_with(|c: char| c.is_ascii_digit())),
            count(&named),
            count(&|k| named(k) && !k.running),
            count(&|k| k.mount),
        );
    }
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
    if args.inspection_only {
        drop(scope);
        return Ok(());
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
