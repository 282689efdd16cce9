//! The gRPC edge of the agent: wire types in, domain calls, wire types out.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use fleet_core::auth::caller;
use fleet_core::role::Role;
use fleet_core::step::Probe;
use fleet_proto::agent::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::inspect::{InspectOptions, Inspector};
use crate::remap::IdMapping;
use crate::steps::{
    BackupSpec, OwnershipSpec, RestoreSpec, StepProgress, StepResult, StepRunner, StepSpec,
    StopSpec, VerifySpec,
};
use crate::users::UserRequest;

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

#[derive(Debug, Clone)]
pub struct AgentService {
    inspector: Arc<Inspector>,
    steps: Arc<StepRunner>,
}

impl AgentService {
    pub fn new(inspector: Arc<Inspector>, steps: Arc<StepRunner>) -> Self {
        AgentService { inspector, steps }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StepEvent, Status>> + Send>>;

fn progress_event(p: StepProgress) -> pb::StepEvent {
    pb::StepEvent {
        event: Some(pb::step_event::Event::Progress(pb::StepProgress {
            step_id: p.step,
            phase: p.phase,
            entries: p.progress.entries,
            changed: p.progress.changed,
            bytes: p.progress.bytes,
        })),
    }
}

fn result_event(r: StepResult) -> pb::StepEvent {
    pb::StepEvent {
        event: Some(pb::step_event::Event::Result(pb::StepResult {
            step_id: r.step,
            kind: r.kind.as_str().to_string(),
            replayed: r.replayed,
            outcome_json: r.outcome.to_string(),
            undone: r.undone,
        })),
    }
}

fn key(key: Option<pb::StepKey>) -> Result<(String, String), Status> {
    let key =
        key.ok_or_else(|| Status::invalid_argument("the request names no run id and step id"))?;
    Ok((key.run_id, key.step_id))
}

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
                        let _ = tx.send(Ok(progress_event(p))).await;
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
                .send(result.map(result_event).map_err(Status::from))
                .await;
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

fn mapping(
    uids: std::collections::HashMap<u32, u32>,
    gids: std::collections::HashMap<u32, u32>,
    everything: (Option<u32>, Option<u32>),
) -> IdMapping {
    IdMapping {
        uids: uids.into_iter().collect::<BTreeMap<_, _>>(),
        gids: gids.into_iter().collect::<BTreeMap<_, _>>(),
        everything: match everything {
            (Some(u), Some(g)) => Some((u, g)),
            (Some(u), None) => Some((u, u)),
            _ => None,
        },
    }
}

fn probe(probe: Option<pb::Probe>) -> Option<Probe> {
    match probe?.kind? {
        pb::probe::Kind::TcpAddress(address) => Some(Probe::Tcp { address }),
        pb::probe::Kind::HttpUrl(url) => Some(Probe::Http { url }),
        pb::probe::Kind::Exec(exec) => Some(Probe::Exec { argv: exec.argv }),
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
            with_users: request.with_users,
        };
        let report = self.inspector.inspect(&options).instrument(span).await?;
        Ok(Response::new(report.into()))
    }

    type BackupStream = EventStream;
    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        let spec = StepSpec::Backup(BackupSpec {
            container: r.container,
            hooks: r
                .hooks
                .into_iter()
                .map(|h| (h.argv, u64::from(h.timeout_secs.max(1))))
                .collect(),
            retention_days: u64::from(if r.retention_days == 0 {
                14
            } else {
                r.retention_days
            }),
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type EnsureUserStream = EventStream;
    async fn ensure_user(
        &self,
        request: Request<pb::EnsureUserRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        let spec = StepSpec::User(UserRequest {
            name: r.name,
            uid: r.uid,
            gid: r.gid,
            rootless: r.rootless,
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type StopStream = EventStream;
    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            StepSpec::Stop(StopSpec {
                container: r.container,
            }),
            who,
        )))
    }

    type ChangeOwnershipStream = EventStream;
    async fn change_ownership(
        &self,
        request: Request<pb::ChangeOwnershipRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        let spec = StepSpec::Ownership(OwnershipSpec {
            container: r.container,
            mapping: mapping(r.uids, r.gids, (r.everything_uid, r.everything_gid)),
            skip_if_root_matches: r.skip_if_root_matches,
            allow_protected_hardlinks: r.allow_protected_hardlinks,
            mounts: r.mounts,
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type RecreateStream = EventStream;
    async fn recreate(
        &self,
        request: Request<pb::RecreateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        // The controller checks this too; the host is guarded here as well
        // because gid 0 hands the container root's group (its files,
        // devices and sockets), whoever asks.
        if r.uid == 0 || r.gid == 0 {
            return Err(Status::invalid_argument(format!(
                "a recreate never sets uid 0 or gid 0 (asked for {}:{}): the point is to leave root; give the container a non-root uid and gid",
                r.uid, r.gid
            )));
        }
        let spec = StepSpec::Recreate(crate::recreate::RecreateRequest {
            container: r.container,
            uid: r.uid,
            gid: r.gid,
            run: run.clone(),
            allow_layer_loss: r.allow_layer_loss,
            together: r.together,
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type VerifyStream = EventStream;
    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        let spec = StepSpec::Verify(VerifySpec {
            container: r.container,
            deadline_secs: u64::from(if r.deadline_secs == 0 {
                60
            } else {
                r.deadline_secs
            }),
            min_running_secs: u64::from(if r.min_running_secs == 0 {
                5
            } else {
                r.min_running_secs
            }),
            probe: probe(r.probe),
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type RestoreStream = EventStream;
    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = caller(&request)?.name;
        let r = request.into_inner();
        let (run, step) = key(r.key)?;
        let spec = StepSpec::Restore(RestoreSpec {
            backup_id: r.backup_id,
            mounts: r.mounts,
        });
        Ok(Response::new(stream_step(
            self.steps.clone(),
            run,
            step,
            spec,
            who,
        )))
    }

    type UndoStream = EventStream;
    async fn undo(
        &self,
        request: Request<pb::UndoRequest>,
    ) -> Result<Response<EventStream>, Status> {
        caller(&request)?;
        let (run, step) = key(request.into_inner().key)?;
        let result = self.steps.undo(&run, &step).await?;
        let stream = futures::stream::iter(vec![Ok(result_event(result))]);
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
                            let _ = tx.send(Ok(result_event(r))).await;
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
            .map_err(|e| Status::internal(format!("the prune task failed: {e}")))??;
        Ok(Response::new(pb::PruneResponse {
            outcome_json: outcome.to_string(),
        }))
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        caller(&request)?;
        let id = request.into_inner().backup_id;
        let backups = self.steps.backups().clone();
        let outcome = tokio::task::spawn_blocking(move || backups.verify(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::from(crate::steps::StepError::from(e)))?;
        let ok = outcome.iter().all(|(_, v)| v.problems.is_empty());
        Ok(Response::new(pb::VerifyBackupResponse {
            ok,
            outcome_json: serde_json::to_string(&outcome).unwrap_or_default(),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups_json: serde_json::to_string(&self.steps.backups().list()).unwrap_or_default(),
        }))
    }

    async fn journal(
        &self,
        request: Request<pb::JournalRequest>,
    ) -> Result<Response<pb::JournalResponse>, Status> {
        caller(&request)?;
        let records = self.steps.journal(&request.into_inner().run_id).await?;
        Ok(Response::new(pb::JournalResponse {
            records_json: serde_json::to_string(&records).unwrap_or_default(),
        }))
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
