//! The agent's own durable journal: every step it performs for a run, its
//! intent written and synced before it acts, its outcome after. From it:
//! a repeated call returns the recorded result instead of acting twice, a
//! run can be undone in reverse, and `fleet-agent rollback` works with no
//! controller. One JSON-lines file per run (`runs/<run>/journal.jsonl`), so
//! a person can read it when it matters most.

use fleet_core::now_ms;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use fleet_core::step::StepKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} '{value}': use 1-64 letters, digits, '.', '-' or '_'")]
    InvalidId { what: &'static str, value: String },
    #[error("no journal for run '{0}' on this host")]
    NoSuchRun(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// About to act; written and synced before anything changes.
    Intent {
        kind: StepKind,
        request: serde_json::Value,
    },
    /// Acted. `outcome` carries what the undo needs.
    Done {
        outcome: serde_json::Value,
    },
    /// Did not act, or put back what it had started (the error says).
    Failed {
        error: String,
    },
    UndoIntent,
    Undone {
        note: String,
    },
    UndoFailed {
        error: String,
    },
    /// About to release the run's checkpoints (old containers, backups);
    /// written and synced before anything is removed, so an interrupted
    /// prune still keeps the run from being rolled back. Not a step.
    PruneIntent,
    /// The run's checkpoints are released; `note` is the prune's outcome
    /// (JSON). Not a step: replay ignores it, `pruned()` reports it.
    Pruned {
        note: String,
    },
}

/// The step id the prune records are written under (a label only: replay
/// recognises them by their event, so no step of the run is confused).
pub const PRUNE_STEP: &str = "prune";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub unix_ms: u64,
    pub step: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Where a step stands, replayed from its records.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Intent written, no outcome: the agent stopped mid-step.
    InFlight {
        kind: StepKind,
        request: serde_json::Value,
    },
    Done {
        kind: StepKind,
        request: serde_json::Value,
        outcome: serde_json::Value,
    },
    Failed {
        kind: StepKind,
        request: serde_json::Value,
        error: String,
    },
    /// Undo begun, not finished.
    Undoing {
        kind: StepKind,
        request: serde_json::Value,
        outcome: Option<serde_json::Value>,
    },
    Undone {
        kind: StepKind,
    },
}

impl StepState {
    pub fn kind(&self) -> StepKind {
        match self {
            StepState::InFlight { kind, .. }
            | StepState::Done { kind, .. }
            | StepState::Failed { kind, .. }
            | StepState::Undoing { kind, .. }
            | StepState::Undone { kind } => *kind,
        }
    }
}

pub fn validate_id(what: &'static str, value: &str) -> Result<(), JournalError> {
    if fleet_core::is_valid_name(value) {
        Ok(())
    } else {
        Err(JournalError::InvalidId {
            what,
            value: value.to_string(),
        })
    }
}

/// One run's journal, open for appending.
#[derive(Debug)]
pub struct RunJournal {
    run: String,
    dir: PathBuf,
    path: PathBuf,
    file: File,
    records: Vec<Record>,
}

