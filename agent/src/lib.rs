//! fleet-agent: one per host, the only component that touches containers.
//!
//! `run` serves the `fleet.agent.v1.Agent` gRPC service over mTLS to the
//! controller (and nobody else), talking to the local engine through bollard.

pub mod atomic_file;
pub mod backup;
pub mod cache;
pub mod capabilities;
pub mod config;
pub mod container;
pub mod engine;
pub mod error;
pub mod findings;
pub mod flavour;
pub mod host_accounts;
pub mod id_record;
pub mod identity;
pub mod inspect;
pub mod journal;
pub mod mount_roots;
pub mod ownership;
pub mod procfs;
pub mod rawhttp;
pub mod recreate;
pub mod remap;
pub mod rootless;
pub mod runtime_dirs;
pub mod service;
pub mod steps;
pub mod user_files;
pub mod users;
pub mod verify;
pub mod wire;

use std::sync::Arc;

use fleet_core::CancellationToken;
use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;

pub use crate::config::{AgentConfig, AgentFlags};
use crate::engine::Engine;
pub use crate::error::AgentError;
use crate::inspect::Inspector;

/// Builds the inspector (engine, event-driven cache) for `config`, and starts
/// keeping its cache warm until `shutdown`.
pub fn start_inspector(config: &AgentConfig, shutdown: &CancellationToken) -> Arc<Inspector> {
    let engine = Arc::new(Engine::new(config.engine, config.engine_socket.clone()));
    let cache = Arc::new(cache::Cache::new(
        config.inspect_cache,
        config.ownership_cache_ttl,
    ));
    tokio::spawn(cache::keep_warm(
        engine.clone(),
        cache.clone(),
        shutdown.clone(),
    ));
    Arc::new(Inspector::new(
        engine,
        cache,
        config.walk,
        config.hostname.clone(),
        config.scope.clone(),
    ))
}

/// Loads the agent's certificates and checks they carry the agent role.
pub fn server_tls(files: &tls::TlsFiles) -> Result<Arc<ServerConfig>, AgentError> {
    let material = TlsMaterial::load(files)?;
    material.check_own_certificate(files)?;
    match material.own_identity() {
        Some(identity) if identity.role == Role::Agent => {}
        Some(identity) => {
            return Err(AgentError::WrongOwnRole(format!(
                "{} carries role {}",
                files.cert.display(),
                identity.role
            )));
        }
        None => {
            return Err(AgentError::WrongOwnRole(format!(
                "{} carries no fleet role",
                files.cert.display()
            )));
        }
    }
    Ok(material.server_config()?)
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let tls = server_tls(&config.tls)?;
    let inspector = start_inspector(&config, &shutdown);
    let steps = Arc::new(steps_for(&config, inspector.clone()));
    serve(inspector, steps, tls, listener, shutdown).await
}

/// The step runner of `config`: its state, engine, users and the
/// rootless accounts' engines.
pub fn steps_for(config: &AgentConfig, inspector: Arc<Inspector>) -> steps::StepRunner {
    let accounts = rootless::AccountEngines::new(
        rootless::PodmanCommand::detect(config.rootless_runtime.clone()),
        rootless::UserManager::detect(),
        &config.state_dir,
    );
    steps::StepRunner::new(
        &config.state_dir,
        inspector.engine(),
        inspector,
        config.users.clone(),
    )
    .with_accounts(Arc::new(accounts))
}

/// Serves one inspector on one listener (several servers may share one
/// inspector, as the fan-out benchmark does).
pub async fn serve(
    inspector: Arc<Inspector>,
    steps: Arc<steps::StepRunner>,
    tls: Arc<ServerConfig>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "agent listening (mTLS)");
    }
    service::serve(inspector, steps, tls, listener, shutdown).await
}
