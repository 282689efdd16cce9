//! Who owns what under a mount's host path: a bounded, read-only walk that
//! never follows a symlink and never leaves the mount's filesystem. It
//! walks by descriptor (each directory opened relative to its parent with
//! `O_NOFOLLOW`, checked to be the very directory just listed), so a root
//! container that swaps a queued directory for a symlink to `/` cannot lead
//! it into the host.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_core::audit::{OwnerCount, OwnershipSummary, WalkBound};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, fstat, openat, statat};
use rustix::io::Errno;

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
pub const LEFT_ALONE_SHOWN: usize = 20;

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
    /// another filesystem (not entered). The path is made only when needed.
    fn see(&mut self, stat: &Stat, path: impl FnOnce() -> String, nested: bool) {
        if nested {
            self.leave(path(), "another filesystem mounted here: not entered");
            return;
        }
        if stat.st_uid != 0 && stat.st_gid != 0 {
            return;
        }
        let kind = FileType::from_raw_mode(stat.st_mode);
        if matches!(kind, FileType::BlockDevice | FileType::CharacterDevice) {
            self.leave(path(), "a device node: never handed to a service");
        } else if kind != FileType::Directory && stat.st_nlink > 1 {
            let link = self
                .links
                .entry((stat.st_dev, stat.st_ino))
                .or_insert_with(|| (path(), 0, stat.st_nlink));
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

/// A directory queued for listing: its descriptor (opened without
/// following a symlink, verified against what was listed), and its path
/// relative to the root.
struct Queued {
    fd: OwnedFd,
    path: Vec<u8>,
}

/// `dir/name` relative to the root, for the plan's per-path lines; control
/// characters a container put in a name are escaped.
fn child_path(dir: &[u8], name: &[u8]) -> String {
    let mut joined = dir.to_vec();
    if !joined.is_empty() {
        joined.push(b'/');
    }
    joined.extend_from_slice(name);
    fleet_core::text::printable(&String::from_utf8_lossy(&joined))
}

/// Opens `name` in `parent` as a directory, only if it is still the very
/// directory `seen` (a container may have swapped it for a link since).
fn open_subdir(parent: &OwnedFd, name: &std::ffi::CStr, seen: &Stat) -> Option<OwnedFd> {
    let fd = openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let now = fstat(&fd).ok()?;
    ((now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino)).then_some(fd)
}

fn unusable(root: &Path, errno: Errno) -> OwnershipSummary {
    let error = match errno {
        Errno::NOENT => format!("host path {} does not exist", root.display()),
        Errno::LOOP | Errno::XDEV => format!(
            "host path {} has a symbolic link in it: fleet never follows one",
            root.display()
        ),
        e => format!("cannot open host path {}: {e}", root.display()),
    };
    OwnershipSummary {
        error: Some(error),
        ..Default::default()
    }
}

pub fn summarize(root: &Path, bounds: WalkBounds) -> OwnershipSummary {
    let started = Instant::now();
    let opened = crate::remap::walk::open_mount_root(root).and_then(|fd| Ok((fstat(&fd)?, fd)));
    let (stat, root_fd) = match opened {
        Ok(found) => found,
        Err(errno) => return unusable(root, errno),
    };
    let device = stat.st_dev;
    let mut owners: HashMap<(u32, u32), u64> = HashMap::new();
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut bound_hit = None;
    let mut remap = RootRemap::default();
    let mut count = |stat: &Stat, entries: &mut u64| {
        *owners.entry((stat.st_uid, stat.st_gid)).or_default() += 1;
        *entries += 1;
        if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
            bytes += stat.st_size as u64;
        }
    };
    count(&stat, &mut entries);
    remap.see(&stat, || ".".into(), false);
    let mut pending: Vec<Queued> = Vec::new();
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        && let Some(fd) = open_subdir(&root_fd, c".", &stat)
    {
        pending.push(Queued {
            fd,
            path: Vec::new(),
        });
    }
    'walk: while let Some(dir) = pending.pop() {
        let Ok(listing) = Dir::read_from(&dir.fd) else {
            continue;
        };
        for entry in listing.flatten() {
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if entries >= bounds.max_entries {
                bound_hit = Some(WalkBound::Entries);
                break 'walk;
            }
            if entries.is_multiple_of(1024) && started.elapsed() >= bounds.max_time {
                bound_hit = Some(WalkBound::Time);
                break 'walk;
            }
            // The name itself, never what a symlink points at.
            let Ok(stat) = statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            count(&stat, &mut entries);
            // A mount point (a directory, or a file bind-mounted over one).
            let nested = stat.st_dev != device;
            let name = name.to_bytes();
            remap.see(&stat, || child_path(&dir.path, name), nested);
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                && !nested
                && let Ok(cname) = std::ffi::CString::new(name)
                && let Some(fd) = open_subdir(&dir.fd, &cname, &stat)
            {
                let mut path = dir.path.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                pending.push(Queued { fd, path });
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

    /// A root container swapping a directory the walk has queued for a
    /// symlink to a host directory cannot make the walk list the host's.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_walk_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        for i in 0..2000 {
            let path = outside.path().join(format!("host-{i}"));
            std::fs::write(&path, b"").unwrap();
            std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
        }
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("sub")).unwrap();
        for i in 0..50 {
            std::fs::write(root.join(format!("sub/f{i}")), b"").unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (root, target, stop) = (root.clone(), outside.path().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::rename(root.join("sub"), root.join("real"));
                    let _ = std::os::unix::fs::symlink(&target, root.join("sub"));
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    let _ = std::fs::remove_file(root.join("sub"));
                    let _ = std::fs::rename(root.join("real"), root.join("sub"));
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    swaps += 1;
                }
                swaps
            })
        };
        for _ in 0..300 {
            let s = summarize(&root, WalkBounds::default());
            assert!(
                s.top_owners.iter().all(|o| o.uid != 4242),
                "the walk listed a host directory: {s:?}"
            );
            // At most the tree seen twice (under both of the names the
            // racer gives it), never anything of the host's.
            assert!(s.entries <= 1 + 2 * 51, "{s:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(racer.join().unwrap() > 10, "the race ran");
    }
}
