//! Planning for a scope: select the hosts, audit them (with the images'
//! users), plan each; what a new plan, a saved plan made again and a run
//! all start from.

use crate::agents::inspect::InspectAsk;
use crate::audit::audit_hosts;
use crate::error::ControllerError;
use crate::inventory::{self, Host};
use crate::plan::{HostPlan, Selection, plan_host};
use crate::policy::Policy;
use crate::run::Runs;

/// What a plan is made for.
#[derive(Debug, Clone, Default)]
pub struct PlanScope {
    pub hosts: Vec<String>,
    pub selectors: Vec<String>,
    pub selection: Selection,
    pub policy: Policy,
}

/// The selected hosts, and each one's plan (or why it has none).
pub async fn plan_hosts(
    runs: &Runs,
    hosts: &[String],
    selectors: &[String],
    policy: &Policy,
    selection: &Selection,
) -> Result<(Vec<Host>, Vec<HostPlan>), ControllerError> {
    let hosts = inventory::select(runs.store().hosts()?, hosts, selectors)?;
    let audits = audit_hosts(
        runs.pool(),
        hosts.clone(),
        runs.audit_timeout,
        InspectAsk {
            skip_ownership: false,
            with_users: true,
        },
    )
    .await;
    let plans = hosts
        .iter()
        .zip(audits)
        .map(|(host, audit)| match audit.outcome {
            Ok(report) => plan_host(host, &report, policy, selection),
            Err(failure) => unplanned(host, failure.message),
        })
        .collect();
    Ok((hosts, plans))
}

fn unplanned(host: &Host, error: String) -> HostPlan {
    HostPlan {
        host: host.name.clone(),
        address: host.address.clone(),
        error: Some(error),
        containers: Vec::new(),
    }
}
