//! The agent's configuration: defaults < TOML file < environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet_core::config::{ConfigError, listen_address, load_toml, tls_files};
use fleet_core::tls::TlsFiles;
use serde::Deserialize;

use crate::engine::EngineChoice;
use crate::ownership::WalkBounds;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";

/// The validated configuration `run` takes.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub engine: EngineChoice,
    pub engine_socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The name this host reports (defaults to the kernel hostname).
    pub hostname: String,
    pub walk: WalkBounds,
    /// Keep inspect documents warm from the engine's event stream.
    pub inspect_cache: bool,
    pub ownership_cache_ttl: Duration,
    /// Where dedicated users' ids and homes come from.
    pub users: crate::users::UserSettings,
    /// Only containers with this `key=value` label are this agent's (for
    /// several agents sharing one engine); all containers when unset.
    pub scope: Option<(String, String)>,
    /// The OCI runtime rootless accounts' Podman runs with (`--runtime`);
    /// Podman's own default when unset.
    pub rootless_runtime: Option<String>,
}

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub listen: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub engine: Option<String>,
    pub engine_socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub hostname: Option<String>,
    pub ownership_max_entries: Option<u64>,
    pub ownership_max_time_ms: Option<u64>,
    pub ownership_cache_ttl_secs: Option<u64>,
    pub inspect_cache: Option<bool>,
    pub user_uid_min: Option<u32>,
    pub user_uid_max: Option<u32>,
    pub user_home_root: Option<PathBuf>,
    pub user_id_record: Option<PathBuf>,
    pub scope_label: Option<String>,
    pub rootless_runtime: Option<String>,
}

/// Settings from flags and environment (clap fills these).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AgentFlags {
    /// TOML configuration file.
    #[arg(long, env = "FLEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 0.0.0.0:7443].
    #[arg(long, env = "FLEET_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// The fleet CA certificate (PEM).
    #[arg(long, env = "FLEET_AGENT_CA")]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM, role agent).
    #[arg(long, env = "FLEET_AGENT_CERT")]
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, env = "FLEET_AGENT_KEY")]
    pub key: Option<PathBuf>,
    /// auto, docker, podman or podman-rootless [default: auto].
    #[arg(long, env = "FLEET_AGENT_ENGINE")]
    pub engine: Option<String>,
    /// The engine's API socket (overrides auto-detection).
    #[arg(long, env = "FLEET_AGENT_ENGINE_SOCKET")]
    pub engine_socket: Option<PathBuf>,
    /// Where the agent keeps its state [default: /var/lib/fleet-agent].
    #[arg(long, env = "FLEET_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The host name to report [default: the kernel's].
    #[arg(long, env = "FLEET_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
    /// Disable the event-driven inspection cache.
    #[arg(long, env = "FLEET_AGENT_NO_INSPECT_CACHE")]
    pub no_inspect_cache: bool,
    /// The OCI runtime for rootless accounts' Podman (e.g. runc).
    #[arg(long, env = "FLEET_AGENT_ROOTLESS_RUNTIME")]
    pub rootless_runtime: Option<String>,
}

impl AgentFlags {
    /// Merges flags (and env) over the file over the defaults, and validates.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file: AgentFile = match &self.config {
            Some(path) => load_toml(path)?,
            None => AgentFile::default(),
        };
        let listen = listen_address(self.listen.clone(), file.listen, DEFAULT_LISTEN)?;
        let tls = tls_files(
            (self.ca.clone(), self.cert.clone(), self.key.clone()),
            (file.ca, file.cert, file.key),
            "FLEET_AGENT",
        )?;
        let engine = self
            .engine
            .clone()
            .or(file.engine)
            .map(|e| e.parse::<EngineChoice>().map_err(ConfigError::Invalid))
            .transpose()?
            .unwrap_or_default();
        let defaults = WalkBounds::default();
        Ok(AgentConfig {
            listen,
            tls,
            engine,
            engine_socket: self.engine_socket.clone().or(file.engine_socket),
            state_dir: self
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            hostname: self
                .hostname
                .clone()
                .or(file.hostname)
                .unwrap_or_else(kernel_hostname),
            walk: WalkBounds {
                max_entries: file.ownership_max_entries.unwrap_or(defaults.max_entries),
                max_time: file
                    .ownership_max_time_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.max_time),
            },
            inspect_cache: !self.no_inspect_cache && file.inspect_cache.unwrap_or(true),
            ownership_cache_ttl: Duration::from_secs(file.ownership_cache_ttl_secs.unwrap_or(30)),
            scope: file
                .scope_label
                .map(|label| {
                    label
                        .split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            ConfigError::Invalid(format!("scope_label '{label}' is not key=value"))
                        })
                })
                .transpose()?,
            rootless_runtime: self.rootless_runtime.clone().or(file.rootless_runtime),
            users: {
                let defaults = crate::users::UserSettings::default();
                crate::users::UserSettings {
                    uid_range: match (file.user_uid_min, file.user_uid_max) {
                        (Some(min), Some(max)) if min <= max && min > 0 => (min, max),
                        (None, None) => defaults.uid_range,
                        _ => {
                            return Err(ConfigError::Invalid(
                                "user_uid_min and user_uid_max must both be set, above 0, min <= max".into(),
                            ));
                        }
                    },
                    home_root: file.user_home_root.unwrap_or(defaults.home_root.clone()),
                    id_record: file.user_id_record,
                    ..defaults
                }
            },
        })
    }
}

pub fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
