//! Recreate downtime (issues 3 and 8): fleet's stop + recreate until the
//! new container is healthy, against `docker stop && docker rm && docker
//! run` of the same container waiting for the same health. Two figures,
//! as `runs show` reports them: from the old container's exit (the
//! service is down) and from the stop request (it was asked to go).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_agent::container::Api;
use fleet_agent::engine::{Engine, EngineChoice};
use fleet_agent::recreate::{self, RecreateRequest};

use super::median;
use crate::engine::{docker, engine_socket, test_image};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// A service that stops promptly on SIGTERM and has a fast healthcheck.
fn docker_run(name: &str, image: &str, user: Option<&str>) -> anyhow::Result<()> {
    let mut command = Command::new("docker");
    command.args([
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "fleet-test=1",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
    ]);
    if let Some(user) = user {
        command.args(["--user", user]);
    }
    command.args([image, "sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]);
    let out = command.output()?;
    if !out.status.success() {
        bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn healthy(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.State.Health.Status}}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "healthy")
        .unwrap_or(false)
}

fn wait_healthy(name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(name) {
        if Instant::now() > deadline {
            bail!("{name} never became healthy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn remove(name: &str) {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let engine = Engine::new(EngineChoice::Auto, Some(engine_socket()));
    let api = Api::new(engine.connected().await.context("engine")?);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..args.runs {
        // Reference: what an operator types.
        let name = format!("fleet-bench-ref-{}-{i}", std::process::id());
        docker_run(&name, &image, None)?;
        wait_healthy(&name)?;
        let started = Instant::now();
        docker_cli(&["stop", &name])?;
        let exited = Instant::now();
        docker_cli(&["rm", &name])?;
        docker_run(&name, &image, Some("1000:1000"))?;
        wait_healthy(&name)?;
        theirs.push(Downtime::since(started, exited));
        remove(&name);

        // fleet: the same container, recreated faithfully with a new user.
        let name = format!("fleet-bench-ours-{}-{i}", std::process::id());
        docker_run(&name, &image, None)?;
        wait_healthy(&name)?;
        let request = RecreateRequest {
            container: name.clone(),
            uid: 1000,
            gid: 1000,
            run: format!("bench{i}"),
            allow_layer_loss: false,
            together: Vec::new(),
        };
        let plan = recreate::plan(&api, &request).await?;
        let started = Instant::now();
        let outcome = recreate::execute(&api, &plan).await?;
        wait_healthy(&name)?;
        // The agent's own clock marks the exit, as verify reports it.
        let exit_after = outcome
            .exited_at_ms
            .context("the benchmark's container was running")?
            .saturating_sub(outcome.stopped_at_ms);
        ours.push(Downtime::since(
            started,
            started + Duration::from_millis(exit_after),
        ));
        remove(&outcome.new_id);
        remove(&plan.old_id);
    }
    println!("## recreate downtime, median of {}", args.runs);
    for (what, pick) in [
        (
            "exit → healthy",
            (|d: &Downtime| d.from_exit) as fn(&Downtime) -> Duration,
        ),
        ("stop request → healthy", |d: &Downtime| d.from_stop),
    ] {
        let f = median(ours.iter().map(pick).collect());
        let d = median(theirs.iter().map(pick).collect());
        println!(
            "- {what}: fleet {:.0} ms / docker stop && docker rm && docker run {:.0} ms = **{:.2}**",
            f.as_secs_f64() * 1000.0,
            d.as_secs_f64() * 1000.0,
            f.as_secs_f64() / d.as_secs_f64()
        );
    }
    Ok(())
}

/// One measured downtime, ending when the new container is healthy.
struct Downtime {
    from_exit: Duration,
    from_stop: Duration,
}

impl Downtime {
    fn since(stop_requested: Instant, exited: Instant) -> Self {
        let healthy = Instant::now();
        Downtime {
            from_exit: healthy.saturating_duration_since(exited),
            from_stop: healthy.saturating_duration_since(stop_requested),
        }
    }
}

/// `docker ARGS`, which must succeed.
pub(super) fn docker_cli(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
