//! How a run goes: its waves (canary, batch sizes), its failure budget,
//! what a failed host makes it do; each parsed once, where the request
//! enters the controller, and kept typed (and as the operator wrote it) in
//! the stored run.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Roll back the failed host's migrated containers and go on.
    RollbackHost,
    /// Start no new work; what is migrated stays migrated.
    Halt,
    /// Roll back everything the run did, on every host.
    RollbackRun,
}

impl OnFailure {
    /// Every choice with the words an operator types and what it does
    /// (fleetctl's `--on-failure` help lists them).
    pub const ALL: [(OnFailure, &'static str, &'static str); 3] = [
        (
            OnFailure::RollbackHost,
            "rollback-host",
            "Roll back the failed host's migrated containers and go on",
        ),
        (
            OnFailure::Halt,
            "halt",
            "Start no new work; what is migrated stays migrated",
        ),
        (
            OnFailure::RollbackRun,
            "rollback-run",
            "Roll back everything the run did",
        ),
    ];

    /// `""` is the default, rollback-host.
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(OnFailure::RollbackHost);
        }
        Self::ALL
            .iter()
            .find(|(_, name, _)| *name == text)
            .map(|(choice, _, _)| *choice)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(choice, _, _)| *choice == self)
            .map_or("rollback-host", |(_, name, _)| name)
    }
}

/// An option of a run that does not read, with what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "invalid batch size '{0}': use a number of hosts (5) or a percentage (20%), at least 1"
    )]
    BatchSize(String),
    #[error(
        "invalid --max-failures '{0}': use a number of hosts (0, 2) or a percentage of the run's hosts (10%)"
    )]
    MaxFailures(String),
}

/// One batch of a run's waves: a count of hosts or a share of the run's
/// hosts, at least 1. Kept as the operator wrote it (`5`, `20%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum BatchSize {
    Hosts(u32),
    Percent(u32),
}

impl BatchSize {
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let text = text.trim();
        let bad = || OptionError::BatchSize(text.to_string());
        let size = match text.strip_suffix('%') {
            Some(p) => BatchSize::Percent(p.trim().parse().map_err(|_| bad())?),
            None => BatchSize::Hosts(text.parse().map_err(|_| bad())?),
        };
        match size {
            BatchSize::Hosts(0) | BatchSize::Percent(0) => Err(bad()),
            BatchSize::Percent(p) if p > 100 => Err(bad()),
            size => Ok(size),
        }
    }

    /// Hosts in this batch when the run has `total`.
    pub fn hosts(self, total: usize) -> usize {
        match self {
            BatchSize::Hosts(n) => n as usize,
            BatchSize::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Hosts(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl From<BatchSize> for String {
    fn from(size: BatchSize) -> String {
        size.to_string()
    }
}

impl TryFrom<String> for BatchSize {
    type Error = OptionError;
    fn try_from(text: String) -> Result<Self, OptionError> {
        BatchSize::parse(&text)
    }
}

/// `--max-failures`: failed hosts a run allows (one more halts it), a
/// count or a share of its hosts. Kept as the operator wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum FailureBudget {
    /// None by default: the first failed host halts the run.
    #[default]
    Unset,
    Hosts(u32),
    Percent(u32),
}

impl FailureBudget {
    /// `""` is unset (no failure allowed).
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let text = text.trim();
        let bad = || OptionError::MaxFailures(text.to_string());
        if text.is_empty() {
            return Ok(FailureBudget::Unset);
        }
        match text.strip_suffix('%') {
            Some(p) => match p.trim().parse() {
                Ok(p) if p <= 100 => Ok(FailureBudget::Percent(p)),
                _ => Err(bad()),
            },
            None => text.parse().map(FailureBudget::Hosts).map_err(|_| bad()),
        }
    }

    /// Failed hosts allowed in a run of `hosts`.
    pub fn allowed(self, hosts: usize) -> u32 {
        match self {
            FailureBudget::Unset => 0,
            FailureBudget::Hosts(n) => n,
            FailureBudget::Percent(p) => (hosts as u64 * p as u64 / 100) as u32,
        }
    }
}

impl std::fmt::Display for FailureBudget {
    /// As the operator gave it; unset shows as `0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureBudget::Unset => f.write_str("0"),
            FailureBudget::Hosts(n) => write!(f, "{n}"),
            FailureBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl From<FailureBudget> for String {
    fn from(budget: FailureBudget) -> String {
        match budget {
            // Runs stored before the type kept "" for it.
            FailureBudget::Unset => String::new(),
            other => other.to_string(),
        }
    }
}

impl TryFrom<String> for FailureBudget {
    type Error = OptionError;
    fn try_from(text: String) -> Result<Self, OptionError> {
        FailureBudget::parse(&text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub canary: u32,
    pub batches: Vec<BatchSize>,
    pub max_parallel: u32,
    pub max_failures: FailureBudget,
    pub on_failure: OnFailure,
    pub pause_after_canary: bool,
    pub agent_deadline_secs: u32,
}
