//! Reading and showing the controller's run documents (a run's view, its
//! events, the exit code of its phase), with the shared typed model: what
//! `migrate`, `runs` and the follow of a run all print.

use std::io::Write;

use fleet_core::migration::downtime_text;
use fleet_core::run::{ContainerState, RunEvent, RunPhase, RunView, document_name};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::commands::plan::describe_action;
use crate::exit::{self, CliError};
use crate::render::Table;

/// A document the controller sent, as its type; `what` names it in the
/// error (a fleetctl older than its controller is the usual cause).
pub(crate) fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, CliError> {
    serde_json::from_str(json).map_err(|e| {
        CliError::error(format!(
            "the controller sent a {what} fleetctl cannot read (is fleetctl older than the controller?): {e}"
        ))
    })
}

/// `-o json`: the document, one line.
pub(crate) fn print_json<T: Serialize>(value: &T, out: &mut dyn Write) {
    match serde_json::to_string(value) {
        Ok(text) => {
            let _ = writeln!(out, "{text}");
        }
        Err(e) => {
            let _ = writeln!(out, "{{\"error\": \"cannot write the document: {e}\"}}");
        }
    }
}

/// The exit code a run's phase deserves.
pub fn phase_code(phase: RunPhase) -> u8 {
    match phase {
        RunPhase::Succeeded => exit::OK,
        RunPhase::CompletedWithFailures | RunPhase::RolledBack => exit::ROLLED_BACK,
        RunPhase::Halted | RunPhase::Aborted => exit::HALTED,
        RunPhase::Paused => exit::PAUSED,
        RunPhase::Running => exit::ERROR,
    }
}

