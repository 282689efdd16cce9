//! `fleetctl plan`: what each selected container becomes, in what order.

use std::io::Write;

use fleet_core::migration::MountPlan;
use fleet_core::plan::{Action, PlanDocument};
use fleet_core::target::{Target, TargetUser};
use fleet_proto::controller::v1 as pb;

use crate::args::{ListFormat, PlanArgs, ScopeArgs};
use crate::client::Controller;
use crate::exit::{self, CliError};
use crate::render::Table;

/// The wire selection, with the policy file read here so the controller's
/// errors can name it.
pub fn selection(scope: &ScopeArgs) -> Result<pb::Selection, CliError> {
    let (policy_toml, policy_path) = match &scope.policy {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read policy {}: {e}", path.display()))
            })?,
            path.display().to_string(),
        ),
        None => (String::new(), String::new()),
    };
    Ok(pb::Selection {
        hosts: scope.hosts.clone(),
        selectors: scope.selectors.clone(),
        containers: scope.containers.clone(),
        policy_toml,
        policy_path,
        include_pods: scope.include_pods,
        rootless: scope.target == crate::args::TargetArg::Rootless,
    })
}

pub async fn run(
    controller: &mut Controller,
    args: PlanArgs,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let plan_json = controller
        .client
        .plan(pb::PlanRequest {
            selection: Some(selection(&args.scope)?),
        })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner()
        .plan_json;
    let plan: PlanDocument = serde_json::from_str(&plan_json).map_err(|e| {
        CliError::error(format!(
            "the controller sent a plan fleetctl cannot read (is fleetctl older than the controller?): {e}"
        ))
    })?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{plan_json}\n"))
            .map_err(|e| CliError::error(format!("cannot write {}: {e}", path.display())))?;
    }
    match args.output {
        ListFormat::Json => {
            let _ = writeln!(out, "{plan_json}");
        }
        ListFormat::Table => {
            render(&plan, out);
            if let Some(path) = &args.out {
                let _ = writeln!(
                    out,
                    "\nsaved to {}: apply it with `fleetctl migrate --plan {}`",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    Ok(exit::OK)
}

/// `12.3 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What the TARGET column says: the user, and its ids where the name
/// does not say them.
fn target_text(target: &Target) -> String {
    match target.user() {
        TargetUser::Explicit { ids } => ids.to_string(),
        TargetUser::ImageUser { ids, .. } => format!("{target} ({ids})"),
        TargetUser::Dedicated { uid, gid, .. } => match (uid, gid) {
            (Some(u), Some(g)) => format!("{target} ({u}:{g})"),
            (None, Some(g)) => format!("{target} (uid from the agent's range, gid {g})"),
            _ => target.to_string(),
        },
    }
}

/// The words of an action's kind, as the tables show it.
pub fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::Migrate(_) => "migrate",
        Action::Exempt { .. } => "exempt",
        Action::Refused { .. } => "refused",
        Action::Skip { .. } => "skip",
    }
}

/// One line per container: what it becomes (or why not), in order.
pub fn describe_action(action: &Action) -> (String, String, String) {
    let kind = action_kind(action).to_string();
    match action {
        Action::Migrate(m) => {
            let changing: u64 = m.mounts.iter().map(|mount| mount.changing).sum();
            let partial = m.mounts.iter().any(|mount| mount.partial);
            let detail = format!(
                "{} mount(s), {}{} entries to re-own, backup {}, downtime ~{:.1} s",
                m.mounts.len(),
                if partial { "≥" } else { "" },
                changing,
                bytes(m.backup_bytes),
                m.expected_downtime_ms as f64 / 1000.0
            );
            (kind, target_text(&m.target), detail)
        }
        Action::Exempt { reason } | Action::Skip { reason } => (kind, "-".into(), reason.clone()),
        Action::Refused { reasons } => (kind, "-".into(), reasons.join("; ")),
    }
}

fn render(doc: &PlanDocument, out: &mut dyn Write) {
    let mut table = Table::new(&[
        "HOST",
        "#",
        "CONTAINER",
        "CLASS",
        "NOW",
        "ACTION",
        "TARGET",
        "DETAIL",
    ]);
    let (mut migrate, mut exempt, mut refused, mut skipped) = (0, 0, 0, 0);
    for host in &doc.plan.hosts {
        if let Some(error) = &host.error {
            table.row(vec![
                host.host.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "unplanned".into(),
                "-".into(),
                error.clone(),
            ]);
            continue;
        }
        for c in &host.containers {
            let (kind, target, mut detail) = describe_action(&c.action);
            match &c.action {
                Action::Migrate(_) => migrate += 1,
                Action::Exempt { .. } => exempt += 1,
                Action::Refused { .. } => refused += 1,
                Action::Skip { .. } => skipped += 1,
            }
            if let Action::Migrate(m) = &c.action
                && let Some(user) = m.target.user().to_create()
            {
                detail = format!("creates user {user}; {detail}");
            }
            if !c.group.is_empty() {
                detail = format!("{detail}; moves with {}", c.group.join(", "));
            }
            table.row(vec![
                host.host.clone(),
                c.order.to_string(),
                c.name.clone(),
                c.class.clone(),
                c.current.clone(),
                kind,
                target,
                detail,
            ]);
            for line in migration_notes(&c.action) {
                table.note(line);
            }
        }
    }
    if table.is_empty() {
        let _ = writeln!(out, "nothing to plan: no containers on the selected hosts");
        return;
    }
    let _ = table.write_text(out);
    let _ = writeln!(
        out,
        "\n{migrate} to migrate, {exempt} exempt, {refused} refused, {skipped} with nothing to do"
    );
    match &doc.basis {
        None => {}
        Some(basis) if basis.policy.path.is_empty() => {
            let _ = writeln!(
                out,
                "policy: the default (image user, else a dedicated user)"
            );
        }
        Some(basis) => {
            let _ = writeln!(
                out,
                "policy: {} (sha256 {})",
                basis.policy.path, basis.policy_sha256
            );
        }
    }
}

/// Entries a remap leaves alone named under their path line; the rest counted.
const LEFT_ALONE_SHOWN: usize = 5;

/// The lines under a migrating container: each path whose ownership
/// changes (and what stays as it is), each target id someone on the host
/// has, the account chosen instead, each runtime directory.
pub fn migration_notes(action: &Action) -> Vec<String> {
    let Action::Migrate(notes) = action else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    if let Some(instead) = &notes.instead_of {
        lines.push(format!("a dedicated account instead of {instead}"));
    }
    for collision in &notes.host_id_collisions {
        lines.push(format!(
            "! {collision}: without a user namespace the service shares its files (on_host_id_collision = \"refuse\" or \"dedicated\" avoids it)"
        ));
    }
    for mount in &notes.mounts {
        lines.push(ownership_line(mount));
        for entry in mount.left_alone.iter().take(LEFT_ALONE_SHOWN) {
            lines.push(format!("  left alone: {}/{entry}", mount.source));
        }
        let named = mount.left_alone.len().min(LEFT_ALONE_SHOWN) as u64;
        if mount.left_alone_count > named {
            lines.push(format!(
                "  left alone: {} more (`-o json` lists up to 20)",
                mount.left_alone_count - named
            ));
        }
    }
    for dir in &notes.runtime_dirs {
        lines.push(format!("runtime dir {dir}"));
    }
    if !notes.layer_loss_allowed.is_empty() {
        lines.push(format!(
            "! the recreate loses what its writable layer holds ({}): allow_layer_loss = true in its policy rule",
            notes.layer_loss_allowed.join(", ")
        ));
    }
    for note in &notes.engine_notes {
        lines.push(format!("engine: {note}"));
    }
    lines
}

/// One path whose ownership changes: where it is on the host, where the
/// container sees it, how many entries move (at least, if the audit's
/// walk stopped at its bound), and how many the remap leaves alone.
fn ownership_line(mount: &MountPlan) -> String {
    let at_least = if mount.partial { "≥" } else { "" };
    let left = if mount.left_alone_count > 0 {
        format!(", {} left alone", mount.left_alone_count)
    } else {
        String::new()
    };
    format!(
        "{} → {}: {at_least}{} of {at_least}{} entries change owner{left}, {}",
        mount.source,
        mount.destination,
        mount.changing,
        mount.entries,
        bytes(mount.bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_path_whose_ownership_changes() {
        let action = serde_json::json!({
            "kind": "migrate",
            "target": {"placement": "in-place", "user": {"kind": "dedicated", "name": "svc-db", "uid": null, "gid": 2001}},
            "from_ids": [0], "hooks": [], "probe": null, "min_healthy_secs": 0, "deadline_secs": 0, "retention_days": 0,
            "backup_bytes": 4000, "expected_downtime_ms": 6000,
            "mounts": [
                {"source": "/srv/db", "destination": "/var/lib/db", "entries": 40, "changing": 12, "bytes": 4000, "partial": false,
                 "left_alone": ["dev/null (a device node: never handed to a service)"], "left_alone_count": 1},
                {"source": "/srv/logs", "destination": "/logs", "entries": 100000, "changing": 100000, "bytes": 0, "partial": true,
                 "left_alone": [], "left_alone_count": 0}
            ],
            "host_id_collisions": [{"kind": "gid", "id": 999, "owner": "systemd-journal"}],
            "runtime_dirs": [{"path": "/run/db", "now": {"uid": 999, "gid": 999, "mode": 493},
                              "image": {"uid": 0, "gid": 0, "mode": 493}, "target": null, "why": "owned by uid 999"}],
            "layer_loss_allowed": ["/etc/app.conf"],
            "engine_notes": ["podman 4.3.1 (no systemd) runs no healthcheck: fleet-agent runs it while verify waits"]
        });
        let plan = serde_json::json!({
            "version": 2,
            "created_unix_ms": 0,
            "basis": {"policy": {"path": "p.toml", "text": ""}, "policy_sha256": "ab12", "containers": [], "include_pods": false},
            "hosts": [{"host": "h1", "address": "a", "error": null, "containers": [{
                "name": "db", "id": "c0ffee", "image": "db:1", "fingerprint": "f",
                "order": 1, "class": "database", "current": "root", "group": [],
                "action": {"kind": "skip", "reason": "replaced below"}
            }]}]
        });
        let mut plan: PlanDocument = serde_json::from_value(plan).unwrap();
        plan.plan.hosts[0].containers[0].action = serde_json::from_value(action).unwrap();
        let mut out = Vec::new();
        render(&plan, &mut out);
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].starts_with("h1    1  db")
                && lines[1].contains("uid from the agent's range, gid 2001")
                && lines[1].contains("creates user svc-db; 2 mount(s), ≥100012 entries"),
            "{out}"
        );
        assert_eq!(
            &lines[2..9],
            [
                "    ! gid 999 is the host's group systemd-journal: without a user namespace the service shares its files (on_host_id_collision = \"refuse\" or \"dedicated\" avoids it)",
                "    /srv/db → /var/lib/db: 12 of 40 entries change owner, 1 left alone, 4.0 kB",
                "      left alone: /srv/db/dev/null (a device node: never handed to a service)",
                "    /srv/logs → /logs: ≥100000 of ≥100000 entries change owner, 0 B",
                "    runtime dir /run/db: 999:999 0755 now (owned by uid 999), 0:0 0755 in the image → the new user's ids, 0755",
                "    ! the recreate loses what its writable layer holds (/etc/app.conf): allow_layer_loss = true in its policy rule",
                "    engine: podman 4.3.1 (no systemd) runs no healthcheck: fleet-agent runs it while verify waits",
            ]
        );
        assert!(out.ends_with("policy: p.toml (sha256 ab12)\n"), "{out}");
    }
}
