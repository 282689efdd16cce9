//! The controller's client edge: connections to agents (one lazily
//! connected mTLS channel per host, kept for reuse: a fleet-wide audit must
//! not pay a handshake per host per call), the calls made on them
//! (`inspect`, `calls`), and the one reading of a failed call. Everything
//! of the agent's protobuf API the controller uses is named here and in
//! its submodules only.

pub mod calls;
pub mod inspect;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::tls::{self, ConnectFailure, error_chain, explain_connect_error};
use fleet_proto::agent::v1::agent_client::AgentClient;
use tokio_rustls::rustls::ClientConfig;
use tonic::transport::Channel;

use crate::inventory::Host;

/// Largest report one agent may send (a host with thousands of containers).
const MAX_AGENT_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug)]
pub struct AgentPool {
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl AgentPool {
    pub fn new(tls: Arc<ClientConfig>, connect_timeout: Duration) -> Self {
        AgentPool {
            tls,
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `host`; a changed address gets a new channel.
    pub fn client(&self, host: &Host) -> Result<AgentClient<Channel>, tls::TlsError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&host.name) {
            Some((address, channel)) if *address == host.address => channel.clone(),
            _ => {
                let channel = tls::channel(&host.address, self.tls.clone(), self.connect_timeout)?;
                channels.insert(host.name.clone(), (host.address.clone(), channel.clone()));
                channel
            }
        };
        Ok(AgentClient::new(channel).max_decoding_message_size(MAX_AGENT_MESSAGE))
    }

    pub fn forget(&self, name: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// What kind of failure a call to an agent met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing answered (down, not listening, the connection broke).
    Unreachable,
    Timeout,
    /// A certificate or a role was refused, by either side.
    Refused,
    /// The agent answered with an error of its own.
    AgentError,
}

/// A failed call, read once for every caller: what failed, whether the
/// agent never answered (so the same call again is safe and may reach
/// it), and one sentence naming the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub kind: FailureKind,
    pub unanswered: bool,
    pub message: String,
}

/// Transport failures carry a source error; statuses the agent sent do
/// not. Classified by what failed, never by the words of an explanation.
pub fn classify(host: &Host, status: &tonic::Status) -> CallFailure {
    let peer = format!("agent {} at {}", host.name, host.address);
    if let Some(source) = std::error::Error::source(status) {
        let kind = match ConnectFailure::of(&error_chain(source)) {
            ConnectFailure::NothingListening | ConnectFailure::Other => FailureKind::Unreachable,
            ConnectFailure::TimedOut => FailureKind::Timeout,
            ConnectFailure::Expired
            | ConnectFailure::UnknownCa
            | ConnectFailure::PeerNotFromOurCa
            | ConnectFailure::NoClientCertificate
            | ConnectFailure::WrongRole
            | ConnectFailure::CertificateRefused
            | ConnectFailure::WrongName
            | ConnectFailure::ClosedInHandshake
            | ConnectFailure::RefusedAfterHandshake => FailureKind::Refused,
        };
        return CallFailure {
            kind,
            unanswered: true,
            message: explain_connect_error(&peer, source),
        };
    }
    // tonic's own status for a transport failure whose source it did not
    // keep (its fixed wording, "transport error", not an agent's words).
    let transport =
        status.code() == tonic::Code::Unavailable && status.message().contains("transport");
    let kind = match status.code() {
        _ if transport => FailureKind::Unreachable,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => FailureKind::Refused,
        tonic::Code::DeadlineExceeded => FailureKind::Timeout,
        _ => FailureKind::AgentError,
    };
    CallFailure {
        kind,
        unanswered: transport,
        message: format!("{peer}: {}", status.message()),
    }
}
