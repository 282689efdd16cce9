//! From a request to a run: plan now (or make a saved plan again and check
//! it says the same, `saved`), validate the options, lay out the waves and
//! the container records.

use fleet_core::auth::Caller;

use crate::error::ControllerError;
use crate::plan::{Action, Plan};
use crate::policy::glob;
use crate::run::Runs;
use crate::run::ctx::now_ms;
use crate::run::model::{
    ContainerRun, ContainerState, HostRun, HostState, Run, RunKind, RunOptions, RunView,
};
use crate::run::planning::{PlanScope, plan_hosts};
use crate::run::saved::{self, PlanDocument};
use crate::run::waves;

#[derive(Debug, Clone)]
pub struct StartRequest {
    pub scope: PlanScope,
    pub saved_plan: Option<PlanDocument>,
    pub options: RunOptions,
    pub dry_run: bool,
}

pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let nanos = now.nanosecond();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{:04x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        (nanos ^ (nanos >> 16)) & 0xffff
    )
}

/// Audits the chosen hosts (with the images' users) and plans each; the
/// document records what the plan was made from, for `migrate --plan`.
pub async fn make_plan(runs: &Runs, scope: &PlanScope) -> Result<PlanDocument, ControllerError> {
    let (hosts, plans) = plan_hosts(
        runs,
        &scope.hosts,
        &scope.selectors,
        &scope.policy,
        &scope.selection,
    )
    .await?;
    for pattern in &scope.selection.containers {
        if !plans
            .iter()
            .any(|h| h.containers.iter().any(|c| glob(pattern, &c.name)))
        {
            return Err(ControllerError::NotFound(format!(
                "no container matches '{pattern}' on host(s) {} (see `fleetctl audit`)",
                hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(PlanDocument {
        plan: Plan {
            version: saved::VERSION,
            created_unix_ms: now_ms(),
            hosts: plans,
        },
        basis: Some(saved::basis_of(scope)),
    })
}

/// Builds the run (not yet stored) from the request.
pub async fn build(
    runs: &Runs,
    caller: &Caller,
    request: StartRequest,
) -> Result<RunView, ControllerError> {
    let plan = match &request.saved_plan {
        Some(saved) => saved::rederive(runs, saved, &request.scope).await?,
        None => make_plan(runs, &request.scope).await?.plan,
    };
    if let Some(host) = plan.hosts.iter().find(|h| h.error.is_some()) {
        return Err(ControllerError::FailedPrecondition(format!(
            "host {} could not be planned: {}; bring its agent back or leave the host out (--host/--selector)",
            host.host,
            host.error.clone().unwrap_or_default()
        )));
    }
    let budget = request.options.max_failures.allowed(plan.hosts.len());
    let host_names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let wave_list = waves::waves(
        &host_names,
        request.options.canary,
        &request.options.batches,
    );
    let mut containers = Vec::new();
    let mut hosts = Vec::new();
    for host in &plan.hosts {
        let mut keys = Vec::new();
        for c in &host.containers {
            let key = format!("{}/{:04}", host.host, c.order);
            let state = match c.action {
                Action::Migrate(_) => ContainerState::Pending,
                _ => ContainerState::NotMigrated,
            };
            containers.push(ContainerRun::new(
                key.clone(),
                host.host.clone(),
                c.clone(),
                state,
            ));
            keys.push(key);
        }
        hosts.push(HostRun {
            name: host.host.clone(),
            address: host.address.clone(),
            state: HostState::Pending,
            error: None,
            containers: keys,
        });
    }
    if !request.dry_run
        && !containers
            .iter()
            .any(|c| c.state == ContainerState::Pending)
    {
        return Err(ControllerError::FailedPrecondition(
            "nothing to migrate: every selected container is exempt, refused or already non-root (see `fleetctl plan`)".into(),
        ));
    }
    let id = if request.dry_run {
        "dry-run".into()
    } else {
        new_run_id()
    };
    let run = Run::started(
        id,
        RunKind::Migrate,
        caller.name.clone(),
        request.options,
        hosts,
        wave_list,
        budget,
    );
    Ok(RunView { run, containers })
}
