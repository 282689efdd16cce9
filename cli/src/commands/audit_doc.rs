//! The document `fleetctl audit` prints (`-o json`) and renders: each
//! host's report or why it has none, and the fleet's summary.

use std::collections::BTreeMap;

use fleet_core::audit::{HostReport, Severity, Verdict};
use serde::Serialize;

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
