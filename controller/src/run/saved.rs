//! Saved plans (`fleetctl plan --out`, then `migrate --plan`). The file is
//! the operator's to keep, so it is never trusted: it records what it was
//! made from (the policy's text, the container globs), and applying it
//! makes the plan again from that and today's audit; the run is built from
//! the plan made again, and only if it says what the file says.

use sha2::Digest;

use crate::error::ControllerError;
use crate::plan::{Plan, Selection};
use crate::policy::Policy;
use crate::run::Runs;
use crate::run::compare::compare;
use crate::run::planning::{PlanScope, plan_hosts};

/// Plans made before the controller recorded their basis say 1.
pub const VERSION: u32 = 2;

pub use fleet_core::plan::{PlanBasis, PlanDocument};

pub fn sha256(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// What a plan made for `scope` was made from.
pub fn basis_of(scope: &PlanScope) -> PlanBasis {
    let policy = scope.policy.source().clone();
    PlanBasis {
        policy_sha256: sha256(&policy.text),
        policy,
        containers: scope.selection.containers.clone(),
        include_pods: scope.selection.include_pods,
        rootless: scope.selection.rootless,
    }
}

/// The plan a run may be built from: the saved one made again from its own
/// basis and today's audit, refused when that differs from the file.
pub async fn rederive(
    runs: &Runs,
    saved: &PlanDocument,
    scope: &PlanScope,
) -> Result<Plan, ControllerError> {
    let basis = saved.basis.as_ref().ok_or_else(|| {
        ControllerError::FailedPrecondition(
            "the saved plan does not record the policy it was made with (an older fleet-controller made it), so it cannot be checked: make a new one with `fleetctl plan --out plan.json`".into(),
        )
    })?;
    check_scope(scope, basis)?;
    if sha256(&basis.policy.text) != basis.policy_sha256 {
        return Err(ControllerError::FailedPrecondition(format!(
            "saved plan was edited: the policy recorded in it no longer has the sha256 {} it was planned with; nothing was changed: make a new plan with `fleetctl plan --out plan.json` and review it",
            basis.policy_sha256
        )));
    }
    let policy = Policy::from_source(&basis.policy).map_err(|e| {
        ControllerError::FailedPrecondition(format!(
            "saved plan was edited: the policy recorded in it is not valid ({e}); make a new plan with `fleetctl plan --out plan.json`"
        ))
    })?;
    let hosts: Vec<String> = saved.plan.hosts.iter().map(|h| h.host.clone()).collect();
    let selection = Selection {
        containers: basis.containers.clone(),
        include_pods: basis.include_pods,
        rootless: basis.rootless,
    };
    let (_, fresh) = plan_hosts(runs, &hosts, &[], &policy, &selection).await?;
    compare(&saved.plan, &fresh, &basis.containers)
}

/// A saved plan applies exactly what it shows: narrowing or widening it
/// here would run what nobody reviewed, and a group could be split.
fn check_scope(scope: &PlanScope, basis: &PlanBasis) -> Result<(), ControllerError> {
    let flags = [
        ("--host", !scope.hosts.is_empty()),
        ("--selector", !scope.selectors.is_empty()),
        ("--container", !scope.selection.containers.is_empty()),
        ("--include-pods", scope.selection.include_pods),
        ("--target rootless", scope.selection.rootless),
    ];
    let given: Vec<&str> = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if !given.is_empty() {
        return Err(ControllerError::InvalidArgument(format!(
            "{} cannot be combined with --plan: a saved plan applies exactly the hosts and containers it shows; make a plan of just those with `fleetctl plan {} --out plan.json`, review it, and apply that",
            given.join(", "),
            given
                .iter()
                .map(|f| format!("{f} ..."))
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    let policy = scope.policy.source();
    if !policy.text.trim().is_empty() && policy.text != basis.policy.text {
        return Err(ControllerError::InvalidArgument(format!(
            "--policy {} is not the policy the saved plan was made with ({}, sha256 {}): leave --policy out (the plan carries its policy), or make a new plan with this one",
            policy.path, basis.policy.path, basis.policy_sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn scope(policy: &str) -> PlanScope {
        PlanScope {
            policy: Policy::parse(Path::new("p.toml"), policy).unwrap(),
            ..PlanScope::default()
        }
    }

    #[test]
    fn with_a_plan_only_its_own_policy_may_be_named() {
        let text = "[[rule]]\nname = \"x\"\nexempt = \"why\"\n";
        let basis = basis_of(&scope(text));
        assert_eq!(basis.policy_sha256, sha256(text));
        check_scope(&PlanScope::default(), &basis).unwrap();
        check_scope(&scope(text), &basis).unwrap();
        let e = check_scope(&scope("[defaults]\n"), &basis)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not the policy the saved plan was made with"),
            "{e}"
        );
    }

    #[test]
    fn narrowing_a_saved_plan_is_a_usage_error() {
        let basis = basis_of(&PlanScope::default());
        let mut s = PlanScope::default();
        s.selection.containers = vec!["web*".into()];
        s.hosts = vec!["h1".into()];
        let e = check_scope(&s, &basis).unwrap_err();
        assert!(matches!(e, ControllerError::InvalidArgument(_)));
        let e = e.to_string();
        assert!(
            e.contains("--host, --container cannot be combined with --plan")
                && e.contains("fleetctl plan --host ... --container ... --out plan.json"),
            "{e}"
        );
    }

    #[test]
    fn the_document_round_trips_and_old_plans_have_no_basis() {
        let doc = PlanDocument {
            plan: Plan {
                version: VERSION,
                created_unix_ms: 1,
                hosts: Vec::new(),
            },
            basis: Some(basis_of(&scope("[defaults]\n"))),
        };
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<PlanDocument>(&json).unwrap(), doc);
        let old: PlanDocument =
            serde_json::from_str(r#"{"version":1,"created_unix_ms":1,"hosts":[]}"#).unwrap();
        assert_eq!(old.basis, None);
    }
}
