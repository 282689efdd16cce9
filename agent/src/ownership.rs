//! Who owns what under a mount's host path: a bounded, read-only walk that
//! never follows a symlink and never leaves the mount's filesystem.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
/// How many entries a remap would leave alone are named (all are counted).
const LEFT_ALONE_SHOWN: usize = 20;

/// What a remap of root's ids (uid 0 → target, gid 0 → target) would do
/// with the entries seen, by the remap's own rules: device nodes are never
/// handed over, a multiply-linked file only when every one of its names is
/// in the tree, another filesystem is not entered.
#[derive(Debug, Default)]
struct RootRemap {
    changing: u64,
    left_alone: Vec<String>,
    left_alone_count: u64,
    /// Root-owned multiply-linked files: first name, names seen, links.
    links: HashMap<(u64, u64), (String, u64, u64)>,
}

impl RootRemap {
    fn leave(&mut self, path: String, why: &str) {
        self.left_alone_count += 1;
        if self.left_alone.len() < LEFT_ALONE_SHOWN {
            self.left_alone.push(format!("{path} ({why})"));
        }
    }

    /// One name seen by the walk; `nested` says it is a directory of
    /// another filesystem (not entered).
    fn see(&mut self, meta: &std::fs::Metadata, path: String, nested: bool) {
        if nested {
            self.leave(path, "another filesystem mounted here: not entered");
            return;
        }
        if meta.uid() != 0 && meta.gid() != 0 {
            return;
        }
        let kind = meta.file_type();
        if kind.is_block_device() || kind.is_char_device() {
            self.leave(path, "a device node: never handed to a service");
        } else if !meta.is_dir() && meta.nlink() > 1 {
            let link =
                self.links
                    .entry((meta.dev(), meta.ino()))
                    .or_insert((path, 0, meta.nlink()));
            link.1 += 1;
        } else {
            self.changing += 1;
        }
    }

    /// Judges the hard links once every name the walk will see was seen;
    /// a walk stopped at its bound cannot tell, and counts none of them.
    fn finish(&mut self, complete: bool) {
        if !complete {
            return;
        }
        let mut links: Vec<(String, u64, u64)> =
            std::mem::take(&mut self.links).into_values().collect();
        links.sort();
        for (path, seen, nlink) in links {
            if seen >= nlink {
                self.changing += 1;
            } else {
                self.leave(
                    path,
                    &format!(
                        "a hard link with {} of its {nlink} names outside the tree: they could be host files",
                        nlink - seen
                    ),
                );
            }
        }
    }
}

/// `root`-relative, for the plan's per-path lines.
fn relative(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

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
    let mut remap = RootRemap::default();
    let mut count = |meta: &std::fs::Metadata, entries: &mut u64| {
        *owners.entry((meta.uid(), meta.gid())).or_default() += 1;
        *entries += 1;
        if meta.is_file() {
            bytes += meta.len();
        }
    };
    count(&meta, &mut entries);
    remap.see(&meta, ".".into(), false);
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
            // A mount point (a directory, or a file bind-mounted over one).
            let nested = meta.dev() != device;
            remap.see(&meta, relative(root, &entry.path()), nested);
            if meta.is_dir() && !nested {
                pending.push(entry.path());
            }
        }
    }
    remap.finish(bound_hit.is_none());
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
        root_changing: remap.changing,
        left_alone: remap.left_alone,
        left_alone_count: remap.left_alone_count,
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

    #[test]
    fn counts_what_a_remap_of_root_changes_and_names_what_it_leaves_alone() {
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), b"a").unwrap();
        // Owned by someone else: a remap of root's ids leaves it as it is,
        // and it is no news.
        std::fs::write(root.join("theirs"), b"t").unwrap();
        chown(root.join("theirs"), Some(1000), Some(1000)).unwrap();
        // gid 0 alone still changes.
        std::fs::write(root.join("group-root"), b"g").unwrap();
        chown(root.join("group-root"), Some(1000), Some(0)).unwrap();
        // Both names inside: changed once.
        std::fs::write(root.join("twice"), b"2").unwrap();
        std::fs::hard_link(root.join("twice"), root.join("sub/twice-again")).unwrap();
        // One name outside the tree: left alone.
        std::fs::write(outside.path().join("host-file"), b"h").unwrap();
        std::fs::hard_link(outside.path().join("host-file"), root.join("sub/linked")).unwrap();
        let made = std::process::Command::new("mknod")
            .arg(root.join("null"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(made.success(), "mknod (the tests run as root)");
        let s = summarize(root, WalkBounds::default());
        // root, sub, sub/a, theirs, group-root, twice, sub/twice-again,
        // sub/linked, null
        assert_eq!(s.entries, 9);
        // root, sub, sub/a, group-root, twice (once)
        assert_eq!(s.root_changing, 5, "{s:?}");
        assert_eq!(s.left_alone_count, 2, "{s:?}");
        let mut left = s.left_alone.clone();
        left.sort();
        assert_eq!(
            left,
            [
                "null (a device node: never handed to a service)",
                "sub/linked (a hard link with 1 of its 2 names outside the tree: they could be host files)",
            ]
        );
        // Stopped at its bound, the walk cannot judge hard links: it
        // counts none of them (its counts are "at least").
        let bounded = summarize(
            root,
            WalkBounds {
                max_entries: 8,
                max_time: Duration::from_secs(5),
            },
        );
        assert!(bounded.bound_hit.is_some());
        assert!(bounded.root_changing <= 4, "{bounded:?}");
        assert!(
            !bounded.left_alone.iter().any(|l| l.contains("hard link")),
            "{bounded:?}"
        );
    }
}
