//! The gRPC service of the controller: its authorization policy, each RPC
//! handed to the domain (the conversions are `wire`'s), and the audit log
//! of every change.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::auth::caller;
use fleet_core::role::Role;
use fleet_proto::controller::v1 as pb;
use futures::StreamExt;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::agents::AgentPool;
use crate::agents::inspect::InspectAsk;
use crate::audit::audit_hosts;
use crate::error::ControllerError;
use crate::inventory::{self, HostSource};
use crate::run::Runs;
use crate::run::model::Control;
use crate::run::start::{self, StartRequest};
use crate::store::Store;
use crate::wire::{self, to_json};

/// RPCs that only read.
const READ_METHODS: &[&str] = &[
    "WhoAmI",
    "ListHosts",
    "Audit",
    "Plan",
    "ListRuns",
    "GetRun",
    "WatchRun",
    "AuditLog",
];
/// RPCs that change the fleet: operators only.
const WRITE_METHODS: &[&str] = &[
    "AddHost",
    "RemoveHost",
    "StartRun",
    "PauseRun",
    "ResumeRun",
    "AbortRun",
    "RollbackRun",
    "PruneRun",
];

/// Who may call what on the controller. Fails closed: an RPC in neither list
/// is refused to everyone.
pub fn decide(method: &str, role: Role) -> Result<(), String> {
    let read = READ_METHODS.contains(&method);
    let write = WRITE_METHODS.contains(&method);
    match role {
        Role::Operator if read || write => Ok(()),
        Role::Viewer if read => Ok(()),
        Role::Viewer if write => Err(
            "viewers may only read; this call changes the fleet and needs an operator certificate"
                .into(),
        ),
        Role::Operator | Role::Viewer => {
            Err("no authorization rule names this RPC, so it is refused".into())
        }
        Role::Agent | Role::Controller => Err(format!(
            "the controller API accepts operator and viewer certificates, not a certificate with role {role}"
        )),
    }
}

/// What the service needs at hand.
#[derive(Debug)]
pub struct ControllerState {
    pub store: Store,
    pub pool: Arc<AgentPool>,
    pub audit_timeout: Duration,
    pub runs: Arc<Runs>,
}

#[derive(Debug, Clone)]
pub struct ControllerService {
    state: Arc<ControllerState>,
}

impl ControllerService {
    pub fn new(state: Arc<ControllerState>) -> Self {
        ControllerService { state }
    }
}