impl RunJournal {
    /// Opens (creating if `create`) the journal of `run` under `runs_dir`.
    pub fn open(runs_dir: &Path, run: &str, create: bool) -> Result<Self, JournalError> {
        validate_id("run id", run)?;
        let dir = runs_dir.join(run);
        let path = dir.join("journal.jsonl");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, source }
        };
        if !path.exists() {
            if !create {
                return Err(JournalError::NoSuchRun(run.to_string()));
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let file = File::create(&path).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            // The new name must survive a crash too.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&dir))?;
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io(parent))?;
            }
        }
        truncate_torn_tail(&path).map_err(io(&path))?;
        let records = read_records(&path).map_err(io(&path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(RunJournal {
            run: run.to_string(),
            dir,
            path,
            file,
            records,
        })
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// The run's own directory, for step artefacts (ownership manifests).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, step: &str, event: Event) -> Result<(), JournalError> {
        let record = Record {
            seq: self.records.last().map_or(1, |r| r.seq + 1),
            unix_ms: now_ms(),
            step: step.to_string(),
            event,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records.push(record);
        Ok(())
    }

    /// Every step's state, in the order the steps began.
    pub fn steps(&self) -> Vec<(String, StepState)> {
        let mut order: Vec<String> = Vec::new();
        let mut states: BTreeMap<String, StepState> = BTreeMap::new();
        for record in &self.records {
            if matches!(record.event, Event::PruneIntent | Event::Pruned { .. }) {
                continue;
            }
            let previous = states.get(&record.step).cloned();
            let next = match (&record.event, previous) {
                (Event::Intent { kind, request }, _) => {
                    if !order.contains(&record.step) {
                        order.push(record.step.clone());
                    }
                    StepState::InFlight {
                        kind: *kind,
                        request: request.clone(),
                    }
                }
                (Event::Done { outcome }, Some(StepState::InFlight { kind, request })) => {
                    StepState::Done {
                        kind,
                        request,
                        outcome: outcome.clone(),
                    }
                }
                (Event::Failed { error }, Some(StepState::InFlight { kind, request })) => {
                    StepState::Failed {
                        kind,
                        request,
                        error: error.clone(),
                    }
                }
                (Event::UndoIntent, Some(state)) => match state {
                    StepState::Done {
                        kind,
                        request,
                        outcome,
                    } => StepState::Undoing {
                        kind,
                        request,
                        outcome: Some(outcome),
                    },
                    StepState::InFlight { kind, request }
                    | StepState::Failed { kind, request, .. } => StepState::Undoing {
                        kind,
                        request,
                        outcome: None,
                    },
                    other => other,
                },
                (Event::Undone { .. }, Some(state)) => StepState::Undone { kind: state.kind() },
                // An undo that failed leaves the step undoing; undoing it
                // again is safe (every undo is idempotent).
                (Event::UndoFailed { .. }, Some(state)) => state,
                (_, Some(state)) => state,
                (_, None) => continue,
            };
            states.insert(record.step.clone(), next);
        }
        order
            .into_iter()
            .filter_map(|step| states.remove(&step).map(|s| (step, s)))
            .collect()
    }

    pub fn state(&self, step: &str) -> Option<StepState> {
        self.steps()
            .into_iter()
            .find(|(s, _)| s == step)
            .map(|(_, state)| state)
    }

    /// When the run was pruned on this host (unix ms), and the note
    /// (the prune's outcome) recorded then.
    pub fn pruned(&self) -> Option<(u64, String)> {
        self.records.iter().find_map(|r| match &r.event {
            Event::Pruned { note } => Some((r.unix_ms, note.clone())),
            _ => None,
        })
    }

    /// When a prune of the run began (unix ms), finished or not: from then
    /// on its checkpoints may be gone.
    pub fn prune_begun(&self) -> Option<u64> {
        self.records.iter().find_map(|r| match &r.event {
            Event::PruneIntent | Event::Pruned { .. } => Some(r.unix_ms),
            _ => None,
        })
    }
}

/// Every run with a journal under `runs_dir`.
pub fn list_runs(runs_dir: &Path) -> Vec<String> {
    let mut runs: Vec<String> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("journal.jsonl").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    runs.sort();
    runs
}

/// Cuts a torn last line (a crash mid-write) of an append-only JSON-lines
/// file so the next record starts on a line of its own. Nothing acted on a
/// record that was not fully synced. (The journal and the ownership
/// manifests both rely on this.)
pub(crate) fn truncate_torn_tail(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()
}

/// Reads records. The torn tail was cut already, so a line that does not
/// parse is damage in the middle: refuse rather than silently lose a
/// step (an unreadable intent would be invisible to a rollback).
fn read_records(path: &Path) -> std::io::Result<Vec<Record>> {
    let reader = BufReader::new(File::open(path)?);
    let mut records = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let record = serde_json::from_str::<Record>(&line).map_err(|e| {
            std::io::Error::other(format!(
                "line {} is damaged ({e}); repair or move the journal aside",
                n + 1
            ))
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_states_survives_reopen_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = RunJournal::open(dir.path(), "run-1", true).unwrap();
            let request = serde_json::json!({"container": "pg"});
            j.append(
                "user",
                Event::Intent {
                    kind: StepKind::User,
                    request: request.clone(),
                },
            )
            .unwrap();
            j.append(
                "user",
                Event::Done {
                    outcome: serde_json::json!({"created": true}),
                },
            )
            .unwrap();
            j.append(
                "ownership",
                Event::Intent {
                    kind: StepKind::Ownership,
                    request,
                },
            )
            .unwrap();
        }
        // A crash mid-write leaves half a line.
        let path = dir.path().join("run-1/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"unix_ms\":1,\"st").unwrap();
        let mut j = RunJournal::open(dir.path(), "run-1", false).unwrap();
        assert!(
            std::fs::read(&path).unwrap().ends_with(b"\n"),
            "torn tail cut"
        );
        let steps = j.steps();
        assert_eq!(steps.len(), 2);
        assert!(matches!(
            &steps[0].1,
            StepState::Done {
                kind: StepKind::User,
                ..
            }
        ));
        assert!(matches!(
            &steps[1].1,
            StepState::InFlight {
                kind: StepKind::Ownership,
                ..
            }
        ));
        j.append("ownership", Event::UndoIntent).unwrap();
        assert!(matches!(
            j.state("ownership"),
            Some(StepState::Undoing { outcome: None, .. })
        ));
        j.append(
            "ownership",
            Event::Undone {
                note: String::new(),
            },
        )
        .unwrap();
        assert_eq!(
            j.state("ownership"),
            Some(StepState::Undone {
                kind: StepKind::Ownership
            })
        );
        assert_eq!(list_runs(dir.path()), ["run-1"]);
        drop(j);
        let j = RunJournal::open(dir.path(), "run-1", false).unwrap();
        assert_eq!(
            j.records().len(),
            5,
            "every record after the torn one reads back"
        );
        assert!(matches!(
            RunJournal::open(dir.path(), "nope", false),
            Err(JournalError::NoSuchRun(_))
        ));
        assert!(RunJournal::open(dir.path(), "../x", true).is_err());
    }

    #[test]
    fn journals_written_before_the_kinds_were_core_s_still_read() {
        // Each kind as the agent's own kind type wrote it, byte for byte.
        for (text, kind) in [
            ("backup", StepKind::Backup),
            ("user", StepKind::User),
            ("stop", StepKind::Stop),
            ("ownership", StepKind::Ownership),
            ("recreate", StepKind::Recreate),
            ("verify", StepKind::Verify),
            ("restore", StepKind::Restore),
        ] {
            let line = format!(
                r#"{{"seq":1,"unix_ms":2,"step":"s","event":"intent","kind":"{text}","request":{{}}}}"#
            );
            let record: Record = serde_json::from_str(&line).unwrap();
            assert_eq!(
                record.event,
                Event::Intent {
                    kind,
                    request: serde_json::json!({}),
                }
            );
            assert_eq!(serde_json::to_string(&record).unwrap(), line);
            assert_eq!(kind.as_str(), text);
        }
    }

    #[test]
    fn prune_records_are_not_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = RunJournal::open(dir.path(), "run-p", true).unwrap();
        // A step may even be called "prune": the records are told apart by event.
        for step in ["backup", PRUNE_STEP] {
            j.append(
                step,
                Event::Intent {
                    kind: StepKind::Backup,
                    request: serde_json::json!({}),
                },
            )
            .unwrap();
            j.append(
                step,
                Event::Done {
                    outcome: serde_json::json!({}),
                },
            )
            .unwrap();
        }
        assert_eq!(j.pruned(), None);
        assert_eq!(j.prune_begun(), None);
        j.append(PRUNE_STEP, Event::PruneIntent).unwrap();
        let begun = j.prune_begun().unwrap();
        assert_eq!(j.pruned(), None, "begun, not finished");
        j.append(
            PRUNE_STEP,
            Event::Pruned {
                note: "{\"removed\":1}".into(),
            },
        )
        .unwrap();
        drop(j);
        let j = RunJournal::open(dir.path(), "run-p", false).unwrap();
        let steps = j.steps();
        assert_eq!(steps.len(), 2);
        assert!(
            steps
                .iter()
                .all(|(_, s)| matches!(s, StepState::Done { .. })),
            "{steps:?}"
        );
        let (at, note) = j.pruned().unwrap();
        assert!(at >= begun);
        assert_eq!(note, "{\"removed\":1}");
        assert_eq!(j.prune_begun(), Some(begun));
    }
}
