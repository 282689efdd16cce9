//! The health gate after a recreate: the engine's healthcheck reaches
//! `healthy` within the deadline and is never `unhealthy`; without one, the
//! container keeps running for a minimum time without restarting; then an
//! optional TCP, HTTP or exec probe; then the audit's own identity check:
//! no process of the container holds uid 0.

use fleet_core::now_ms;
use std::time::{Duration, Instant};

use fleet_core::step::Probe;
use fleet_core::userns::AccountIds;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::container::{Api, ContainerError};
use crate::inspect::{InspectOptions, Inspector};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub container: String,
    pub deadline_secs: u64,
    pub min_running_secs: u64,
    pub probe: Option<Probe>,
    /// When the stop that took the service down was asked for.
    pub stopped_at_ms: Option<u64>,
    /// When the old container had exited: the start of the downtime.
    #[serde(default)]
    pub exited_at_ms: Option<u64>,
    /// The rootless account whose engine runs the container.
    #[serde(default)]
    pub account: Option<String>,
    /// Under a rootless account: the host ids its namespace maps to. Every
    /// process's host uids must be among them (so never 0, never the old
    /// ids); root inside is then the account itself.
    #[serde(default)]
    pub host_ids: Option<AccountIds>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub container_id: String,
    /// "healthy" (engine healthcheck) or "running" (no healthcheck).
    pub gate: String,
    pub healthy_at_ms: u64,
    /// From the old container exiting to the new one passing verification:
    /// the time the service was down as its clients see it.
    pub downtime_ms: Option<u64>,
    /// From the stop request to verification: the above plus the stop's
    /// own wait for the service to exit.
    #[serde(default)]
    pub downtime_from_stop_ms: Option<u64>,
    pub verdict: String,
    pub probe: Option<String>,
    /// The engine runs no healthcheck here (Podman without systemd): the
    /// agent ran it, through the engine, for as long as verify waited.
    #[serde(default)]
    pub healthcheck_run_by_agent: bool,
}

/// Docker's default healthcheck interval, for a check that sets none.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// When to run a healthcheck the engine does not run: at once, then every
/// interval, as the engine's scheduler would after the first.
struct HealthRunner {
    interval: Duration,
    next: Instant,
}

impl HealthRunner {
    fn for_container(doc: &Value) -> Self {
        let nanos = doc
            .pointer("/Config/Healthcheck/Interval")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let interval = if nanos == 0 {
            DEFAULT_HEALTH_INTERVAL
        } else {
            Duration::from_nanos(nanos).max(Duration::from_millis(200))
        };
        HealthRunner {
            interval,
            next: Instant::now(),
        }
    }

