//! Who owns what under a mount's host path: a bounded, read-only walk that
//! never follows a symlink and never leaves the mount's filesystem.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_core::audit::{OwnerCount, OwnershipSummary, WalkBound};

/// Bounds of one walk.
#[derive(Debug, Clone, Copy)]
pub struct WalkBounds {
    pub max_entries: u64,
    pub max_time: Duration,
}

impl Default for WalkBounds {
    fn default() -> Self {
        WalkBounds {
            max_entries: 200_000,
            max_time: Duration::from_secs(2),
        }
    }
}

/// How many owners to list, most common first.
const TOP_OWNERS: usize = 5;

pub fn summarize(root: &Path, bounds: WalkBounds) -> OwnershipSummary {
    let started = Instant::now();
    let meta = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return OwnershipSummary {
                error: Some(format!("host path {} does not exist", root.display())),
                ..Default::default()
            };
        }
        Err(e) => {
            return OwnershipSummary {
                error: Some(format!("cannot stat host path {}: {e}", root.display())),
                ..Default::default()
            };
        }
    };
    let device = meta.dev();
    let mut owners: HashMap<(u32, u32), u64> = HashMap::new();
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut bound_hit = None;
    let mut count = |meta: &std::fs::Metadata, entries: &mut u64| {
        *owners.entry((meta.uid(), meta.gid())).or_default() += 1;
        *entries += 1;
        if meta.is_file() {
            bytes += meta.len();
        }
    };
    count(&meta, &mut entries);
    let mut pending: Vec<PathBuf> = Vec::new();
    if meta.is_dir() {
        pending.push(root.to_path_buf());
    }
    'walk: while let Some(dir) = pending.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            if entries >= bounds.max_entries {
                bound_hit = Some(WalkBound::Entries);
                break 'walk;
            }
            if entries.is_multiple_of(1024) && started.elapsed() >= bounds.max_time {
                bound_hit = Some(WalkBound::Time);
                break 'walk;
            }
            // symlink_metadata: the link itself, never its target.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            count(&meta, &mut entries);
            if meta.is_dir() && meta.dev() == device {
                pending.push(entry.path());
            }
        }
    }
    let mut top: Vec<OwnerCount> = owners
        .into_iter()
        .map(|((uid, gid), entries)| OwnerCount { uid, gid, entries })
        .collect();
    top.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.uid.cmp(&b.uid)));
    top.truncate(TOP_OWNERS);
    OwnershipSummary {
        top_owners: top,
        entries,
        bytes,
        bound_hit,
        error: None,
        skipped: false,
        root_changing: 0,
        left_alone: Vec::new(),
        left_alone_count: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_following_symlinks_and_reports_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(outside.path().join(format!("f{i}")), b"xx").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let s = summarize(dir.path(), WalkBounds::default());
        // root, sub, sub/a, escape (the link itself; nothing behind it)
        assert_eq!(s.entries, 4);
        assert_eq!(s.bytes, 5);
        assert_eq!(s.bound_hit, None);
        assert_eq!(s.top_owners[0].entries, 4);

        let bounded = summarize(
            dir.path(),
            WalkBounds {
                max_entries: 2,
                max_time: Duration::from_secs(5),
            },
        );
        assert_eq!(bounded.bound_hit, Some(WalkBound::Entries));
        assert_eq!(bounded.entries, 2);

        let big = tempfile::tempdir().unwrap();
        for i in 0..1500 {
            std::fs::write(big.path().join(format!("f{i}")), b"").unwrap();
        }
        let timed = summarize(
            big.path(),
            WalkBounds {
                max_entries: 1_000_000,
                max_time: Duration::ZERO,
            },
        );
        assert_eq!(timed.bound_hit, Some(WalkBound::Time));
        assert!(timed.entries < 1501, "stopped early: {}", timed.entries);

        let gone = summarize(&dir.path().join("nope"), WalkBounds::default());
        assert!(gone.error.unwrap().contains("does not exist"));
    }
}
