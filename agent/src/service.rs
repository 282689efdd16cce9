//! The gRPC server of the agent: the server itself, its authorization rule,
//! and each RPC handed to the domain (the inspector, the step runner);
//! `wire.rs` converts what comes in and goes out. Each mutating RPC runs
//! its step in a task of its own and streams progress.

use std::pin::Pin;
use std::sync::Arc;

use fleet_core::CancellationToken;
use fleet_core::auth::{AuthLayer, caller};
use fleet_core::role::Role;
use fleet_core::tls;
use fleet_proto::agent::v1 as pb;
use fleet_proto::agent::v1::agent_server::AgentServer;
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::AgentError;
use crate::inspect::Inspector;
use crate::steps::{StepError, StepProgress, StepResult, StepRunner, StepSpec};
use crate::wire::{self, Keyed, StepRequest};

/// Every RPC of the agent; a method absent from this list is refused to
/// everyone (authorization fails closed).
pub const METHODS: &[&str] = &[
    "Inspect",
    "Backup",
    "EnsureUser",
    "Stop",
    "ChangeOwnership",
    "Recreate",
    "Verify",
    "Restore",
    "LoadImage",
    "MoveVolumes",
    "Place",
    "Undo",
    "Rollback",
    "Prune",
    "VerifyBackup",
    "ListBackups",
    "Journal",
];

/// Who may call what on the agent: the controller, and nobody else.
pub fn decide(method: &str, role: Role) -> Result<(), String> {
    if role != Role::Controller {
        Err("the agent accepts only the fleet controller".into())
    } else if METHODS.contains(&method) {
        Ok(())
    } else {
        Err("no authorization rule names this RPC, so it is refused".into())
    }
}

