//! The gRPC edge of the agent: wire types in, domain calls, wire types out.

use std::sync::Arc;

use fleet_core::auth::caller;
use fleet_core::role::Role;
use fleet_proto::agent::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::inspect::{InspectOptions, Inspector};

/// Who may call what on the agent: the controller, and nobody else.
pub fn decide(_method: &str, role: Role) -> Result<(), String> {
    if role == Role::Controller {
        Ok(())
    } else {
        Err("the agent accepts only the fleet controller".into())
    }
}

#[derive(Debug, Clone)]
pub struct AgentService {
    inspector: Arc<Inspector>,
}

impl AgentService {
    pub fn new(inspector: Arc<Inspector>) -> Self {
        AgentService { inspector }
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::HostReport>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("inspect", caller = %caller.name, containers = request.containers.len());
        let options = InspectOptions {
            containers: request.containers,
            skip_ownership: request.skip_ownership,
        };
        let report = self.inspector.inspect(&options).instrument(span).await?;
        Ok(Response::new(report.into()))
    }
}
