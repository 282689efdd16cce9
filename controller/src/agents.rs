//! Connections to agents: one lazily connected mTLS channel per host, kept
//! for reuse (a fleet-wide audit must not pay a handshake per host per call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::tls;
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
