//! `fleetctl migrate`, `runs`, `rollback`, `prune` and `log`: start runs,
//! follow their events to the end, and say what happened with the exit code.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use fleet_proto::controller::v1 as pb;
use serde_json::Value;

use crate::args::{ListFormat, MigrateArgs, RollbackArgs, RunsCommand};
use crate::client::Controller;
use crate::commands::plan::{bytes, describe_action, selection, text};
use crate::exit::{self, CliError};
use crate::render::Table;

fn parse(json: &str) -> Result<Value, CliError> {
    serde_json::from_str(json).map_err(|e| {
        CliError::error(format!(
            "the controller sent a document fleetctl cannot read: {e}"
        ))
    })
}

/// The exit code a run's phase deserves.
pub fn phase_code(phase: &str) -> u8 {
    match phase {
        "succeeded" => exit::OK,
        "completed-with-failures" | "rolled-back" => exit::ROLLED_BACK,
        "halted" | "aborted" => exit::HALTED,
        "paused" => exit::PAUSED,
        _ => exit::ERROR,
    }
}

fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(format!(
            "{question}: add --yes to confirm (no terminal to ask on)"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::error("not confirmed; nothing changed"))
    }
}

pub async fn migrate(
    controller: &mut Controller,
    args: MigrateArgs,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let plan_json = match &args.plan {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read plan {}: {e}", path.display())))?,
        None => String::new(),
    };
    let request = pb::StartRunRequest {
        selection: Some(selection(&args.scope)?),
        plan_json,
        options: Some(pb::RunOptions {
            canary: args.canary,
            batches: args.batch.clone(),
            max_parallel: args.max_parallel,
            max_failures: args.max_failures.clone(),
            on_failure: args.on_failure.as_str().into(),
            pause_after_canary: args.pause_after_canary,
            agent_deadline_secs: args.agent_deadline.unwrap_or(0),
        }),
        dry_run: args.dry_run,
    };
    if args.dry_run {
        let view = start(controller, request).await?;
        match args.output {
            ListFormat::Json => {
                let _ = writeln!(out, "{view}");
            }
            ListFormat::Table => {
                render_waves(&view, out);
                let _ = writeln!(out, "dry run: nothing was changed");
            }
        }
        return Ok(exit::OK);
    }
    confirm("start this migration run", args.yes)?;
    let view = start(controller, request).await?;
    let id = text(&view["run"], "id");
    if args.detach {
        match args.output {
            ListFormat::Json => {
                let _ = writeln!(out, "{view}");
            }
            ListFormat::Table => {
                let _ = writeln!(
                    out,
                    "run {id} started; follow it with `fleetctl runs watch {id}`"
                );
            }
        }
        return Ok(exit::OK);
    }
    if args.output == ListFormat::Table {
        render_waves(&view, out);
    }
    follow(controller, &id, 0, args.output, out).await
}

async fn start(
    controller: &mut Controller,
    request: pb::StartRunRequest,
) -> Result<Value, CliError> {
    let info = controller
        .client
        .start_run(request)
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    parse(&info.run_json)
}

fn render_waves(view: &Value, out: &mut dyn Write) {
    let run = &view["run"];
    let id = text(run, "id");
    let _ = writeln!(out, "run {id}");
    for (i, wave) in run["waves"].as_array().into_iter().flatten().enumerate() {
        let hosts: Vec<&str> = wave
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let canary = if i == 0 && run["options"]["canary"].as_u64().unwrap_or(0) > 0 {
            " (canary)"
        } else {
            ""
        };
        let _ = writeln!(out, "  wave {}{canary}: {}", i + 1, hosts.join(", "));
    }
    let mut table = Table::new(&["HOST", "#", "CONTAINER", "ACTION", "TARGET", "DETAIL"]);
    for c in view["containers"].as_array().into_iter().flatten() {
        let (kind, target, detail) = describe_action(&c["plan"]["action"]);
        table.row(vec![
            text(c, "host"),
            c["plan"]["order"].as_u64().unwrap_or(0).to_string(),
            text(&c["plan"], "name"),
            kind,
            target,
            detail,
        ]);
    }
    if !table.is_empty() {
        let _ = table.write_text(out);
    }
}