impl ControllerService {
    /// Pause (`Some(Pause)`), abort (`Some(Abort)`) or resume (`None`).
    fn control(
        &self,
        request: Request<pb::RunRef>,
        control: Option<Control>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let caller = caller(&request)?;
        let run = self
            .state
            .runs
            .control(&caller, &request.into_inner().run_id, control)?;
        Ok(Response::new(wire::run_info(&run)?))
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    type WatchRunStream = EventStream;

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let caller = caller(&request)?;
        let scope = wire::scope(request.into_inner().selection)?;
        let span = tracing::info_span!("plan", caller = %caller.name);
        let plan = start::make_plan(&self.state.runs, &scope)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::PlanResponse {
            plan_json: to_json(&plan)?,
        }))
    }

    async fn start_run(
        &self,
        request: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let saved_plan = if request.plan_json.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&request.plan_json).map_err(|e| {
                ControllerError::InvalidArgument(format!(
                    "the saved plan is not a plan fleetctl wrote ({e}); nothing was changed: make one with `fleetctl plan --out plan.json`"
                ))
            })?)
        };
        let start = StartRequest {
            scope: wire::scope(request.selection)?,
            saved_plan,
            options: wire::options(request.options)?,
            dry_run: request.dry_run,
        };
        let span = tracing::info_span!("start_run", caller = %caller.name);
        let view = self
            .state
            .runs
            .start(&caller, start)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::RunInfo {
            run_json: to_json(&view)?,
        }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 50,
            n => n as usize,
        };
        let runs = self.state.runs.list(limit)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs_json: runs.iter().map(to_json).collect::<Result<_, _>>()?,
        }))
    }

    async fn get_run(&self, request: Request<pb::RunRef>) -> Result<Response<pb::RunInfo>, Status> {
        let view = self.state.runs.get(&request.into_inner().run_id)?;
        Ok(Response::new(pb::RunInfo {
            run_json: to_json(&view)?,
        }))
    }

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let request = request.into_inner();
        let events = self.state.runs.watch(&request.run_id, request.after_seq)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(|event| {
            Ok(pb::RunEvent {
                seq: event.seq,
                event_json: to_json(&event)?,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause_run(
        &self,
        request: Request<pb::RunRef>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        self.control(request, Some(Control::Pause))
    }

    async fn resume_run(
        &self,
        request: Request<pb::RunRef>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        self.control(request, None)
    }

    async fn abort_run(
        &self,
        request: Request<pb::RunRef>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        self.control(request, Some(Control::Abort))
    }

    async fn rollback_run(
        &self,
        request: Request<pb::RollbackRunRequest>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let view = self.state.runs.rollback(
            &caller,
            &r.run_id,
            &r.hosts,
            &r.containers,
            r.max_parallel,
        )?;
        Ok(Response::new(pb::RunInfo {
            run_json: to_json(&view)?,
        }))
    }

    async fn prune_run(
        &self,
        request: Request<pb::RunRef>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let caller = caller(&request)?;
        let run = self
            .state
            .runs
            .prune(&caller, &request.into_inner().run_id)
            .await?;
        Ok(Response::new(wire::run_info(&run)?))
    }

    async fn audit_log(
        &self,
        request: Request<pb::AuditLogRequest>,
    ) -> Result<Response<pb::AuditLogResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = self
            .state
            .store
            .log(limit)?
            .into_iter()
            .map(|e| pb::AuditLogEntry {
                unix_ms: e.unix_ms,
                who: e.who,
                role: e.role,
                action: e.action,
                target: e.target,
                result: e.result,
            })
            .collect();
        Ok(Response::new(pb::AuditLogResponse { entries }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::WhoAmIResponse {
            name: caller.name,
            role: caller.role.to_string(),
        }))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let selectors = request
            .into_inner()
            .selectors
            .iter()
            .map(|s| inventory::Selector::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = self
            .state
            .store
            .hosts()?
            .iter()
            .filter(|h| selectors.iter().all(|s| s.matches(h)))
            .map(wire::host)
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn add_host(
        &self,
        request: Request<pb::AddHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let host = wire::host_from(request.host.unwrap_or_default());
        let result = (|| {
            host.validate()?;
            if let Some(existing) = self.state.store.host(&host.name)? {
                if existing.source == HostSource::Config {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host '{}' is defined in the controller's config file; change it there",
                        host.name
                    )));
                }
                if !request.replace {
                    return Err(ControllerError::AlreadyExists(format!(
                        "host '{}' already exists (agent at {}); pass --replace to change it",
                        host.name, existing.address
                    )));
                }
            }
            self.state.store.put_host(&host)?;
            self.state.pool.forget(&host.name);
            Ok(())
        })();
        self.state.store.logged(
            &caller,
            "hosts.add",
            &format!("{} {}", host.name, host.address),
            result,
        )?;
        tracing::info!(caller = %caller.name, host = %host.name, address = %host.address, "host added");
        Ok(Response::new(wire::host(&host)))
    }

    async fn remove_host(
        &self,
        request: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let result = (|| {
            match self.state.store.host(&name)? {
                None => {
                    return Err(ControllerError::NotFound(format!(
                        "unknown host '{name}'; `fleetctl hosts list` shows the inventory"
                    )));
                }
                Some(h) if h.source == HostSource::Config => {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "host '{name}' is defined in the controller's config file; remove it there"
                    )));
                }
                Some(_) => {}
            }
            self.state.store.remove_host(&name)?;
            self.state.pool.forget(&name);
            Ok(())
        })();
        self.state
            .store
            .logged(&caller, "hosts.remove", &name, result)?;
        Ok(Response::new(pb::RemoveHostResponse {}))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::FleetAudit>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let hosts = inventory::select(
            self.state.store.hosts()?,
            &request.hosts,
            &request.selectors,
        )?;
        let timeout = if request.timeout_ms > 0 {
            Duration::from_millis(u64::from(request.timeout_ms))
        } else {
            self.state.audit_timeout
        };
        let span = tracing::info_span!("audit", caller = %caller.name, hosts = hosts.len());
        let ask = InspectAsk {
            skip_ownership: request.skip_ownership,
            with_users: false,
        };
        let hosts = audit_hosts(&self.state.pool, hosts, timeout, ask)
            .instrument(span)
            .await
            .into_iter()
            .map(wire::host_audit)
            .collect();
        Ok(Response::new(pb::FleetAudit { hosts }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_rpc_has_a_rule_and_viewers_only_read() {
        let methods = fleet_proto::service_methods(fleet_proto::CONTROLLER_SERVICE);
        assert!(methods.len() >= 5, "descriptor lists the RPCs: {methods:?}");
        for method in &methods {
            assert!(
                READ_METHODS.contains(&method.as_str()) || WRITE_METHODS.contains(&method.as_str()),
                "{method} has no authorization rule"
            );
            assert!(decide(method, Role::Operator).is_ok());
            assert!(decide(method, Role::Agent).is_err());
            assert!(decide(method, Role::Controller).is_err());
        }
        for method in WRITE_METHODS {
            assert!(decide(method, Role::Viewer).is_err());
        }
        assert!(decide("Unlisted", Role::Operator).is_err());
    }
}
