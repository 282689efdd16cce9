//! The run listing (`fleet-agent runs`): every run journaled on this host,
//! where each of its steps stands, and whether it was pruned.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::journal::{RunJournal, list_runs};

/// A run's steps and whether it was pruned, for `fleet-agent runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// (step, state) in the order the steps began.
    pub steps: Vec<(String, String)>,
    /// When its checkpoints were released (RFC 3339), if they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<String>,
}

/// Every step of every run under `runs_dir`, by run, and which runs were
/// pruned. A journal that does not read is left out.
pub fn list(runs_dir: &Path) -> BTreeMap<String, RunSummary> {
    list_runs(runs_dir)
        .into_iter()
        .filter_map(|run| {
            let journal = RunJournal::open(runs_dir, &run, false).ok()?;
            let pruned = match journal.pruned() {
                Some((at, _)) => Some(rfc3339(at)),
                None => journal
                    .prune_begun()
                    .map(|at| format!("begun {} (interrupted)", rfc3339(at))),
            };
            let steps = journal
                .steps()
                .into_iter()
                .map(|(step, state)| {
                    // The state's name: its variant, without its records.
                    let name = format!("{state:?}")
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    (step, name)
                })
                .collect();
            Some((run, RunSummary { steps, pruned }))
        })
        .collect()
}

/// `unix_ms` as RFC 3339 in UTC, e.g. `2023-11-14T22:13:20.123Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_unix_ms_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
