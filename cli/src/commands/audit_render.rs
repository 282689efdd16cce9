//! The shapes of an audit: table, wide, json, csv, markdown.

use std::io::{self, Write};

use fleet_core::audit::{ContainerReport, HostReport, MountReport, Severity};
use fleet_core::capabilities::{HostCapabilities, UnitFlavour};

use crate::args::AuditFormat;
use crate::commands::audit_doc::{FleetAudit, HostAudit, plural};
use crate::render::{Table, csv_line};

pub fn render(audit: &FleetAudit, format: AuditFormat, out: &mut dyn Write) -> io::Result<()> {
    match format {
        AuditFormat::Json => {
            serde_json::to_writer(&mut *out, audit).map_err(io::Error::other)?;
            writeln!(out)
        }
        AuditFormat::Csv => csv(audit, out),
        AuditFormat::Table | AuditFormat::Wide | AuditFormat::Markdown => {
            tables(audit, format, out)
        }
    }
}

fn user_shown(user: &str) -> String {
    if user.is_empty() {
        "(empty)".into()
    } else {
        user.to_string()
    }
}

fn ids(c: &ContainerReport) -> String {
    match (c.identity.uid, c.identity.gid) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        _ => "?".into(),
    }
}

/// "high 4.1,5.4 +3 low": the worst severity, the checks at medium and
/// above, and how many lesser ones; "low 5.13,5.26" when all are lesser.
fn findings_short(c: &ContainerReport) -> String {
    let Some(worst) = c.worst_severity() else {
        return "-".into();
    };
    let (serious, lesser): (Vec<_>, Vec<_>) = c
        .findings
        .iter()
        .partition(|f| f.severity >= Severity::Medium);
    let shown = if serious.is_empty() {
        &lesser
    } else {
        &serious
    };
    let mut text = format!(
        "{worst} {}",
        shown
            .iter()
            .map(|f| f.check.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    if !serious.is_empty() && !lesser.is_empty() {
        text.push_str(&format!(" +{} low", lesser.len()));
    }
    text
}

fn findings_all(c: &ContainerReport) -> String {
    c.findings
        .iter()
        .map(|f| {
            let missed = if f.missed_by_docker_bench {
                " (missed by docker-bench)"
            } else {
                ""
            };
            format!("{} {}: {}{missed}", f.check, f.severity, f.detail)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn process_uids(c: &ContainerReport) -> String {
    if c.identity.processes.is_empty() {
        return "-".into();
    }
    c.identity
        .processes
        .iter()
        .map(|p| {
            let [r, e, s, f] = p.uids;
            if r == e && e == s && s == f {
                format!("{}:{r}", p.command)
            } else {
                format!("{}:{r}/{e}/{s}/{f}", p.command)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mount_text(m: &MountReport) -> String {
    let name = m.volume_name.clone().unwrap_or_else(|| m.source.clone());
    let mut text = format!(
        "{}:{}{}",
        name,
        m.destination,
        if m.read_only { ":ro" } else { "" }
    );
    let o = &m.ownership;
    if let Some(error) = &o.error {
        text.push_str(&format!(" [{error}]"));
    } else if !o.skipped {
        let owners = o
            .top_owners
            .iter()
            .take(2)
            .map(|c| format!("{}:{}×{}", c.uid, c.gid, c.entries))
            .collect::<Vec<_>>()
            .join(",");
        let bound = o
            .bound_hit
            .map(|b| format!(", stopped at {} bound", b.as_str()))
            .unwrap_or_default();
        text.push_str(&format!(" [{} entries {owners}{bound}]", o.entries));
    }
    text
}

fn tables(audit: &FleetAudit, format: AuditFormat, out: &mut dyn Write) -> io::Result<()> {
    let markdown = format == AuditFormat::Markdown;
    let wide = format == AuditFormat::Wide;
    for host in &audit.hosts {
        host_heading(host, markdown, out)?;
        let Some(report) = &host.report else {
            writeln!(out)?;
            continue;
        };
        host_table(report, wide, markdown, out)?;
        for warning in &report.warnings {
            writeln!(out, "  ! {warning}")?;
        }
        for line in rootless_lines(&report.capabilities, wide) {
            writeln!(out, "  {line}")?;
        }
        for c in &report.containers {
            for error in &c.errors {
                writeln!(out, "  ! {}: {error}", c.name)?;
            }
        }
        writeln!(out)?;
    }
    summary(audit, markdown, out)
}

/// What a move under a rootless account would meet on the host: one line
/// (ready with its unit back-end, or each blocker); `-o wide` adds what it
/// would do differently.
fn rootless_lines(caps: &HostCapabilities, wide: bool) -> Vec<String> {
    if !caps.probed {
        return Vec::new();
    }
    let needs = caps.rootless_needs();
    let podman = caps.podman_version.as_deref().unwrap_or("no podman");
    let mut lines = Vec::new();
    if needs.blockers.is_empty() {
        let unit = match needs.unit {
            Some(UnitFlavour::Quadlet) => "Quadlet units",
            _ => "systemd user .service units",
        };
        lines.push(format!(
            "rootless target: possible ({podman}, cgroup v{}, {unit})",
            caps.cgroup_version
        ));
    } else {
        lines.push(format!("rootless target: blocked ({podman})"));
        lines.extend(needs.blockers.iter().map(|b| format!("  ! {b}")));
    }
    if wide {
        lines.extend(needs.notes.iter().map(|n| format!("  - {n}")));
    }
    lines
}

/// One host's containers, a row each.
fn host_table(
    report: &HostReport,
    wide: bool,
    markdown: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let headers: &[&str] = if wide {
        &[
            "CONTAINER",
            "STATE",
            "IMAGE",
            "USER",
            "UID:GID",
            "VERDICT",
            "PROCESSES",
            "COMPOSE",
            "POD",
            "MOUNTS",
            "FINDINGS",
        ]
    } else {
        &[
            "CONTAINER",
            "IMAGE",
            "USER",
            "UID:GID",
            "VERDICT",
            "FINDINGS",
        ]
    };
    let mut table = Table::new(headers);
    for c in &report.containers {
        table.row(if wide { wide_row(c) } else { short_row(c) });
    }
    if table.is_empty() {
        writeln!(out, "(no containers)")
    } else if markdown {
        table.write_markdown(out)
    } else {
        table.write_text(out)
    }
}

/// The verdict, with the rootless account whose engine runs it.
fn verdict(c: &ContainerReport) -> String {
    match &c.account {
        Some(account) => format!("{} under {account}", c.identity.verdict),
        None => c.identity.verdict.to_string(),
    }
}

fn short_row(c: &ContainerReport) -> Vec<String> {
    vec![
        c.name.clone(),
        c.image.clone(),
        user_shown(&c.identity.configured_user),
        ids(c),
        verdict(c),
        findings_short(c),
    ]
}

fn wide_row(c: &ContainerReport) -> Vec<String> {
    vec![
        c.name.clone(),
        c.state.clone(),
        c.image.clone(),
        user_shown(&c.identity.configured_user),
        ids(c),
        verdict(c),
        process_uids(c),
        match (&c.compose_project, &c.compose_service) {
            (Some(p), Some(s)) => format!("{p}/{s}"),
            _ => "-".into(),
        },
        c.pod.clone().unwrap_or_else(|| "-".into()),
        if c.mounts.is_empty() {
            "-".into()
        } else {
            c.mounts
                .iter()
                .map(mount_text)
                .collect::<Vec<_>>()
                .join(" ")
        },
        findings_all(c),
    ]
}

/// The fleet's totals, and the hosts that could not be audited.
fn summary(audit: &FleetAudit, markdown: bool, out: &mut dyn Write) -> io::Result<()> {
    let s = &audit.summary;
    let mut extra = vec![format!(
        "{} starts as root and drops, {} non-root, {} root only inside a user namespace",
        s.drops_from_root, s.non_root, s.root_elsewhere
    )];
    if s.unknown > 0 {
        extra.push(format!("{} unknown", s.unknown));
    }
    let line = format!("{} ({})", s.headline(), extra.join(", "));
    if markdown {
        writeln!(out, "**{line}**")?;
    } else {
        writeln!(out, "{line}")?;
    }
    if s.hosts_not_audited > 0 {
        let failed: Vec<String> = audit
            .hosts
            .iter()
            .filter(|h| h.report.is_none())
            .map(|h| format!("{} ({})", h.name, h.status.as_str()))
            .collect();
        writeln!(
            out,
            "{} of {} not audited: {}",
            s.hosts_not_audited,
            plural(s.hosts_audited + s.hosts_not_audited, "host", "hosts"),
            failed.join(", ")
        )?;
    }
    Ok(())
}

fn host_heading(host: &HostAudit, markdown: bool, out: &mut dyn Write) -> io::Result<()> {
    let title = match &host.report {
        Some(r) => format!(
            "{} ({}) — {} {}{}, {}",
            host.name,
            host.address,
            r.engine.kind,
            r.engine.version,
            if r.engine.rootless {
                " rootless"
            } else if r.engine.userns_remap {
                " userns-remap"
            } else {
                ""
            },
            plural(r.containers.len(), "container", "containers")
        ),
        None => format!(
            "{} ({}) — NOT AUDITED, {}: {}",
            host.name,
            host.address,
            host.status.as_str(),
            host.error.as_deref().unwrap_or("no detail")
        ),
    };
    if markdown {
        writeln!(out, "### {title}\n")
    } else {
        writeln!(out, "HOST {title}")
    }
}

fn csv(audit: &FleetAudit, out: &mut dyn Write) -> io::Result<()> {
    let header = [
        "host",
        "host_status",
        "container",
        "id",
        "image",
        "state",
        "user",
        "uid",
        "gid",
        "verdict",
        "worst_severity",
        "findings",
        "errors",
    ];
    writeln!(
        out,
        "{}",
        csv_line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    )?;
    for host in &audit.hosts {
        let Some(report) = &host.report else {
            let mut row = vec![host.name.clone(), host.status.as_str().to_string()];
            row.extend(std::iter::repeat_n(String::new(), 10));
            row.push(host.error.clone().unwrap_or_default());
            writeln!(out, "{}", csv_line(&row))?;
            continue;
        };
        for c in &report.containers {
            let row = vec![
                host.name.clone(),
                host.status.as_str().to_string(),
                c.name.clone(),
                c.id.clone(),
                c.image.clone(),
                c.state.clone(),
                c.identity.configured_user.clone(),
                c.identity.uid.map(|u| u.to_string()).unwrap_or_default(),
                c.identity.gid.map(|g| g.to_string()).unwrap_or_default(),
                c.identity.verdict.to_string(),
                c.worst_severity()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                c.findings
                    .iter()
                    .map(|f| format!("{}:{}", f.check, f.severity))
                    .collect::<Vec<_>>()
                    .join(";"),
                c.errors.join("; "),
            ];
            writeln!(out, "{}", csv_line(&row))?;
        }
    }
    Ok(())
}
