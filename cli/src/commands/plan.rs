//! `fleetctl plan`: what each selected container becomes, in what order.

use std::io::Write;

use fleet_core::migration::{IdCollision, MountPlan, RuntimeDirPlan};
use fleet_proto::controller::v1 as pb;
use serde::Deserialize;
use serde_json::Value;

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
    let plan: Value = serde_json::from_str(&plan_json).map_err(|e| {
        CliError::error(format!(
            "the controller sent a plan fleetctl cannot read: {e}"
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

/// A string field of a JSON document, or "".
pub fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
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

/// One line per container: what it becomes (or why not), in order.
pub fn describe_action(action: &Value) -> (String, String, String) {
    match action.get("kind").and_then(Value::as_str).unwrap_or("") {
        "migrate" => {
            let target = match (
                action.get("uid").and_then(Value::as_u64),
                action.get("gid").and_then(Value::as_u64),
            ) {
                // `61500:61500` says its ids already.
                (Some(u), Some(g)) if text(action, "strategy") == format!("{u}:{g}") => {
                    text(action, "strategy")
                }
                (Some(u), Some(g)) => format!("{} ({u}:{g})", text(action, "strategy")),
                (None, Some(g)) => format!(
                    "{} (uid from the agent's range, gid {g})",
                    text(action, "strategy")
                ),
                _ => text(action, "strategy"),
            };
            let mounts = action
                .get("mounts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let changing: u64 = mounts.iter().map(|m| num(m, "changing")).sum();
            let partial = mounts
                .iter()
                .any(|m| m.get("partial").and_then(Value::as_bool) == Some(true));
            let detail = format!(
                "{} mount(s), {}{} entries to re-own, backup {}, downtime ~{:.1} s",
                mounts.len(),
                if partial { "≥" } else { "" },
                changing,
                bytes(num(action, "backup_bytes")),
                num(action, "expected_downtime_ms") as f64 / 1000.0
            );
            ("migrate".into(), target, detail)
        }
        "exempt" => ("exempt".into(), "-".into(), text(action, "reason")),
        "refused" => (
            "refused".into(),
            "-".into(),
            action
                .get("reasons")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
        ),
        other => (other.to_string(), "-".into(), text(action, "reason")),
    }
}

fn render(plan: &Value, out: &mut dyn Write) {
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
    for host in plan
        .get("hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(host, "host");
        if let Some(error) = host.get("error").and_then(Value::as_str) {
            table.row(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "unplanned".into(),
                "-".into(),
                error.into(),
            ]);
            continue;
        }
        for c in host
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let action = c.get("action").cloned().unwrap_or(Value::Null);
            let (kind, target, mut detail) = describe_action(&action);
            match kind.as_str() {
                "migrate" => migrate += 1,
                "exempt" => exempt += 1,
                "refused" => refused += 1,
                _ => skipped += 1,
            }
            if let Some(user) = action.get("user_to_create").and_then(Value::as_str) {
                detail = format!("creates user {user}; {detail}");
            }
            let group: Vec<String> = c
                .get("group")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if !group.is_empty() {
                detail = format!("{detail}; moves with {}", group.join(", "));
            }
            table.row(vec![
                name.clone(),
                num(c, "order").to_string(),
                text(c, "name"),
                text(c, "class"),
                text(c, "current"),
                kind,
                target,
                detail,
            ]);
            for line in migration_notes(&action) {
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
    let policy = &plan["basis"]["policy"];
    match (text(policy, "path"), text(&plan["basis"], "policy_sha256")) {
        (_, sha) if sha.is_empty() => {}
        (path, _) if path.is_empty() => {
            let _ = writeln!(
                out,
                "policy: the default (image user, else a dedicated user)"
            );
        }
        (path, sha) => {
            let _ = writeln!(out, "policy: {path} (sha256 {sha})");
        }
    }
}

/// What the plan says about a migration beyond its decision, read with
/// the controller's own types; absent fields are empty.
#[derive(Debug, Default, Deserialize)]
struct MigrationNotes {
    #[serde(default)]
    mounts: Vec<MountPlan>,
    #[serde(default)]
    host_id_collisions: Vec<IdCollision>,
    #[serde(default)]
    instead_of: Option<String>,
    #[serde(default)]
    runtime_dirs: Vec<RuntimeDirPlan>,
    #[serde(default)]
    layer_loss_allowed: Vec<String>,
    #[serde(default)]
    engine_notes: Vec<String>,
}

/// Entries a remap leaves alone named under their path line; the rest counted.
const LEFT_ALONE_SHOWN: usize = 5;

/// The lines under a migrating container: each path whose ownership
/// changes (and what stays as it is), each target id someone on the host
/// has, the account chosen instead, each runtime directory.
pub fn migration_notes(action: &Value) -> Vec<String> {
    if action.get("kind").and_then(Value::as_str) != Some("migrate") {
        return Vec::new();
    }
    let notes: MigrationNotes = serde_json::from_value(action.clone()).unwrap_or_default();
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
        let plan = serde_json::json!({
            "version": 2,
            "basis": {"policy": {"path": "p.toml", "text": ""}, "policy_sha256": "ab12"},
            "hosts": [{"host": "h1", "address": "a", "error": null, "containers": [{
                "name": "db", "order": 1, "class": "database", "current": "root", "group": [],
                "action": {
                    "kind": "migrate", "strategy": "dedicated user svc-db", "uid": null, "gid": 2001,
                    "user_to_create": "svc-db", "backup_bytes": 4000, "expected_downtime_ms": 6000,
                    "mounts": [
                        {"source": "/srv/db", "destination": "/var/lib/db", "entries": 40, "changing": 12, "bytes": 4000, "partial": false,
                         "left_alone": ["dev/null (a device node: never handed to a service)"], "left_alone_count": 1},
                        {"source": "/srv/logs", "destination": "/logs", "entries": 100000, "changing": 100000, "bytes": 0, "partial": true}
                    ],
                    "host_id_collisions": [{"kind": "gid", "id": 999, "owner": "systemd-journal"}],
                    "runtime_dirs": [{"path": "/run/db", "now": {"uid": 999, "gid": 999, "mode": 493},
                                      "image": {"uid": 0, "gid": 0, "mode": 493}, "target": null, "why": "owned by uid 999"}],
                    "layer_loss_allowed": ["/etc/app.conf"],
                    "engine_notes": ["podman 4.3.1 (no systemd) runs no healthcheck: fleet-agent runs it while verify waits"]
                }
            }]}]
        });
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
