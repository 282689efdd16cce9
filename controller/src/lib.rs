//! fleet-controller: one per fleet, the only component that decides.
//!
//! `run` serves the `fleet.controller.v1.Controller` gRPC service to
//! operators and viewers over mTLS, keeps the inventory and audit log in its
//! sled store, and talks to agents with its own controller certificate.

pub mod agents;
pub mod audit;
pub mod config;
pub mod error;
pub mod inventory;
pub mod plan;
pub mod policy;
pub mod run;
pub mod service;
pub mod store;
pub mod wire;

use std::sync::Arc;

use fleet_core::CancellationToken;
use fleet_core::auth::AuthLayer;
use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::controller::v1::controller_server::ControllerServer;
use tokio::net::TcpListener;

pub use crate::config::{ControllerConfig, ControllerFlags};
pub use crate::error::ControllerError;
use crate::service::{ControllerService, ControllerState};

/// Largest audit response the controller sends (a thousand hosts).
const MAX_RESPONSE: usize = 1024 * 1024 * 1024;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    let material = TlsMaterial::load(&config.tls)?;
    material.check_own_certificate(&config.tls)?;
    match material.own_identity() {
        Some(identity) if identity.role == Role::Controller => {}
        other => {
            return Err(ControllerError::WrongOwnRole(format!(
                "{} carries {}",
                config.tls.cert.display(),
                other.map_or("no fleet role".to_string(), |i| format!("role {}", i.role))
            )));
        }
    }
    let store = store::Store::open(&config.state_dir)?;
    store.sync_config_hosts(&config.hosts)?;
    let pool = Arc::new(agents::AgentPool::new(
        material.client_config(Role::Agent)?,
        config.connect_timeout,
    ));
    let runs = run::Runs::new(
        store.clone(),
        pool.clone(),
        config.audit_timeout,
        config.agent_deadline,
        config.reconcile_grace,
        shutdown.clone(),
    );
    let resumed = runs.resume_all()?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished runs from the journal");
    }
    let state = Arc::new(ControllerState {
        store,
        pool,
        audit_timeout: config.audit_timeout,
        runs,
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, state_dir = %config.state_dir.display(), "controller listening (mTLS)");
    }
    let incoming = tls::incoming(listener, material.server_config()?, shutdown.clone());
    let service = ControllerServer::new(ControllerService::new(state))
        .max_encoding_message_size(MAX_RESPONSE);
    tonic::transport::Server::builder()
        .layer(AuthLayer::new(
            fleet_proto::CONTROLLER_SERVICE,
            service::decide,
        ))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
