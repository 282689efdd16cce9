//! The controller's configuration: defaults < TOML file < environment < flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet_core::config::{ConfigError, listen_address, load_toml, tls_files};
use fleet_core::tls::TlsFiles;
use serde::Deserialize;

use crate::inventory::{Host, HostSource};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-controller";

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub state_dir: PathBuf,
    pub hosts: Vec<Host>,
    pub audit_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long an agent may stay unreachable mid-step before the step
    /// counts as failed (the step is reconciled when it returns).
    pub agent_deadline: Duration,
    /// How long a run that could not put a container back waits for its
    /// agent before it ends; it keeps reconciling in the background after.
    pub reconcile_grace: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    pub listen: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub audit_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub agent_deadline_secs: Option<u64>,
    pub reconcile_grace_secs: Option<u64>,
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct ControllerFlags {
    /// TOML configuration file.
    #[arg(long, env = "FLEET_CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve the operator API on [default: 0.0.0.0:7400].
    #[arg(long, env = "FLEET_CONTROLLER_LISTEN")]
    pub listen: Option<String>,
    /// The fleet CA certificate (PEM).
    #[arg(long, env = "FLEET_CONTROLLER_CA")]
    pub ca: Option<PathBuf>,
    /// The controller's certificate (PEM, role controller).
    #[arg(long, env = "FLEET_CONTROLLER_CERT")]
    pub cert: Option<PathBuf>,
    /// The controller's private key (PEM).
    #[arg(long, env = "FLEET_CONTROLLER_KEY")]
    pub key: Option<PathBuf>,
    /// Where the controller keeps its store [default: /var/lib/fleet-controller].
    #[arg(long, env = "FLEET_CONTROLLER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl ControllerFlags {
    pub fn resolve(&self) -> Result<ControllerConfig, ConfigError> {
        let file: ControllerFile = match &self.config {
            Some(path) => load_toml(path)?,
            None => ControllerFile::default(),
        };
        let listen = listen_address(self.listen.clone(), file.listen, DEFAULT_LISTEN)?;
        let tls = tls_files(
            (self.ca.clone(), self.cert.clone(), self.key.clone()),
            (file.ca, file.cert, file.key),
            "FLEET_CONTROLLER",
        )?;
        let mut hosts = Vec::new();
        for entry in file.hosts {
            let host = Host {
                name: entry.name,
                address: entry.address,
                labels: entry.labels,
                source: HostSource::Config,
            };
            host.validate()
                .map_err(|e| ConfigError::Invalid(format!("[[hosts]] in the config file: {e}")))?;
            if hosts.iter().any(|h: &Host| h.name == host.name) {
                return Err(ConfigError::Invalid(format!(
                    "[[hosts]] in the config file: '{}' is listed twice",
                    host.name
                )));
            }
            hosts.push(host);
        }
        Ok(ControllerConfig {
            listen,
            tls,
            state_dir: self
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            hosts,
            audit_timeout: Duration::from_millis(file.audit_timeout_ms.unwrap_or(15_000)),
            connect_timeout: Duration::from_millis(file.connect_timeout_ms.unwrap_or(3_000)),
            agent_deadline: Duration::from_secs(file.agent_deadline_secs.unwrap_or(120)),
            reconcile_grace: Duration::from_secs(file.reconcile_grace_secs.unwrap_or(60)),
        })
    }
}
