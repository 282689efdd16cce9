//! `fleetctl audit`: ask the controller, summarise, render, gate.

use std::io::Write;

use fleet_core::audit::Severity;
use fleet_proto::controller::v1 as pb;

use crate::args::{AuditArgs, FailOn};
use crate::client::Controller;
use crate::commands::audit_doc::{FleetAudit, HostAudit, HostStatus, Summary};
use crate::commands::audit_render;
use crate::exit::{self, CliError};

fn status_of(kind: i32) -> HostStatus {
    use pb::host_error::Kind;
    match Kind::try_from(kind).unwrap_or(Kind::Unspecified) {
        Kind::Unreachable | Kind::Unspecified => HostStatus::Unreachable,
        Kind::Refused => HostStatus::Refused,
        Kind::Timeout => HostStatus::Timeout,
        Kind::AgentError => HostStatus::AgentError,
    }
}

pub fn from_wire(audit: pb::FleetAudit) -> FleetAudit {
    let mut hosts: Vec<HostAudit> = audit
        .hosts
        .into_iter()
        .map(|h| {
            let host = h.host.unwrap_or_default();
            let (status, error, report) = match h.outcome {
                Some(pb::host_audit::Outcome::Report(r)) => (HostStatus::Ok, None, Some(r.into())),
                Some(pb::host_audit::Outcome::Error(e)) => {
                    (status_of(e.kind), Some(e.message), None)
                }
                None => (
                    HostStatus::AgentError,
                    Some("the controller returned no outcome".into()),
                    None,
                ),
            };
            HostAudit {
                name: host.name,
                address: host.address,
                labels: host.labels.into_iter().collect(),
                status,
                error,
                elapsed_ms: h.elapsed_ms,
                report,
            }
        })
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    FleetAudit {
        summary: Summary::of(&hosts),
        hosts,
    }
}

/// The exit code `--fail-on` asks for.
pub fn gate(audit: &FleetAudit, fail_on: Option<FailOn>) -> u8 {
    let Some(fail_on) = fail_on else {
        return exit::OK;
    };
    let containers = audit
        .hosts
        .iter()
        .filter_map(|h| h.report.as_ref())
        .flat_map(|r| r.containers.iter());
    let tripped = match fail_on {
        FailOn::Root => containers.into_iter().any(|c| c.identity.verdict.is_root()),
        FailOn::High => containers
            .into_iter()
            .any(|c| c.worst_severity() >= Some(Severity::High)),
        FailOn::Any => containers.into_iter().any(|c| !c.findings.is_empty()),
    };
    if tripped {
        exit::GATE_TRIPPED
    } else if audit.summary.hosts_not_audited > 0 {
        exit::INCOMPLETE
    } else {
        exit::OK
    }
}

pub async fn run(
    controller: &mut Controller,
    args: AuditArgs,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let request = pb::AuditRequest {
        hosts: args.hosts,
        selectors: args.selectors,
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)).unwrap_or(0),
        skip_ownership: args.skip_ownership,
    };
    let wire = controller
        .client
        .audit(request)
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    let audit = from_wire(wire);
    audit_render::render(&audit, args.output, out)
        .map_err(|e| CliError::error(format!("cannot write the report: {e}")))?;
    Ok(gate(&audit, args.fail_on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::audit::{ContainerReport, Finding, HostReport, Identity, Verdict};
    use std::collections::BTreeMap;

    fn container(verdict: Verdict, severity: Option<Severity>) -> ContainerReport {
        ContainerReport {
            identity: Identity {
                verdict,
                ..Default::default()
            },
            findings: severity
                .map(|severity| {
                    vec![Finding {
                        check: "x".into(),
                        severity,
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn host(name: &str, containers: Option<Vec<ContainerReport>>) -> HostAudit {
        HostAudit {
            name: name.into(),
            address: String::new(),
            labels: BTreeMap::new(),
            status: if containers.is_some() {
                HostStatus::Ok
            } else {
                HostStatus::Unreachable
            },
            error: None,
            elapsed_ms: 0,
            report: containers.map(|containers| HostReport {
                containers,
                ..Default::default()
            }),
        }
    }

    fn audit(hosts: Vec<HostAudit>) -> FleetAudit {
        FleetAudit {
            summary: Summary::of(&hosts),
            hosts,
        }
    }

    #[test]
    fn headline_counts_root_containers_and_their_hosts() {
        let mut hosts = Vec::new();
        for h in 0..3 {
            let mut cs = vec![container(Verdict::NonRoot, None); 5];
            cs.extend(vec![
                container(Verdict::Root, Some(Severity::High));
                if h == 0 { 5 } else { 3 }
            ]);
            hosts.push(host(&format!("h{h}"), Some(cs)));
        }
        hosts.push(host(
            "clean",
            Some(vec![container(Verdict::NonRoot, None); 2]),
        ));
        let a = audit(hosts);
        assert_eq!(
            a.summary.headline(),
            "11/28 containers (39%) run as root on 3 of 4 audited hosts"
        );
        let one = audit(vec![host("a", Some(vec![container(Verdict::Root, None)]))]);
        assert_eq!(
            one.summary.headline(),
            "1/1 container (100%) runs as root on 1 of 1 audited host"
        );
        // A host without containers was audited all the same.
        let empty = audit(vec![
            host("a", Some(vec![])),
            host("b", Some(vec![container(Verdict::NonRoot, None)])),
        ]);
        assert_eq!(empty.summary.hosts_audited, 2);
        assert_eq!(
            empty.summary.headline(),
            "0/1 container (0%) runs as root on 0 of 2 audited hosts"
        );
        let none = audit(vec![host("a", Some(vec![]))]);
        assert_eq!(none.summary.headline(), "no containers on 1 audited host");
    }

    #[test]
    fn gates_trip_on_what_they_name_and_refuse_to_vouch_for_unseen_hosts() {
        let drops = audit(vec![host(
            "a",
            Some(vec![container(
                Verdict::StartsAsRootDropsTo { uid: 1 },
                Some(Severity::Medium),
            )]),
        )]);
        assert_eq!(gate(&drops, None), exit::OK);
        assert_eq!(gate(&drops, Some(FailOn::Root)), exit::OK);
        assert_eq!(gate(&drops, Some(FailOn::High)), exit::OK);
        assert_eq!(gate(&drops, Some(FailOn::Any)), exit::GATE_TRIPPED);
        let root = audit(vec![
            host(
                "a",
                Some(vec![container(Verdict::Root, Some(Severity::High))]),
            ),
            host("b", None),
        ]);
        assert_eq!(gate(&root, Some(FailOn::Root)), exit::GATE_TRIPPED);
        assert_eq!(gate(&root, Some(FailOn::High)), exit::GATE_TRIPPED);
        let unseen = audit(vec![host("a", Some(vec![])), host("b", None)]);
        assert_eq!(gate(&unseen, Some(FailOn::Root)), exit::INCOMPLETE);
        assert_eq!(gate(&unseen, None), exit::OK);
    }
}
