//! The controller's server edge, wire ⇄ domain: every conversion between
//! the Controller API's protobuf messages and the controller's own types.
//! Documents the API carries as JSON (plans, runs, events) are the shared
//! typed model of `fleet_core`, encoded here.

use std::collections::BTreeMap;

use fleet_core::run::{BatchSize, FailureBudget, OnFailure, OptionError, Run, RunOptions, RunView};
use fleet_proto::controller::v1 as pb;
use pb::host_error::Kind;
use tonic::Status;

use crate::agents::FailureKind;
use crate::audit::HostAudit;
use crate::error::ControllerError;
use crate::inventory::{Host, HostSource};
use crate::plan::Selection;
use crate::policy::{Policy, PolicySource};
use crate::run::planning::PlanScope;

pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|e| Status::internal(format!("cannot encode: {e}")))
}

/// A run's header alone (no containers), as the control RPCs answer.
pub fn run_info(run: &Run) -> Result<pb::RunInfo, Status> {
    Ok(pb::RunInfo {
        run_json: to_json(&RunView {
            run: run.clone(),
            containers: Vec::new(),
        })?,
    })
}

pub fn host(host: &Host) -> pb::Host {
    pb::Host {
        name: host.name.clone(),
        address: host.address.clone(),
        labels: host.labels.clone().into_iter().collect(),
        source: host.source.as_str().to_string(),
    }
}

/// A host an operator adds: it lives in the store.
pub fn host_from(host: pb::Host) -> Host {
    Host {
        name: host.name,
        address: host.address,
        labels: host.labels.into_iter().collect::<BTreeMap<_, _>>(),
        source: HostSource::Store,
    }
}

pub fn host_audit(audit: HostAudit) -> pb::HostAudit {
    let outcome = match audit.outcome {
        Ok(report) => pb::host_audit::Outcome::Report(report.into()),
        Err(failure) => pb::host_audit::Outcome::Error(pb::HostError {
            kind: match failure.kind {
                FailureKind::Unreachable => Kind::Unreachable,
                FailureKind::Timeout => Kind::Timeout,
                FailureKind::Refused => Kind::Refused,
                FailureKind::AgentError => Kind::AgentError,
            } as i32,
            message: failure.message,
        }),
    };
    pb::HostAudit {
        host: Some(host(&audit.host)),
        outcome: Some(outcome),
        elapsed_ms: audit.elapsed_ms,
    }
}

/// The wire's options → validated domain options.
pub fn options(options: Option<pb::RunOptions>) -> Result<RunOptions, ControllerError> {
    let o = options.unwrap_or_default();
    let on_failure = OnFailure::parse(&o.on_failure).ok_or_else(|| {
        ControllerError::InvalidArgument(format!(
            "invalid --on-failure '{}': use rollback-host, halt or rollback-run",
            o.on_failure
        ))
    })?;
    let invalid = |e: OptionError| ControllerError::InvalidArgument(e.to_string());
    let batches = o
        .batches
        .iter()
        .map(|b| BatchSize::parse(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let max_failures = FailureBudget::parse(&o.max_failures).map_err(invalid)?;
    Ok(RunOptions {
        canary: o.canary,
        batches,
        max_parallel: if o.max_parallel == 0 {
            4
        } else {
            o.max_parallel
        },
        max_failures,
        on_failure,
        pause_after_canary: o.pause_after_canary,
        agent_deadline_secs: o.agent_deadline_secs,
    })
}

/// The wire's selection → the planner's scope (the policy parsed here, so
/// its errors name the operator's file and line).
pub fn scope(selection: Option<pb::Selection>) -> Result<PlanScope, ControllerError> {
    let s = selection.unwrap_or_default();
    let policy = Policy::from_source(&PolicySource {
        path: s.policy_path,
        text: s.policy_toml,
    })
    .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
    Ok(PlanScope {
        hosts: s.hosts,
        selectors: s.selectors,
        selection: Selection {
            containers: s.containers,
            include_pods: s.include_pods,
            rootless: s.rootless,
        },
        policy,
    })
}

/// The one mapping of the controller's errors to a gRPC status.
impl From<ControllerError> for tonic::Status {
    fn from(error: ControllerError) -> Self {
        let message = error.to_string();
        match error {
            ControllerError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ControllerError::NotFound(_) => tonic::Status::not_found(message),
            ControllerError::AlreadyExists(_) => tonic::Status::already_exists(message),
            ControllerError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ControllerError::Store(_)
            | ControllerError::Tls(_)
            | ControllerError::WrongOwnRole(_)
            | ControllerError::Serve(_) => tonic::Status::internal(message),
        }
    }
}