/// One line for an event, as `watch` prints it.
fn event_line(event: &Value) -> String {
    let secs = event["unix_ms"].as_u64().unwrap_or(0) / 1000;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    );
    let mut place = String::new();
    if let Some(host) = event["host"].as_str() {
        place.push_str(&format!("[{host}] "));
    }
    if let Some(container) = event["container"].as_str() {
        place.push_str(container);
        place.push(' ');
    }
    if let Some(step) = event["step"].as_str() {
        place.push_str(&format!("{step}: "));
    }
    format!(
        "{clock} {place}{} {}",
        text(event, "what"),
        text(event, "message")
    )
}

/// Per (host, container): entries to re-own and bytes to back up, from the plan.
fn planned_totals(view: &Value) -> std::collections::HashMap<(String, String), (u64, u64)> {
    view["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let action = &c["plan"]["action"];
            let entries = action["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| m["changing"].as_u64().unwrap_or(0))
                .sum();
            let key = (text(c, "host"), text(&c["plan"], "name"));
            (key, (entries, action["backup_bytes"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// `[h1] db ownership ▕██████░░░░▏ 61% 120,000 entries, 48.2 MB`.
fn progress_line(
    event: &Value,
    totals: &std::collections::HashMap<(String, String), (u64, u64)>,
) -> String {
    let (entries, changed, done_bytes) = (
        event["entries"].as_u64().unwrap_or(0),
        event["changed"].as_u64().unwrap_or(0),
        event["bytes"].as_u64().unwrap_or(0),
    );
    let key = (text(event, "host"), text(event, "container"));
    let (total_entries, total_bytes) = totals.get(&key).copied().unwrap_or_default();
    let (done, total) = match event["step"].as_str() {
        Some("backup") => (done_bytes, total_bytes),
        _ => (changed, total_entries),
    };
    let done = done.min(total);
    let bar = match (
        (done * 20).checked_div(total),
        (done * 100).checked_div(total),
    ) {
        (Some(filled), Some(percent)) => format!(
            " ▕{}{}▏ {percent:>3}%",
            "█".repeat(filled as usize),
            "░".repeat(20 - filled as usize)
        ),
        _ => String::new(),
    };
    format!(
        "[{}] {} {}{bar} {entries} entries, {changed} changed, {}",
        key.0,
        key.1,
        text(event, "step"),
        bytes(done_bytes)
    )
}

/// Follows a run's events to its end (reconnecting if the controller
/// restarts), prints its summary, and returns the exit code of its phase.
async fn follow(
    controller: &mut Controller,
    id: &str,
    after: u64,
    output: ListFormat,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut last = after;
    let mut failures = 0;
    let progress = std::io::stderr().is_terminal() && output == ListFormat::Table;
    let totals = if progress {
        planned_totals(&get(controller, id).await?)
    } else {
        Default::default()
    };
    loop {
        let stream = controller
            .client
            .watch_run(pb::WatchRunRequest {
                run_id: id.into(),
                after_seq: last,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if failures < 60 && std::error::Error::source(&status).is_some() => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(controller.explain(status)),
        };
        let mut ended = false;
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    failures = 0;
                    let value: Value =
                        serde_json::from_str(&event.event_json).unwrap_or(Value::Null);
                    if event.seq == 0 {
                        if progress {
                            eprint!("\r\x1b[2K{}", progress_line(&value, &totals));
                        }
                        continue;
                    }
                    last = last.max(event.seq);
                    if progress {
                        eprint!("\r\x1b[2K");
                    }
                    if output == ListFormat::Table {
                        let _ = writeln!(out, "{}", event_line(&value));
                    }
                    if matches!(text(&value, "what").as_str(), "run-finished" | "paused") {
                        ended = true;
                    }
                }
                Ok(None) => break,
                Err(_) if failures < 60 => {
                    failures += 1;
                    break;
                }
                Err(status) => return Err(controller.explain(status)),
            }
        }
        let view = get(controller, id).await?;
        let phase = text(&view["run"], "phase");
        if ended || phase != "running" {
            match output {
                ListFormat::Json => {
                    let _ = writeln!(out, "{view}");
                }
                ListFormat::Table => render_summary(&view, out),
            }
            return Ok(phase_code(&phase));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get(controller: &mut Controller, id: &str) -> Result<Value, CliError> {
    let info = controller
        .client
        .get_run(pb::RunRef { run_id: id.into() })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    parse(&info.run_json)
}

fn render_summary(view: &Value, out: &mut dyn Write) {
    let run = &view["run"];
    let mut table = Table::new(&["HOST", "CONTAINER", "STATE", "RUNS AS", "DOWNTIME", "NOTE"]);
    for c in view["containers"].as_array().into_iter().flatten() {
        let target = c["target"]
            .as_array()
            .filter(|_| c["state"] == "migrated")
            .map(|t| format!("{}:{}", t[0], t[1]))
            .unwrap_or_else(|| "-".into());
        let downtime = c["downtime_ms"]
            .as_u64()
            .map_or("-".into(), |d| format!("{:.1} s", d as f64 / 1000.0));
        let state = text(c, "state");
        let note = if state == "not-migrated" {
            describe_action(&c["plan"]["action"]).2
        } else {
            c["error"].as_str().unwrap_or("").to_string()
        };
        table.row(vec![
            text(c, "host"),
            text(&c["plan"], "name"),
            state,
            target,
            downtime,
            note,
        ]);
    }
    let _ = writeln!(out);
    if !table.is_empty() {
        let _ = table.write_text(out);
    }
    let elapsed = match (
        run["created_unix_ms"].as_u64(),
        run["finished_unix_ms"].as_u64(),
    ) {
        (Some(a), Some(b)) => format!(" in {:.1} s", b.saturating_sub(a) as f64 / 1000.0),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "\nrun {} {}{elapsed}: {} of {} host(s) failed, failure budget {}{}",
        text(run, "id"),
        text(run, "phase"),
        run["failed_hosts"].as_u64().unwrap_or(0),
        run["hosts"].as_array().map_or(0, Vec::len),
        run["budget"].as_u64().unwrap_or(0),
        run["note"]
            .as_str()
            .map_or(String::new(), |n| format!("\n{n}")),
    );
}

pub async fn runs(
    controller: &mut Controller,
    command: RunsCommand,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    match command {
        RunsCommand::List { limit, output } => {
            let runs = controller
                .client
                .list_runs(pb::ListRunsRequest { limit })
                .await
                .map_err(|s| controller.explain(s))?
                .into_inner()
                .runs_json;
            let runs: Vec<Value> = runs.iter().map(|r| parse(r)).collect::<Result<_, _>>()?;
            match output {
                ListFormat::Json => {
                    let _ = writeln!(out, "{}", Value::Array(runs));
                }
                ListFormat::Table => {
                    let mut table =
                        Table::new(&["RUN", "KIND", "PHASE", "BY", "HOSTS", "FAILED", "PRUNED"]);
                    for r in &runs {
                        let kind = match r["kind"]["kind"].as_str() {
                            Some("rollback") => format!("rollback of {}", text(&r["kind"], "of")),
                            other => other.unwrap_or("").to_string(),
                        };
                        table.row(vec![
                            text(r, "id"),
                            kind,
                            text(r, "phase"),
                            text(r, "created_by"),
                            r["hosts"].to_string(),
                            r["failed_hosts"].to_string(),
                            if r["pruned"].as_bool() == Some(true) {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ]);
                    }
                    if table.is_empty() {
                        let _ = writeln!(out, "no runs yet; start one with `fleetctl migrate`");
                    } else {
                        let _ = table.write_text(out);
                    }
                }
            }
            Ok(exit::OK)
        }
        RunsCommand::Show { run, output } => {
            let view = get(controller, &run).await?;
            match output {
                ListFormat::Json => {
                    let _ = writeln!(out, "{view}");
                }
                ListFormat::Table => {
                    render_waves(&view, out);
                    render_summary(&view, out);
                }
            }
            Ok(exit::OK)
        }
        RunsCommand::Watch { run, after, output } => {
            follow(controller, &run, after, output, out).await
        }
        RunsCommand::Pause { run } => control(controller, &run, "pause", out).await,
        RunsCommand::Resume { run } => control(controller, &run, "resume", out).await,
        RunsCommand::Abort { run } => control(controller, &run, "abort", out).await,
    }
}

async fn control(
    controller: &mut Controller,
    run: &str,
    what: &str,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let request = pb::RunRef { run_id: run.into() };
    let result = match what {
        "pause" => controller.client.pause_run(request).await,
        "resume" => controller.client.resume_run(request).await,
        _ => controller.client.abort_run(request).await,
    };
    result.map_err(|s| controller.explain(s))?;
    let message = match what {
        "pause" => "pauses at the next container boundary",
        "resume" => "resumed",
        _ => {
            "stops at the next container boundary; migrated containers stay (roll them back with `fleetctl rollback RUN`)"
        }
    };
    let _ = writeln!(out, "run {run}: {message}");
    Ok(exit::OK)
}

pub async fn rollback(
    controller: &mut Controller,
    args: RollbackArgs,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    confirm(&format!("roll back run {}", args.run), args.yes)?;
    let info = controller
        .client
        .rollback_run(pb::RollbackRunRequest {
            run_id: args.run.clone(),
            hosts: args.hosts,
            containers: args.containers,
            max_parallel: args.max_parallel,
        })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    let view = parse(&info.run_json)?;
    let id = text(&view["run"], "id");
    if args.detach {
        let _ = writeln!(
            out,
            "rollback run {id} started; follow it with `fleetctl runs watch {id}`"
        );
        return Ok(exit::OK);
    }
    follow(controller, &id, 0, args.output, out).await
}

pub async fn prune(
    controller: &mut Controller,
    run: &str,
    yes: bool,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    confirm(
        &format!(
            "release the checkpoints of run {run} (its old containers and backups are removed; it can no longer be rolled back)"
        ),
        yes,
    )?;
    controller
        .client
        .prune_run(pb::RunRef { run_id: run.into() })
        .await
        .map_err(|s| controller.explain(s))?;
    let _ = writeln!(
        out,
        "run {run}: checkpoints released (old containers and backups removed)"
    );
    Ok(exit::OK)
}

pub async fn log(
    controller: &mut Controller,
    limit: u32,
    output: ListFormat,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let entries = controller
        .client
        .audit_log(pb::AuditLogRequest { limit })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner()
        .entries;
    match output {
        ListFormat::Json => {
            let entries: Vec<Value> = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "unix_ms": e.unix_ms, "who": e.who, "role": e.role,
                        "action": e.action, "target": e.target, "result": e.result,
                    })
                })
                .collect();
            let _ = writeln!(out, "{}", Value::Array(entries));
        }
        ListFormat::Table => {
            let mut table =
                Table::new(&["WHEN (UTC)", "WHO", "ROLE", "ACTION", "TARGET", "RESULT"]);
            for e in entries {
                let when = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(e.unix_ms) * 1_000_000,
                )
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_default();
                table.row(vec![when, e.who, e.role, e.action, e.target, e.result]);
            }
            let _ = table.write_text(out);
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars_measure_against_the_plan() {
        let totals = [(("h1".to_string(), "db".to_string()), (1000, 2000))].into();
        let event = serde_json::json!({
            "host": "h1", "container": "db", "step": "ownership",
            "entries": 700, "changed": 500, "bytes": 0
        });
        let line = progress_line(&event, &totals);
        assert!(line.contains("██████████░░░░░░░░░░▏  50%"), "{line}");
        let backup = serde_json::json!({
            "host": "h1", "container": "db", "step": "backup", "entries": 3, "changed": 0, "bytes": 2000
        });
        assert!(progress_line(&backup, &totals).contains("100%"));
        let unknown = serde_json::json!({"host": "h9", "container": "x", "step": "ownership"});
        assert!(!progress_line(&unknown, &totals).contains('%'));
        assert_eq!(phase_code("halted"), exit::HALTED);
        assert_eq!(phase_code("completed-with-failures"), exit::ROLLED_BACK);
    }
}
