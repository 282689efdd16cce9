//! The agent's inspect call: one host's report, within its own deadline;
//! any failure is a `CallFailure` naming the host.

use std::time::Duration;

use fleet_core::audit::HostReport;
use fleet_proto::agent::v1 as pb;

use crate::agents::{AgentPool, CallFailure, FailureKind, classify};
use crate::inventory::Host;

/// What to ask an agent's inspect for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InspectAsk {
    /// Leave out the walk of each mount's ownership (a fast audit).
    pub skip_ownership: bool,
    /// Read each image's passwd and group (what planning needs).
    pub with_users: bool,
}

pub async fn inspect(
    pool: &AgentPool,
    host: &Host,
    timeout: Duration,
    ask: InspectAsk,
) -> Result<HostReport, CallFailure> {
    let mut client = pool.client(host).map_err(|e| CallFailure {
        kind: FailureKind::Unreachable,
        unanswered: true,
        message: e.to_string(),
    })?;
    let mut request = tonic::Request::new(pb::InspectRequest {
        containers: Vec::new(),
        skip_ownership: ask.skip_ownership,
        with_users: ask.with_users,
    });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.inspect(request)).await {
        Ok(Ok(response)) => Ok(HostReport::from(response.into_inner())),
        Ok(Err(status)) => Err(classify(host, &status)),
        Err(_) => Err(CallFailure {
            kind: FailureKind::Timeout,
            unanswered: true,
            message: format!(
                "agent {} at {} did not answer within {} ms",
                host.name,
                host.address,
                timeout.as_millis()
            ),
        }),
    }
}
