//! Rootless move downtime (issue 11): the old container's exit → the new
//! one verified healthy under its account's rootless Podman (fleet's
//! stop, volumes, place and verify steps, as the controller drives them;
//! the account and the image load happen before the stop and are not
//! downtime), against the same container stopped and started again under
//! the same rootful engine (`docker stop && docker start`) until its
//! healthcheck command passes, run at once as fleet's verify runs it (not
//! after the engine's next interval).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_proto::agent::v1 as pb;

use super::median;
use super::recreate::docker_cli as docker;
use crate::agent_client::{collect, key};
use crate::fleet::AccountCleanup;
use crate::host::{host, roll_back, stop, verify};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// A service with a fast healthcheck and no network (rootless networking
/// needs /dev/net/tun, root's only on these machines).
fn docker_run(name: &str, image: &str) -> anyhow::Result<()> {
    docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "fleet-test=1",
        "--network",
        "none",
        "--stop-timeout",
        "5",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
        image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])
}

fn wait_healthy(name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Health.Status}}", name])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "healthy" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} never became healthy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut h = host().await;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..args.runs {
        // Reference: the same container down and up again, rootful.
        let name = format!("fleet-bench-rlref-{}-{i}", std::process::id());
        docker_run(&name, &h.image)?;
        wait_healthy(&name)?;
        docker(&["stop", &name])?;
        let exited = Instant::now();
        docker(&["start", &name])?;
        while docker(&["exec", &name, "true"]).is_err() {
            if exited.elapsed() > Duration::from_secs(30) {
                bail!("{name} never passed its healthcheck");
            }
        }
        theirs.push(exited.elapsed());
        let _ = docker(&["rm", "-f", &name]);

        // fleet: moved under its own account.
        let name = format!("fleet-bench-rl-{}-{i}", std::process::id());
        let account = format!("svc-bench-{}-{i}", std::process::id() % 10000);
        let _cleanup = AccountCleanup(account.clone());
        docker_run(&name, &h.image)?;
        wait_healthy(&name)?;
        let run = format!("rlbench{}-{i}", std::process::id());
        let c = &mut h.client;
        collect(
            c.ensure_user(pb::EnsureUserRequest {
                key: key(&run, "user"),
                name: account.clone(),
                uid: None,
                gid: None,
                rootless: true,
            })
            .await,
        )
        .await?;
        collect(
            c.load_image(pb::LoadImageRequest {
                key: key(&run, "image"),
                container: name.clone(),
                account: account.clone(),
            })
            .await,
        )
        .await?;
        collect(c.stop(stop(&run, "stop", &name)).await).await?;
        collect(
            c.move_volumes(pb::MoveVolumesRequest {
                key: key(&run, "volumes"),
                container: name.clone(),
                account: account.clone(),
            })
            .await,
        )
        .await?;
        collect(
            c.place(pb::PlaceRequest {
                key: key(&run, "place"),
                container: name.clone(),
                account: account.clone(),
                userns: None,
                uid: None,
                gid: None,
            })
            .await,
        )
        .await?;
        let mut check = verify(&run, "verify", &name, 30, 0, None);
        check.account = account.clone();
        let verified = collect(c.verify(check).await).await?;
        let outcome: serde_json::Value =
            serde_json::from_str(&verified.result.outcome_json).context("verify outcome")?;
        let ms = outcome["downtime_ms"]
            .as_u64()
            .context("verify reported no downtime")?;
        ours.push(Duration::from_millis(ms));
        roll_back(c, &run).await?;
        let _ = docker(&["rm", "-f", &name]);
    }
    let f = median(ours);
    let d = median(theirs);
    println!(
        "## rootless move downtime (exit → healthcheck passes), median of {}",
        args.runs
    );
    println!(
        "- fleet move under its own account {:.0} ms / docker stop && docker start, then the healthcheck {:.0} ms = **{:.2}**",
        f.as_secs_f64() * 1000.0,
        d.as_secs_f64() * 1000.0,
        f.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}
