//! `fleetctl migrate`, `runs`, `rollback`, `prune` and `log`: start runs,
//! follow their events to the end, and say what happened with the exit code.

use std::io::{IsTerminal, Write};

use fleet_core::migration::{LeftAlone, downtime_text};
use fleet_proto::controller::v1 as pb;
use serde::Deserialize;
use serde_json::Value;

use crate::args::{ListFormat, MigrateArgs, RollbackArgs, RunsCommand};
use crate::client::Controller;
use crate::commands::follow::follow;
use crate::commands::plan::{describe_action, selection, text};
use crate::exit::{self, CliError};
use crate::render::Table;

pub(crate) fn parse(json: &str) -> Result<Value, CliError> {
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
    follow(controller, &id, 0, args.output, args.follow.duration(), out).await
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
pub(crate) fn event_line(event: &Value) -> String {
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

async fn get(controller: &mut Controller, id: &str) -> Result<Value, CliError> {
    let info = controller
        .client
        .get_run(pb::RunRef { run_id: id.into() })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    parse(&info.run_json)
}

pub(crate) fn render_summary(view: &Value, out: &mut dyn Write) {
    let run = &view["run"];
    let mut table = Table::new(&["HOST", "CONTAINER", "STATE", "RUNS AS", "DOWNTIME", "NOTE"]);
    for c in view["containers"].as_array().into_iter().flatten() {
        let target = c["target"]
            .as_array()
            .filter(|_| c["state"] == "migrated")
            .map(|t| format!("{}:{}", t[0], t[1]))
            .unwrap_or_else(|| "-".into());
        let notes: ContainerNotes = serde_json::from_value(c.clone()).unwrap_or_default();
        let downtime = downtime_text(notes.downtime_ms, notes.downtime_from_stop_ms)
            .unwrap_or_else(|| "-".into());
        let state = text(c, "state");
        let mut note = if state == "not-migrated" {
            describe_action(&c["plan"]["action"]).2
        } else {
            c["error"].as_str().unwrap_or("").to_string()
        };
        if !notes.left_alone.is_empty() {
            let left = format!("left alone: {}", notes.left_alone.summary());
            note = if note.is_empty() {
                left
            } else {
                format!("{note}; {left}")
            };
        }
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
    let stuck: Vec<String> = view["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "needs-reconcile")
        .map(|c| format!("{} on {}", text(&c["plan"], "name"), text(c, "host")))
        .collect();
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
    let terminal = !matches!(text(run, "phase").as_str(), "running" | "paused");
    if terminal && !stuck.is_empty() {
        // The run has ended; putting these back has not: say how to see it.
        let id = text(run, "id");
        let how = match run["finished_seq"].as_u64() {
            Some(seq) => format!("follow it with `fleetctl runs watch {id} --after {seq}`"),
            None => format!("`fleetctl runs show {id}` says when they are"),
        };
        let _ = writeln!(
            out,
            "{} container(s) still to be put back ({}): the controller keeps trying; {how}",
            stuck.len(),
            stuck.join(", ")
        );
    }
}

/// What the run records about a container beyond its state, read with
/// the controller's own types.
#[derive(Debug, Default, Deserialize)]
struct ContainerNotes {
    #[serde(default)]
    downtime_ms: Option<u64>,
    #[serde(default)]
    downtime_from_stop_ms: Option<u64>,
    #[serde(default)]
    left_alone: LeftAlone,
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
        RunsCommand::Watch {
            run,
            after,
            output,
            follow: flags,
        } => follow(controller, &run, after, output, flags.duration(), out).await,
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
    follow(controller, &id, 0, args.output, args.follow.duration(), out).await
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
    fn the_summary_shows_both_downtimes_what_was_left_alone_and_how_to_follow_what_is_stuck() {
        let view = serde_json::json!({
            "run": {"id": "r1", "phase": "halted", "created_unix_ms": 1000, "finished_unix_ms": 3000,
                    "failed_hosts": 1, "hosts": [{}, {}], "budget": 0, "finished_seq": 42,
                    "note": "1 container(s) could not be put back yet (db on h2): the controller keeps trying"},
            "containers": [
                {"host": "h1", "state": "migrated", "target": [999, 999], "error": null,
                 "downtime_ms": 5300, "downtime_from_stop_ms": 14800,
                 "left_alone": {"hard_links": ["/srv/a/x (not all of its names are in the tree)"]},
                 "plan": {"name": "web", "action": {"kind": "migrate"}}},
                {"host": "h2", "state": "needs-reconcile", "target": null, "error": "undo of the stop step failed",
                 "plan": {"name": "db", "action": {"kind": "migrate"}}}
            ]
        });
        let mut out = Vec::new();
        render_summary(&view, &mut out);
        let out = String::from_utf8(out).unwrap();
        let web = out.lines().find(|l| l.starts_with("h1")).unwrap();
        assert!(
            web.contains("5.3 s (14.8 s from the stop request)")
                && web.contains("left alone: 1 hard link(s) with names outside the tree (/srv/a/x"),
            "{out}"
        );
        assert_eq!(
            out.lines().last().unwrap(),
            "1 container(s) still to be put back (db on h2): the controller keeps trying; follow it with `fleetctl runs watch r1 --after 42`"
        );
    }

    #[test]
    fn each_phase_has_its_exit_code() {
        assert_eq!(phase_code("succeeded"), exit::OK);
        assert_eq!(phase_code("halted"), exit::HALTED);
        assert_eq!(phase_code("completed-with-failures"), exit::ROLLED_BACK);
        assert_eq!(phase_code("paused"), exit::PAUSED);
    }
}
