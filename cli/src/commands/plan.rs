//! `fleetctl plan`: what each selected container becomes, in what order.

use std::io::Write;

use fleet_proto::controller::v1 as pb;
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
                (Some(u), Some(g)) => format!("{} ({u}:{g})", text(action, "strategy")),
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
}
