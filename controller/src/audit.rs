//! The fleet audit: ask every selected agent at once, each with its own
//! deadline; a host that is down or refuses is reported, never fatal.

use std::time::{Duration, Instant};

use fleet_core::audit::HostReport;

use crate::agents::inspect::{InspectAsk, inspect};
use crate::agents::{AgentPool, CallFailure};
use crate::inventory::Host;

/// One host's part of an audit.
#[derive(Debug, Clone)]
pub struct HostAudit {
    pub host: Host,
    pub outcome: Result<HostReport, CallFailure>,
    pub elapsed_ms: u32,
}

pub async fn audit_hosts(
    pool: &AgentPool,
    hosts: Vec<Host>,
    timeout: Duration,
    ask: InspectAsk,
) -> Vec<HostAudit> {
    let audits = hosts
        .into_iter()
        .map(|host| audit_one(pool, host, timeout, ask));
    futures::future::join_all(audits).await
}

async fn audit_one(pool: &AgentPool, host: Host, timeout: Duration, ask: InspectAsk) -> HostAudit {
    let started = Instant::now();
    let outcome = inspect(pool, &host, timeout, ask).await;
    if let Err(e) = &outcome {
        tracing::warn!(host = %host.name, address = %host.address, error = %e.message, "host not audited");
    }
    HostAudit {
        host,
        outcome,
        elapsed_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
    }
}
