//! `fleetctl audit`: ask the controller, summarise, render, gate.

use std::collections::BTreeMap;
use std::io::Write;

use fleet_core::audit::{HostReport, Severity, Verdict};
use fleet_proto::controller::v1 as pb;
use serde::Serialize;

use crate::args::{AuditArgs, FailOn};
use crate::client::Controller;
use crate::commands::audit_render;
use crate::exit::{self, CliError};

#[derive(Debug, Serialize)]
pub struct FleetAudit {
    pub summary: Summary,
    pub hosts: Vec<HostAudit>,
}

#[derive(Debug, Serialize)]
pub struct HostAudit {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub status: HostStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<HostReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostStatus {
    Ok,
    Unreachable,
    Refused,
    Timeout,
    AgentError,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Ok => "ok",
            HostStatus::Unreachable => "unreachable",
            HostStatus::Refused => "refused",
            HostStatus::Timeout => "timeout",
            HostStatus::AgentError => "agent-error",
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub containers: usize,
    pub root: usize,
    pub hosts_with_root: usize,
    pub drops_from_root: usize,
    pub non_root: usize,
    pub root_elsewhere: usize,
    pub unknown: usize,
    pub hosts_audited: usize,
    pub hosts_not_audited: usize,
    pub findings: BTreeMap<Severity, usize>,
}

impl Summary {
    pub fn of(hosts: &[HostAudit]) -> Self {
        let mut s = Summary::default();
        for host in hosts {
            let Some(report) = &host.report else {
                s.hosts_not_audited += 1;
                continue;
            };
            s.hosts_audited += 1;
            let mut has_root = false;
            for c in &report.containers {
                s.containers += 1;
                match c.identity.verdict {
                    Verdict::Root => {
                        s.root += 1;
                        has_root = true;
                    }
                    Verdict::StartsAsRootDropsTo { .. } => s.drops_from_root += 1,
                    Verdict::NonRoot => s.non_root += 1,
                    Verdict::RootlessEngine { .. } | Verdict::UsernsRemapped { .. } => {
                        s.root_elsewhere += 1
                    }
                    Verdict::Unknown { .. } => s.unknown += 1,
                }
                for f in &c.findings {
                    *s.findings.entry(f.severity).or_default() += 1;
                }
            }
            if has_root {
                s.hosts_with_root += 1;
            }
        }
        s
    }

    /// `11/28 containers (39%) run as root on 3 of 4 audited hosts`; a
    /// host without containers is an audited host all the same.
    pub fn headline(&self) -> String {
        let audited = plural(self.hosts_audited, "audited host", "audited hosts");
        if self.containers == 0 {
            return format!("no containers on {audited}");
        }
        let percent = (self.root * 100 + self.containers / 2)
            .checked_div(self.containers)
            .unwrap_or(0);
        let (containers, run) = if self.containers == 1 {
            ("container", "runs")
        } else {
            ("containers", "run")
        };
        format!(
            "{}/{} {containers} ({percent}%) {run} as root on {} of {audited}",
            self.root, self.containers, self.hosts_with_root
        )
    }
}

/// `1 container`, `2 containers`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

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
    use fleet_core::audit::{ContainerReport, Finding, Identity};

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
