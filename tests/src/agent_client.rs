//! Driving an agent's migration steps over gRPC, as the controller does.

use std::time::Duration;

use fleet_core::role::Role;
use fleet_core::tls::TlsFiles;
use fleet_core::tls::{self, TlsMaterial};
use fleet_proto::agent::v1 as pb;
use fleet_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::Channel;

pub type Client = AgentClient<Channel>;

pub fn connect(address: &str, controller: &TlsFiles) -> Client {
    let material = TlsMaterial::load(controller).expect("controller certificate");
    let channel = tls::channel(
        address,
        material.client_config(Role::Agent).expect("tls"),
        Duration::from_secs(5),
    )
    .expect("channel");
    AgentClient::new(channel)
}

pub fn key(run: &str, step: &str) -> Option<pb::StepKey> {
    Some(pb::StepKey {
        run_id: run.to_string(),
        step_id: step.to_string(),
    })
}

/// The result of a step stream, and the progress seen on the way.
#[derive(Debug)]
pub struct Outcome {
    pub result: pb::StepResult,
    pub progress: Vec<pb::StepProgress>,
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.result.outcome_json).expect("outcome JSON")
    }
}

pub async fn collect(
    response: Result<tonic::Response<tonic::Streaming<pb::StepEvent>>, tonic::Status>,
) -> Result<Outcome, tonic::Status> {
    let mut stream = response?.into_inner();
    let mut progress = Vec::new();
    let mut result = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(pb::step_event::Event::Progress(p)) => progress.push(p),
            Some(pb::step_event::Event::Result(r)) => result = Some(r),
            None => {}
        }
    }
    Ok(Outcome {
        result: result
            .ok_or_else(|| tonic::Status::internal("the stream ended without a result"))?,
        progress,
    })
}

/// Every result of a rollback stream.
pub async fn collect_all(
    response: Result<tonic::Response<tonic::Streaming<pb::StepEvent>>, tonic::Status>,
) -> Result<Vec<pb::StepResult>, tonic::Status> {
    let mut stream = response?.into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await? {
        if let Some(pb::step_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    Ok(results)
}
