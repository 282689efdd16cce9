//! `fleetctl migrate`, `runs`, `rollback`, `prune` and `log`: start runs,
//! follow their events to the end, and say what happened with the exit code.

use std::io::{IsTerminal, Write};

use fleet_core::run::{RunKind, RunSummary, RunView};
use fleet_proto::controller::v1 as pb;

use crate::args::{ListFormat, MigrateArgs, RollbackArgs, RunsCommand};
use crate::client::Controller;
use crate::commands::follow::follow;
use crate::commands::plan::selection;
use crate::commands::run_render::{parse, print_json, render_summary, render_waves};
use crate::exit::{self, CliError};
use crate::render::Table;

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
            ListFormat::Json => print_json(&view, out),
            ListFormat::Table => {
                render_waves(&view, out);
                let _ = writeln!(out, "dry run: nothing was changed");
            }
        }
        return Ok(exit::OK);
    }
    confirm("start this migration run", args.yes)?;
    let view = start(controller, request).await?;
    let id = view.run.id.clone();
    if args.detach {
        match args.output {
            ListFormat::Json => print_json(&view, out),
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
) -> Result<RunView, CliError> {
    let info = controller
        .client
        .start_run(request)
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    parse("run", &info.run_json)
}

async fn get(controller: &mut Controller, id: &str) -> Result<RunView, CliError> {
    let info = controller
        .client
        .get_run(pb::RunRef { run_id: id.into() })
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    parse("run", &info.run_json)
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
            let runs: Vec<RunSummary> = runs
                .iter()
                .map(|r| parse("run summary", r))
                .collect::<Result<_, _>>()?;
            match output {
                ListFormat::Json => print_json(&runs, out),
                ListFormat::Table => {
                    let mut table =
                        Table::new(&["RUN", "KIND", "PHASE", "BY", "HOSTS", "FAILED", "PRUNED"]);
                    for r in &runs {
                        let kind = match &r.kind {
                            RunKind::Rollback { of } => format!("rollback of {of}"),
                            RunKind::Migrate => "migrate".to_string(),
                        };
                        table.row(vec![
                            r.id.clone(),
                            kind,
                            r.phase.name(),
                            r.created_by.clone(),
                            r.hosts.to_string(),
                            r.failed_hosts.to_string(),
                            if r.pruned { "yes".into() } else { "no".into() },
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
                ListFormat::Json => print_json(&view, out),
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
    let view: RunView = parse("run", &info.run_json)?;
    let id = view.run.id;
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
            let entries: Vec<LogEntry<'_>> = entries
                .iter()
                .map(|e| LogEntry {
                    unix_ms: e.unix_ms,
                    who: &e.who,
                    role: &e.role,
                    action: &e.action,
                    target: &e.target,
                    result: &e.result,
                })
                .collect();
            print_json(&entries, out);
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

/// One audit-log entry as `fleetctl log -o json` prints it.
#[derive(serde::Serialize)]
struct LogEntry<'a> {
    unix_ms: u64,
    who: &'a str,
    role: &'a str,
    action: &'a str,
    target: &'a str,
    result: &'a str,
}