pub(crate) fn render_waves(view: &RunView, out: &mut dyn Write) {
    let run = &view.run;
    let _ = writeln!(out, "run {}", run.id);
    for (i, wave) in run.waves.iter().enumerate() {
        let canary = if i == 0 && run.options.canary > 0 {
            " (canary)"
        } else {
            ""
        };
        let _ = writeln!(out, "  wave {}{canary}: {}", i + 1, wave.join(", "));
    }
    let mut table = Table::new(&["HOST", "#", "CONTAINER", "ACTION", "TARGET", "DETAIL"]);
    for c in &view.containers {
        let (kind, target, detail) = describe_action(&c.plan.action);
        table.row(vec![
            c.host.clone(),
            c.plan.order.to_string(),
            c.plan.name.clone(),
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
pub(crate) fn event_line(event: &RunEvent) -> String {
    let secs = event.unix_ms / 1000;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    );
    let mut place = String::new();
    if let Some(host) = &event.host {
        place.push_str(&format!("[{host}] "));
    }
    if let Some(container) = &event.container {
        place.push_str(container);
        place.push(' ');
    }
    if let Some(step) = event.step {
        place.push_str(&format!("{}: ", step.as_str()));
    }
    format!(
        "{clock} {place}{} {}",
        document_name(&event.what),
        event.message
    )
}

pub(crate) fn render_summary(view: &RunView, out: &mut dyn Write) {
    let run = &view.run;
    let mut table = Table::new(&["HOST", "CONTAINER", "STATE", "RUNS AS", "DOWNTIME", "NOTE"]);
    for c in &view.containers {
        let target = match (c.state, c.target) {
            (ContainerState::Migrated, Some(ids)) => ids.to_string(),
            _ => "-".into(),
        };
        let downtime =
            downtime_text(c.downtime_ms, c.downtime_from_stop_ms).unwrap_or_else(|| "-".into());
        let mut note = if c.state == ContainerState::NotMigrated {
            describe_action(&c.plan.action).2
        } else {
            c.error.clone().unwrap_or_default()
        };
        if !c.left_alone.is_empty() {
            let left = format!("left alone: {}", c.left_alone.summary());
            note = if note.is_empty() {
                left
            } else {
                format!("{note}; {left}")
            };
        }
        table.row(vec![
            c.host.clone(),
            c.plan.name.clone(),
            document_name(&c.state),
            target,
            downtime,
            note,
        ]);
    }
    let _ = writeln!(out);
    if !table.is_empty() {
        let _ = table.write_text(out);
    }
    let elapsed = match run.finished_unix_ms {
        Some(end) => format!(
            " in {:.1} s",
            end.saturating_sub(run.created_unix_ms) as f64 / 1000.0
        ),
        None => String::new(),
    };
    let stuck: Vec<String> = view
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::NeedsReconcile)
        .map(|c| format!("{} on {}", c.plan.name, c.host))
        .collect();
    let _ = writeln!(
        out,
        "\nrun {} {}{elapsed}: {} of {} host(s) failed, failure budget {}{}",
        run.id,
        run.phase.name(),
        run.failed_hosts,
        run.hosts.len(),
        run.budget,
        run.note
            .as_ref()
            .map_or(String::new(), |n| format!("\n{n}")),
    );
    if run.phase.is_terminal() && !stuck.is_empty() {
        // The run has ended; putting these back has not: say how to see it.
        let id = &run.id;
        let how = match run.finished_seq {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_both_downtimes_what_was_left_alone_and_how_to_follow_what_is_stuck() {
        let plan = |name: &str| {
            serde_json::json!({
                "name": name, "id": "c0ffee", "image": "i", "fingerprint": "f", "current": "root",
                "class": "stateless", "order": 1, "group": [],
                "action": {"kind": "skip", "reason": "x"}
            })
        };
        let view = serde_json::json!({
            "run": {"id": "r1", "kind": {"kind": "migrate"}, "created_by": "op", "phase": "halted",
                    "created_unix_ms": 1000, "finished_unix_ms": 3000,
                    "options": {"canary": 0, "batches": [], "max_parallel": 1, "max_failures": "0",
                                "on_failure": "halt", "pause_after_canary": false, "agent_deadline_secs": 0},
                    "control": null, "waves": [], "waves_done": 0, "stopping": null, "pruned": null,
                    "overhead": {"steps": 0, "total_us": 0, "max_us": 0}, "rolled_back_by": [],
                    "failed_hosts": 1, "budget": 0, "finished_seq": 42,
                    "hosts": [
                        {"name": "h1", "address": "a", "state": "done", "error": null, "containers": []},
                        {"name": "h2", "address": "b", "state": "failed", "error": null, "containers": []}
                    ],
                    "note": "1 container(s) could not be put back yet (db on h2): the controller keeps trying"},
            "containers": [
                {"key": "h1/web", "host": "h1", "state": "migrated", "target": {"uid": 999, "gid": 999}, "error": null,
                 "steps": [], "started_unix_ms": null, "finished_unix_ms": null,
                 "downtime_ms": 5300, "downtime_from_stop_ms": 14800,
                 "left_alone": {"hard_links": ["/srv/a/x (not all of its names are in the tree)"]},
                 "plan": plan("web")},
                {"key": "h2/db", "host": "h2", "state": "needs-reconcile", "target": null,
                 "steps": [], "started_unix_ms": null, "finished_unix_ms": null,
                 "error": "undo of the stop step failed", "plan": plan("db")}
            ]
        });
        let view: RunView = serde_json::from_value(view).unwrap();
        let mut out = Vec::new();
        render_summary(&view, &mut out);
        let out = String::from_utf8(out).unwrap();
        let web = out.lines().find(|l| l.starts_with("h1")).unwrap();
        assert!(
            web.contains("999:999")
                && web.contains("5.3 s (14.8 s from the stop request)")
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
        assert_eq!(phase_code(RunPhase::Succeeded), exit::OK);
        assert_eq!(phase_code(RunPhase::Halted), exit::HALTED);
        assert_eq!(
            phase_code(RunPhase::CompletedWithFailures),
            exit::ROLLED_BACK
        );
        assert_eq!(phase_code(RunPhase::Paused), exit::PAUSED);
    }
}
