//! The host's record of every id fleet ever gave an account: uids, gids
//! and subordinate ranges. A rollback deletes the dedicated account it
//! made, but files the service wrote may still carry its ids somewhere (a
//! backup, a volume left alone, a copy); handing the same uid to the next
//! service would give it those files. So an id fleet allocated once is
//! never allocated again, even after its account is gone.
//!
//! The record lives beside the passwd file by default (it outlives a
//! reinstall of the agent, whose state directory a purge removes, and every
//! agent on the host shares it), as JSON lines appended and synced under
//! the accounts lock before the account is created: a crash between the
//! two burns an id, never reuses one.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Allocation {
    /// An account or group created with these ids.
    Ids {
        name: String,
        uid: u32,
        gid: u32,
        unix_ms: u64,
    },
    /// Subordinate uid and gid ranges `start..=end` given to an account.
    Subordinate {
        name: String,
        start: u32,
        end: u32,
        unix_ms: u64,
    },
}

/// What the record holds, for the allocators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocated {
    /// Every uid and gid ever given (one id space: fleet gives a user and
    /// its group the same number where it can).
    pub ids: BTreeSet<u32>,
    /// Every subordinate range ever given, inclusive.
    pub ranges: Vec<(u32, u32)>,
}

impl Allocated {
    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id)
    }
}

/// The record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IdRecordError {
    path: String,
    source: std::io::Error,
}

fn io(path: &Path, source: std::io::Error) -> IdRecordError {
    IdRecordError {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the record; a missing file is an empty record. A torn last line
/// (a crash mid-append) is ignored: its account was never created, since
/// the append is synced before. A damaged line elsewhere is refused: an
/// unreadable entry would let its id be handed out again.
pub fn read(path: &Path) -> Result<Allocated, IdRecordError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Allocated::default()),
        Err(e) => return Err(io(path, e)),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut out = Allocated::default();
    for (n, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: Allocation = serde_json::from_str(line).map_err(|e| {
            io(
                path,
                std::io::Error::other(format!(
                    "line {} is damaged ({e}): repair it by hand; fleet will not allocate ids while it cannot tell which were given",
                    n + 1
                )),
            )
        })?;
        match entry {
            Allocation::Ids { uid, gid, .. } => {
                out.ids.insert(uid);
                out.ids.insert(gid);
            }
            Allocation::Subordinate { start, end, .. } => out.ranges.push((start, end)),
        }
    }
    Ok(out)
}

/// Appends `entry` and syncs it before returning; only then may the
/// account be created.
pub fn append(path: &Path, entry: &Allocation) -> Result<(), IdRecordError> {
    crate::journal::truncate_torn_tail(path).map_err(|e| io(path, e))?;
    let fresh = !path.exists();
    let mut line = serde_json::to_vec(entry).map_err(|e| io(path, std::io::Error::other(e)))?;
    line.push(b'\n');
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io(path, e))?
    };
    file.write_all(&line).map_err(|e| io(path, e))?;
    file.sync_data().map_err(|e| io(path, e))?;
    if fresh && let Some(dir) = path.parent() {
        // The file's own name must survive a crash too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        assert_eq!(read(&path).unwrap(), Allocated::default());
        append(
            &path,
            &Allocation::Ids {
                name: "svc-a".into(),
                uid: 61000,
                gid: 61001,
                unix_ms: 1,
            },
        )
        .unwrap();
        append(
            &path,
            &Allocation::Subordinate {
                name: "svc-a".into(),
                start: 1_000_000,
                end: 1_065_535,
                unix_ms: 2,
            },
        )
        .unwrap();
        // A crash mid-append leaves a torn line: ignored, then cut.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"kind":"ids","name":"svc-b","uid":6"#)
            .unwrap();
        let seen = read(&path).unwrap();
        assert!(seen.contains(61000) && seen.contains(61001) && !seen.contains(6));
        assert_eq!(seen.ranges, vec![(1_000_000, 1_065_535)]);
        append(
            &path,
            &Allocation::Ids {
                name: "svc-c".into(),
                uid: 61002,
                gid: 61002,
                unix_ms: 3,
            },
        )
        .unwrap();
        let seen = read(&path).unwrap();
        assert_eq!(
            seen.ids.iter().copied().collect::<Vec<_>>(),
            [61000, 61001, 61002]
        );
        // Damage in the middle is refused, not skipped.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1 is damaged"), "{err}");
    }
}