    async fn run_if_due(&mut self, api: &Api<'_>, id: &str) -> Result<(), ContainerError> {
        if Instant::now() < self.next {
            return Ok(());
        }
        self.next = Instant::now() + self.interval;
        match api.run_healthcheck(id).await {
            // 409: not running yet or any more; the loop sees which.
            Ok(_) | Err(ContainerError::Engine { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn fail(message: String) -> ContainerError {
    ContainerError::Verify(message)
}

pub async fn verify(
    api: &Api<'_>,
    inspector: &Inspector,
    request: &VerifyRequest,
) -> Result<VerifyOutcome, ContainerError> {
    let deadline = Instant::now() + Duration::from_secs(request.deadline_secs.max(1));
    let first = api.inspect(&request.container).await?;
    let id = first
        .get("Id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let mut watch = Watch::new(api, &first, request, deadline);
    let gate = watch.gate(api, &id).await?;
    let healthy_at_ms = now_ms();
    let probe = match &request.probe {
        None => None,
        Some(probe) => Some(run_probe(api, &id, probe).await?),
    };
    let verdict = no_root_process(inspector, &id, request.host_ids).await?;
    Ok(VerifyOutcome {
        container_id: id,
        gate: gate.to_string(),
        healthy_at_ms,
        downtime_ms: request
            .exited_at_ms
            .or(request.stopped_at_ms)
            .map(|s| healthy_at_ms.saturating_sub(s)),
        downtime_from_stop_ms: request
            .stopped_at_ms
            .map(|s| healthy_at_ms.saturating_sub(s)),
        verdict,
        probe,
        healthcheck_run_by_agent: watch.agent_health.is_some(),
    })
}

/// The wait for the gate: what it watches for, from the first inspect.
struct Watch {
    deadline: Instant,
    deadline_secs: u64,
    has_healthcheck: bool,
    restarts_at_start: i64,
    /// The healthcheck the agent runs itself, when the engine does not.
    agent_health: Option<HealthRunner>,
    min_running: Duration,
    running_since: Instant,
}

impl Watch {
    fn new(api: &Api<'_>, first: &Value, request: &VerifyRequest, deadline: Instant) -> Self {
        let has_healthcheck = crate::recreate::has_healthcheck(first);
        Watch {
            deadline,
            deadline_secs: request.deadline_secs,
            has_healthcheck,
            restarts_at_start: restart_count(first),
            agent_health: (has_healthcheck && !api.connected().flavour.runs_healthchecks())
                .then(|| HealthRunner::for_container(first)),
            min_running: Duration::from_secs(request.min_running_secs),
            running_since: Instant::now(),
        }
    }

    /// Polls until the container is healthy ("healthy"), or has run for
    /// the minimum time without a healthcheck ("running"); fails when it
    /// exits, restarts, is unhealthy, or the deadline passes.
    async fn gate(&mut self, api: &Api<'_>, id: &str) -> Result<&'static str, ContainerError> {
        loop {
            let doc = api.inspect(id).await?;
            let running = doc.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true);
            if !running {
                let code = doc
                    .pointer("/State/ExitCode")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(-1);
                let logs = api.logs_tail(id, 10).await;
                return Err(fail(format!(
                    "the new container exited (code {code}); last output: {logs}"
                )));
            }
            if restart_count(&doc) > self.restarts_at_start {
                return Err(fail(format!(
                    "the new container restarted {} times",
                    restart_count(&doc) - self.restarts_at_start
                )));
            }
            if let Some(runner) = self.agent_health.as_mut() {
                runner.run_if_due(api, id).await?;
            }
            if self.has_healthcheck {
                let doc = if self.agent_health.is_some() {
                    api.inspect(id).await?
                } else {
                    doc
                };
                match doc.pointer("/State/Health/Status").and_then(|s| s.as_str()) {
                    Some("healthy") => return Ok("healthy"),
                    Some("unhealthy") => {
                        return Err(fail(format!(
                            "the new container's healthcheck reports unhealthy: {}",
                            last_health_output(&doc)
                        )));
                    }
                    _ => {}
                }
            } else if self.running_since.elapsed() >= self.min_running {
                return Ok("running");
            }
            if Instant::now() >= self.deadline {
                return Err(fail(format!(
                    "the new container was not {} within {} s",
                    if self.has_healthcheck {
                        "healthy"
                    } else {
                        "steadily running"
                    },
                    self.deadline_secs
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the last healthcheck printed.
fn last_health_output(doc: &Value) -> String {
    doc.pointer("/State/Health/Log")
        .and_then(|l| l.as_array())
        .and_then(|l| l.last())
        .and_then(|l| l.get("Output"))
        .and_then(|o| o.as_str())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The audit's identity check of the new container: no process of it
/// holds uid 0. Its verdict.
async fn no_root_process(
    inspector: &Inspector,
    id: &str,
    host_ids: Option<AccountIds>,
) -> Result<String, ContainerError> {
    let report = inspector
        .inspect_ids(
            vec![id.to_string()],
            &InspectOptions {
                containers: Vec::new(),
                skip_ownership: true,
                with_users: false,
            },
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let container = report
        .containers
        .first()
        .ok_or_else(|| fail("the new container vanished during verification".into()))?;
    if let Some(account) = host_ids {
        let mapped = |h: u32| {
            h == account.uid
                || (account.subuid_start..account.subuid_start.saturating_add(account.count))
                    .contains(&h)
        };
        let processes = &container.identity.processes;
        if processes.is_empty() {
            return Err(fail("no process of the new container could be read".into()));
        }
        if let Some(stray) = processes
            .iter()
            .find(|p| !p.host_uids.iter().all(|h| mapped(*h)))
        {
            return Err(fail(format!(
                "process {} ({}) of the new container holds host uids {:?}, outside the account's namespace (uid {}, {}..{})",
                stray.pid,
                stray.command,
                stray.host_uids,
                account.uid,
                account.subuid_start,
                account.subuid_start.saturating_add(account.count)
            )));
        }
        return Ok(format!("rootless (root maps to host uid {})", account.uid));
    }
    if let Some(root) = container.identity.processes.iter().find(|p| p.is_root()) {
        return Err(fail(format!(
            "process {} ({}) of the new container still holds uid 0 (uids {:?})",
            root.pid, root.command, root.uids
        )));
    }
    Ok(container.identity.verdict.to_string())
}

fn restart_count(doc: &Value) -> i64 {
    doc.get("RestartCount")
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

async fn run_probe(api: &Api<'_>, id: &str, probe: &Probe) -> Result<String, ContainerError> {
    let timeout = Duration::from_secs(5);
    match probe {
        Probe::Tcp { address } => {
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
                .await
                .map_err(|_| fail(format!("TCP probe to {address} timed out")))?
                .map_err(|e| fail(format!("TCP probe to {address} failed: {e}")))?;
            Ok(format!("tcp {address} ok"))
        }
        Probe::Http { url } => {
            let status = http_get_status(url, timeout)
                .await
                .map_err(|e| fail(format!("HTTP probe {url} failed: {e}")))?;
            if (200..400).contains(&status) {
                Ok(format!("http {url} {status}"))
            } else {
                Err(fail(format!("HTTP probe {url} answered {status}")))
            }
        }
        Probe::Exec { argv } => {
            let (code, output) = api.exec(id, argv).await?;
            if code == 0 {
                Ok(format!("exec {} ok", argv.join(" ")))
            } else {
                Err(fail(format!(
                    "exec probe `{}` exited {code}: {}",
                    argv.join(" "),
                    output.trim()
                )))
            }
        }
    }
}

/// A plain HTTP/1.0 GET (http:// only): the status code.
async fn http_get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed")?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]).to_string();
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_read_and_write_as_the_agent_journaled_them() {
        // The agent's own probe type was `lowercase`, core's is
        // `kebab-case`: the same for one-word kinds, so old intents read.
        for (text, probe) in [
            (
                r#"{"kind":"tcp","address":"127.0.0.1:80"}"#,
                Probe::Tcp {
                    address: "127.0.0.1:80".into(),
                },
            ),
            (
                r#"{"kind":"http","url":"http://x/"}"#,
                Probe::Http {
                    url: "http://x/".into(),
                },
            ),
            (
                r#"{"kind":"exec","argv":["true"]}"#,
                Probe::Exec {
                    argv: vec!["true".into()],
                },
            ),
        ] {
            assert_eq!(serde_json::from_str::<Probe>(text).unwrap(), probe);
            assert_eq!(serde_json::to_string(&probe).unwrap(), text);
        }
    }
}
