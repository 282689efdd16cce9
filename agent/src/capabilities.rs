//! The host probe for a rootless target: read off the host (files, and
//! `podman --version`), so the audit and the plan say what a move under an
//! account's rootless Podman would meet. Kept for a minute: the facts
//! change with a package install, not between two audits, and a fleet-wide
//! audit must not start a podman process per host per call.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_core::capabilities::HostCapabilities;

const FRESH_FOR: Duration = Duration::from_secs(60);

static LAST: Mutex<Option<(Instant, HostCapabilities)>> = Mutex::new(None);

/// The host's capabilities, probed at most once a minute.
pub async fn current() -> HostCapabilities {
    let cached = LAST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(at, _)| at.elapsed() < FRESH_FOR)
        .map(|(_, caps)| caps.clone());
    if let Some(mut caps) = cached {
        // A stat, read fresh: an operator's chmod counts at once.
        caps.net_tun_open = net_tun_open();
        return caps;
    }
    let caps = probe().await;
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), caps.clone()));
    caps
}

/// A podman that does not answer its version within this is not there.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

const QUADLET: &str = "/usr/libexec/podman/quadlet";

pub async fn probe() -> HostCapabilities {
    HostCapabilities {
        probed: true,
        podman_version: podman_version().await,
        quadlet: Path::new(QUADLET).exists(),
        // What sd_booted(3) checks.
        systemd_running: Path::new("/run/systemd/system").is_dir(),
        loginctl: on_path("loginctl"),
        cgroup_version: if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            2
        } else {
            1
        },
        newuidmap: on_path("newuidmap"),
        newgidmap: on_path("newgidmap"),
        unprivileged_port_start: std::fs::read_to_string(
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        )
        .ok()
        .and_then(|text| text.trim().parse().ok()),
        net_tun_open: net_tun_open(),
    }
}

/// `/dev/net/tun` readable and writable by every user.
fn net_tun_open() -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
}

/// A tool in the system's own directories, by absolute path: a root agent
/// runs what it found there, never what its `PATH` would pick.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|path| path.is_file())
}

fn on_path(name: &str) -> bool {
    tool(name).is_some()
}

async fn podman_version() -> Option<String> {
    let podman = tool("podman")?;
    let run = tokio::process::Command::new(podman)
        .arg("--version")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}