/// Serves the agent's gRPC service on `listener` over mTLS, behind its
/// authorization rule, until `shutdown` is cancelled.
pub async fn serve(
    inspector: Arc<Inspector>,
    steps: Arc<StepRunner>,
    tls: Arc<ServerConfig>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let incoming = tls::incoming(listener, tls, shutdown.clone());
    tonic::transport::Server::builder()
        .layer(AuthLayer::new(fleet_proto::AGENT_SERVICE, decide))
        .add_service(
            AgentServer::new(AgentService::new(inspector, steps))
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct AgentService {
    inspector: Arc<Inspector>,
    steps: Arc<StepRunner>,
}

impl AgentService {
    pub fn new(inspector: Arc<Inspector>, steps: Arc<StepRunner>) -> Self {
        AgentService { inspector, steps }
    }

    /// Starts the step a step RPC asks for, streaming its events.
    fn start<R: StepRequest>(&self, request: Request<R>) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let Keyed { run, step, spec } = request.into_inner().into_step()?;
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StepEvent, Status>> + Send>>;

/// Runs a step in a task of its own (a client that goes away does not
/// abandon it half done) and streams its progress, then its result.
fn stream_step(
    steps: Arc<StepRunner>,
    run: String,
    step: String,
    spec: StepSpec,
    who: String,
) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    let span = tracing::info_span!("step", caller = %who, run = %run, step = %step, kind = spec.kind().as_str());
    tokio::spawn(
        async move {
            let (progress_tx, mut progress_rx) = mpsc::channel::<StepProgress>(64);
            let forward = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(p) = progress_rx.recv().await {
                        let _ = tx.send(Ok(wire::progress_event(p))).await;
                    }
                })
            };
            let result = steps.run(&run, &step, spec, Some(progress_tx)).await;
            let _ = forward.await;
            match &result {
                Ok(r) => tracing::info!(replayed = r.replayed, "step done"),
                Err(e) => tracing::warn!(error = %e, "step failed"),
            }
            let _ = tx
                .send(result.map(wire::result_event).map_err(Status::from))
                .await;
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::HostReport>, Status> {
        let caller = caller(&request)?;
        let options = wire::inspect_options(request.into_inner());
        let span = tracing::info_span!("inspect", caller = %caller.name, containers = options.containers.len());
        let mut report = self.inspector.inspect(&options).instrument(span).await?;
        crate::rootless::audit::add_account_engines(
            &mut report,
            &self.inspector,
            self.steps.accounts(),
            &self.steps.users().passwd,
            &options,
        )
        .await;
        Ok(Response::new(wire::host_report(report)))
    }

    type BackupStream = EventStream;
    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type EnsureUserStream = EventStream;
    async fn ensure_user(
        &self,
        request: Request<pb::EnsureUserRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type StopStream = EventStream;
    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type ChangeOwnershipStream = EventStream;
    async fn change_ownership(
        &self,
        request: Request<pb::ChangeOwnershipRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type RecreateStream = EventStream;
    async fn recreate(
        &self,
        request: Request<pb::RecreateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type VerifyStream = EventStream;
    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type RestoreStream = EventStream;
    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type LoadImageStream = EventStream;
    async fn load_image(
        &self,
        request: Request<pb::LoadImageRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type MoveVolumesStream = EventStream;
    async fn move_volumes(
        &self,
        request: Request<pb::MoveVolumesRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type PlaceStream = EventStream;
    async fn place(
        &self,
        request: Request<pb::PlaceRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.start(request)
    }

    type UndoStream = EventStream;
    async fn undo(
        &self,
        request: Request<pb::UndoRequest>,
    ) -> Result<Response<EventStream>, Status> {
        caller(&request)?;
        let (run, step) = wire::key(request.into_inner().key)?;
        let result = self.steps.undo(&run, &step).await?;
        let stream = futures::stream::iter(vec![Ok(wire::result_event(result))]);
        Ok(Response::new(Box::pin(stream)))
    }

    type RollbackStream = EventStream;
    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let run = request.into_inner().run_id;
        let steps = self.steps.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(
            async move {
                let (results_tx, mut results_rx) = mpsc::channel::<StepResult>(64);
                let forward = {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Some(r) = results_rx.recv().await {
                            let _ = tx.send(Ok(wire::result_event(r))).await;
                        }
                    })
                };
                let result = steps.rollback(&run, Some(results_tx)).await;
                let _ = forward.await;
                if let Err(e) = result {
                    let _ = tx.send(Err(Status::from(e))).await;
                }
            }
            .instrument(tracing::info_span!("rollback", caller = %who)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let who = caller(&request)?.name;
        let run = request.into_inner().run_id;
        let steps = self.steps.clone();
        let span = tracing::info_span!("prune", caller = %who, run = %run);
        // In a task of its own: a client that goes away does not leave the
        // prune half done.
        let outcome = tokio::spawn(async move { steps.prune(&run).await }.instrument(span))
            .await
            .map_err(|e| StepError::Internal(format!("the prune task failed: {e}")))??;
        Ok(Response::new(wire::prune_response(&outcome)))
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        caller(&request)?;
        let id = request.into_inner().backup_id;
        let outcome = self.steps.verify_backup(&id).await?;
        Ok(Response::new(wire::verify_backup_response(&outcome)))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(wire::list_backups_response(
            &self.steps.backups().list(),
        )))
    }

    async fn journal(
        &self,
        request: Request<pb::JournalRequest>,
    ) -> Result<Response<pb::JournalResponse>, Status> {
        caller(&request)?;
        let records = self.steps.journal(&request.into_inner().run_id).await?;
        Ok(Response::new(wire::journal_response(&records)))
    }
}

#[cfg(test)]
mod tests {
    use super::{METHODS, decide};
    use fleet_core::role::Role;

    #[test]
    fn every_agent_rpc_has_a_rule_and_only_the_controller_may_call() {
        let methods = fleet_proto::service_methods(fleet_proto::AGENT_SERVICE);
        assert!(methods.iter().any(|m| m == "Prune"), "{methods:?}");
        let mut listed: Vec<&str> = METHODS.to_vec();
        let mut described: Vec<&str> = methods.iter().map(String::as_str).collect();
        listed.sort_unstable();
        described.sort_unstable();
        assert_eq!(listed, described, "the rule names exactly the agent's RPCs");
        for method in &methods {
            for role in Role::ALL {
                assert_eq!(
                    decide(method, role).is_ok(),
                    role == Role::Controller,
                    "{method} for {role}"
                );
            }
        }
        assert!(decide("NoSuchMethod", Role::Controller).is_err());
    }
}
