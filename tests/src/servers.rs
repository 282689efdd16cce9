//! Real agents and controllers, in-process, on 127.0.0.1:0, with real
//! certificates. Dropping one shuts it down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet_agent::AgentConfig;
use fleet_agent::engine::EngineChoice;
use fleet_agent::ownership::WalkBounds;
use fleet_controller::ControllerConfig;
use fleet_controller::inventory::{Host, HostSource};
use fleet_core::CancellationToken;
use fleet_core::tls::TlsFiles;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::engine::engine_socket;

pub struct RunningAgent {
    pub address: String,
    pub shutdown: CancellationToken,
    /// The agent's state directory (its run journals and backups).
    pub state: TempDir,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub engine_socket: PathBuf,
    pub inspect_cache: bool,
    pub hostname: String,
    /// Only containers with this label are the agent's.
    pub scope: Option<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            engine_socket: engine_socket(),
            inspect_cache: true,
            hostname: "test-host".into(),
            scope: None,
        }
    }
}

pub fn agent_config(tls: TlsFiles, options: &AgentOptions, state_dir: PathBuf) -> AgentConfig {
    AgentConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        engine: EngineChoice::Auto,
        engine_socket: Some(options.engine_socket.clone()),
        state_dir,
        hostname: options.hostname.clone(),
        walk: WalkBounds::default(),
        inspect_cache: options.inspect_cache,
        // Tests change files between audits: never serve an old summary.
        ownership_cache_ttl: Duration::ZERO,
        users: fleet_agent::users::UserSettings {
            id_record: Some(test_id_record()),
            ..Default::default()
        },
        scope: options.scope.clone(),
        // crun fails a resource-limit call on these machines (ROOTLESS.md §7).
        rootless_runtime: Some("runc".into()),
    }
}

/// The record of allocated ids every in-process agent of this test process
/// shares (as the agents of one host share theirs), kept out of
/// `/etc/.fleet-allocated-ids` so test runs never use up the id range.
pub fn test_id_record() -> PathBuf {
    std::env::temp_dir().join(format!("fleet-test-ids-{}", std::process::id()))
}

pub async fn start_agent(tls: TlsFiles, options: AgentOptions) -> RunningAgent {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
    let address = listener.local_addr().expect("addr").to_string();
    let state = tempfile::tempdir().expect("state dir");
    let config = agent_config(tls, &options, state.path().to_path_buf());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = fleet_agent::run(config, listener, token).await {
            eprintln!("test agent stopped: {e}");
        }
    });
    RunningAgent {
        address,
        shutdown,
        state,
    }
}

pub struct RunningController {
    pub address: String,
    pub shutdown: CancellationToken,
    pub state: TempDir,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A controller whose config lists `hosts` (name, agent address).
pub async fn start_controller(tls: TlsFiles, hosts: &[(&str, &str)]) -> RunningController {
    let hosts = hosts
        .iter()
        .map(|(name, address)| Host {
            name: name.to_string(),
            address: address.to_string(),
            labels: Default::default(),
            source: HostSource::Config,
        })
        .collect();
    start_controller_with(tls, hosts).await
}

/// A controller whose config lists `hosts`, labels and all.
pub async fn start_controller_with(tls: TlsFiles, hosts: Vec<Host>) -> RunningController {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind controller");
    let address = listener.local_addr().expect("addr").to_string();
    let state = tempfile::tempdir().expect("state dir");
    let config = ControllerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        state_dir: state.path().to_path_buf(),
        hosts,
        audit_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(3),
        agent_deadline: Duration::from_secs(30),
        reconcile_grace: Duration::from_secs(60),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = fleet_controller::run(config, listener, token).await {
            eprintln!("test controller stopped: {e}");
        }
    });
    RunningController {
        address,
        shutdown,
        state,
    }
}
