//! The fleet audit: ask every selected agent at once, each with its own
//! deadline; a host that is down or refuses is reported, never fatal.

use std::time::{Duration, Instant};

use fleet_core::tls::{ConnectFailure, error_chain, explain_connect_error};
use fleet_proto::agent::v1 as agent_pb;
use fleet_proto::controller::v1 as pb;
use pb::host_error::Kind;

use crate::agents::AgentPool;
use crate::inventory::Host;

pub async fn audit_hosts(
    pool: &AgentPool,
    hosts: Vec<Host>,
    timeout: Duration,
    ask: agent_pb::InspectRequest,
) -> Vec<pb::HostAudit> {
    let audits = hosts
        .into_iter()
        .map(|host| audit_one(pool, host, timeout, ask.clone()));
    futures::future::join_all(audits).await
}

async fn audit_one(
    pool: &AgentPool,
    host: Host,
    timeout: Duration,
    ask: agent_pb::InspectRequest,
) -> pb::HostAudit {
    let started = Instant::now();
    let outcome = match pool.client(&host) {
        Err(e) => host_error(Kind::Unreachable, e.to_string()),
        Ok(mut client) => {
            let mut request = tonic::Request::new(ask);
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.inspect(request)).await {
                Ok(Ok(response)) => pb::host_audit::Outcome::Report(response.into_inner()),
                Ok(Err(status)) => classify(&host, &status),
                Err(_) => host_error(
                    Kind::Timeout,
                    format!(
                        "agent {} at {} did not answer within {} ms",
                        host.name,
                        host.address,
                        timeout.as_millis()
                    ),
                ),
            }
        }
    };
    if let pb::host_audit::Outcome::Error(e) = &outcome {
        tracing::warn!(host = %host.name, address = %host.address, error = %e.message, "host not audited");
    }
    pb::HostAudit {
        host: Some(crate::service::host_to_pb(&host)),
        outcome: Some(outcome),
        elapsed_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
    }
}

fn host_error(kind: Kind, message: String) -> pb::host_audit::Outcome {
    pb::host_audit::Outcome::Error(pb::HostError {
        kind: kind as i32,
        message,
    })
}

/// Transport failures carry a source error; statuses the agent sent do not.
fn classify(host: &Host, status: &tonic::Status) -> pb::host_audit::Outcome {
    use std::error::Error;
    let peer = format!("agent {} at {}", host.name, host.address);
    if let Some(source) = status.source() {
        // By what failed, not by the words of the explanation.
        let kind = match ConnectFailure::of(&error_chain(source)) {
            ConnectFailure::NothingListening | ConnectFailure::Other => Kind::Unreachable,
            ConnectFailure::TimedOut => Kind::Timeout,
            ConnectFailure::Expired
            | ConnectFailure::UnknownCa
            | ConnectFailure::PeerNotFromOurCa
            | ConnectFailure::NoClientCertificate
            | ConnectFailure::WrongRole
            | ConnectFailure::CertificateRefused
            | ConnectFailure::WrongName
            | ConnectFailure::ClosedInHandshake
            | ConnectFailure::RefusedAfterHandshake => Kind::Refused,
        };
        return host_error(kind, explain_connect_error(&peer, source));
    }
    let kind = match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Kind::Refused,
        tonic::Code::DeadlineExceeded => Kind::Timeout,
        _ => Kind::AgentError,
    };
    host_error(kind, format!("{peer}: {}", status.message()))
}
