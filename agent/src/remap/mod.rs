//! Ownership remap of a container's mounts: old ids → new ids (remap, not
//! flatten), safe against the container racing the walk, recorded in a
//! manifest before each change, exactly undoable.
//!
//! Rules (each has a test): only the container's own mounts, never a
//! sensitive host path (`guard`); never follow a symlink at any depth, never
//! cross a filesystem, never open a device node, FIFO or socket (`walk`);
//! never chown a device node; refuse a hard-linked file whose other names
//! are outside the tree (`links`); put back the setuid/setgid bits and file
//! capabilities chown clears; remap ACL entries naming a remapped id; clear
//! errors for read-only and root-squashed trees before anything changes;
//! count each entry once, across the passes of a walk and across a resume.
//!
//! The forward walk (`forward`) records every change before making it, and
//! records as *kept* every entry it leaves that already belongs to a target
//! id (or has an ACL entry naming one); a finished walk ends its manifest
//! with an end line. So, once it has finished, a target-owned entry the
//! manifest does not know was made or replaced by the workload since.
//!
//! The undo (`undo`) is one walk with the same rules: it restores every
//! recorded change, leaves kept entries alone, and gives every other entry
//! owned by a target id the prior ids (`IdMapping::inverse`; ACL entries,
//! access and default, likewise; setuid/setgid bits and capabilities kept),
//! recording those reverse changes first in a reverse manifest next to the
//! forward one (`manifest::reverse_path`), so an undo killed half-way and
//! run again finishes and counts each entry once. It does not reverse-map
//! when the forward walk never finished (the workload never ran with the
//! new ids) nor for a manifest written before kept records existed (it
//! cannot tell a new entry from one that belonged to a target id before):
//! `UndoReport::reverse_skipped` says so. A mount skipped because its root
//! already had the target owner (`skip_if_root_owned_by`) was not re-owned
//! by the run: it has no manifest, and nothing to reverse.

mod forward;
pub mod guard;
pub mod index;
mod ledger;
mod links;
pub mod manifest;
pub mod meta;
mod sys;
mod undo;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, StatVfsMountFlags, fstatvfs};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// A count and the first names: how the reports list paths.
pub use fleet_core::migration::Listed;
pub use forward::remap;
pub use undo::{UndoOptions, undo, undo_with};
use walk::Entry;

/// Old id → new id. Ids not named are left alone, unless `everything` is
/// set (an explicit choice for trees that must be wholly owned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    #[serde(default)]
    pub uids: BTreeMap<u32, u32>,
    #[serde(default)]
    pub gids: BTreeMap<u32, u32>,
    #[serde(default)]
    pub everything: Option<(u32, u32)>,
}

impl IdMapping {
    pub fn map_uid(&self, uid: u32) -> Option<u32> {
        self.everything
            .map(|(u, _)| u)
            .or_else(|| self.uids.get(&uid).copied())
            .filter(|new| *new != uid)
    }

    pub fn map_gid(&self, gid: u32) -> Option<u32> {
        self.everything
            .map(|(_, g)| g)
            .or_else(|| self.gids.get(&gid).copied())
            .filter(|new| *new != gid)
    }

    /// The ids entries are handed to.
    pub fn target_uids(&self) -> BTreeSet<u32> {
        match self.everything {
            Some((u, _)) => [u].into(),
            None => self
                .uids
                .iter()
                .filter(|(old, new)| old != new)
                .map(|(_, new)| *new)
                .collect(),
        }
    }

    pub fn target_gids(&self) -> BTreeSet<u32> {
        match self.everything {
            Some((_, g)) => [g].into(),
            None => self
                .gids
                .iter()
                .filter(|(old, new)| old != new)
                .map(|(_, new)| *new)
                .collect(),
        }
    }

    /// The mapping the undo gives entries the remap did not record: each
    /// target id back to its prior id. When several old ids map to one
    /// target, the lowest of them (the controller only ever maps from 0, so
    /// that is target → 0). An `everything` mapping has no inverse: its
    /// targets go back to the recorded original owner of the mount root
    /// (`root_owner`; none known, none mapped), uid and gid independently.
    pub fn inverse(&self, root_owner: Option<(u32, u32)>) -> IdMapping {
        let invert = |map: &BTreeMap<u32, u32>| {
            let mut inverse = BTreeMap::new();
            // Ascending old ids: the first seen for a target is the lowest.
            for (old, new) in map {
                if old != new {
                    inverse.entry(*new).or_insert(*old);
                }
            }
            inverse
        };
        match (self.everything, root_owner) {
            (Some((u, g)), Some((root_uid, root_gid))) => IdMapping {
                uids: [(u, root_uid)]
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .collect(),
                gids: [(g, root_gid)]
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .collect(),
                everything: None,
            },
            (Some(_), None) => IdMapping::default(),
            (None, _) => IdMapping {
                uids: invert(&self.uids),
                gids: invert(&self.gids),
                everything: None,
            },
        }
    }

    /// The new owner, if anything changes.
    pub fn target(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        match (self.map_uid(uid), self.map_gid(gid)) {
            (None, None) => None,
            (u, g) => Some((u.unwrap_or(uid), g.unwrap_or(gid))),
        }
    }

    /// A remap hands files *to* a service identity: never to root, and it
    /// must name something.
    pub fn validate(&self) -> Result<(), RemapError> {
        let targets = self
            .uids
            .values()
            .chain(self.gids.values())
            .copied()
            .chain(self.everything.iter().flat_map(|(u, g)| [*u, *g]));
        let mut any = false;
        for target in targets {
            any = true;
            if target == 0 {
                return Err(RemapError::InvalidMapping(
                    "a remap never hands files to uid or gid 0".into(),
                ));
            }
        }
        if !any {
            return Err(RemapError::InvalidMapping(
                "the mapping names no ids".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RemapOptions {
    pub mapping: IdMapping,
    /// Allow a hard-linked file whose other names are outside the tree,
    /// when the kernel has `fs.protected_hardlinks = 1`.
    pub allow_protected_hardlinks: bool,
    /// Skip the whole tree when its root already has this owner (like
    /// Kubernetes' `fsGroupChangePolicy: OnRootMismatch`).
    pub skip_if_root_owned_by: Option<(u32, u32)>,
    /// Changes recorded and synced per commit.
    pub batch: usize,
    /// Walk threads; 0 means one per core.
    pub threads: usize,
    /// The (device, inode) the root had when the step was decided: a root
    /// that is now another directory is refused.
    pub expect_root: Option<(u64, u64)>,
}

/// What a walk has seen, changed and read so far.
pub use fleet_core::step::Progress;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapReport {
    pub root: String,
    /// Entries seen, each once (an inode with several names counts once),
    /// across passes and across a resume.
    pub entries: u64,
    /// Entries changed by this run, each once, including those an
    /// interrupted walk changed before it was resumed.
    pub changed: u64,
    /// Entries left as they were that already belonged to a target id (or
    /// had an ACL entry naming one), recorded so the undo leaves them.
    #[serde(default)]
    pub kept: u64,
    pub bytes: u64,
    /// Entries found in the manifest of an interrupted walk.
    pub resumed: u64,
    pub skipped_root_already_owned: bool,
    /// Each list below is its true count and its first `Listed::MAX`
    /// names, sorted (a plain array of every name in older journals).
    #[serde(default)]
    pub other_filesystems: Listed,
    #[serde(default)]
    pub raced: Listed,
    #[serde(default)]
    pub refused_hardlinks: Listed,
    #[serde(default)]
    pub devices_left: Listed,
    /// Names that disappeared while the walk ran.
    #[serde(default)]
    pub vanished: Listed,
    pub millis: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    pub root: String,
    pub restored: u64,
    /// Entries of the manifest no longer in the tree (deleted since). Each
    /// list is its true count and its first `Listed::MAX` names.
    #[serde(default)]
    pub missing: Listed,
    /// Recorded inode numbers now held by other files (the recorded file
    /// was deleted and its number reused): left untouched.
    #[serde(default)]
    pub impostors: Listed,
    /// Entries the forward manifest did not know (made or replaced by the
    /// workload after the remap) that were owned by a target id or had an
    /// ACL entry naming one, given the prior ids: the total over every undo
    /// of this manifest (the reverse manifest keeps it), each entry once.
    #[serde(default)]
    pub reverse_mapped: u64,
    /// Why there was no reverse walk, when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_skipped: Option<String>,
    /// The reverse manifest, when the undo reverse-mapped anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_manifest: Option<String>,
    /// Target-owned multiply-linked files with a name outside the tree:
    /// left owned by the target id.
    #[serde(default)]
    pub refused_hardlinks: Listed,
    /// Target-owned device nodes the manifest did not know: never chowned.
    #[serde(default)]
    pub devices_left: Listed,
    /// Names that disappeared while the walk ran.
    #[serde(default)]
    pub vanished: Listed,
    /// Directories that changed while they were walked, walked again (an
    /// undo that cannot settle them fails with `KeptRacing`).
    #[serde(default)]
    pub raced: Listed,
    pub millis: u64,
}

/// The target ids of a mapping, to tell an entry that already belongs to
/// one.
struct Targets {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl Targets {
    fn of(mapping: &IdMapping) -> Self {
        Targets {
            uids: mapping.target_uids(),
            gids: mapping.target_gids(),
        }
    }

    fn owns(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    fn named_in(&self, acl: &Option<Vec<u8>>) -> bool {
        acl.as_ref().is_some_and(|v| {
            meta::acl_names(v, &|u| self.uids.contains(&u), &|g| self.gids.contains(&g))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error("{0}")]
    InvalidMapping(String),
    #[error("cannot open {root}: {errno}")]
    Open { root: String, errno: Errno },
    #[error("{root} is on a read-only filesystem: nothing was changed")]
    ReadOnly { root: String },
    #[error(
        "root may not change ownership under {root} ({errno}): an NFS export with root_squash, or a filesystem that refuses chown; nothing was changed"
    )]
    NotPermitted { root: String, errno: Errno },
    #[error("{what} under {root}: {errno}")]
    Io {
        what: String,
        root: String,
        errno: Errno,
    },
    #[error("ownership manifest {path}: {source}")]
    Manifest {
        path: String,
        source: std::io::Error,
    },
    #[error("the manifest {path} belongs to another tree or mapping; refusing to mix them")]
    ManifestMismatch { path: String },
    #[error(
        "{root} has a symbolic link in its path: fleet never follows one (a container could have planted it); point the mount at the real directory"
    )]
    SymlinkInPath { root: String },
    #[error("{root} is a device node: its ownership is never changed")]
    DeviceRoot { root: String },
    #[error(
        "{root} is no longer the directory the step was decided on (it was replaced); nothing was changed"
    )]
    RootReplaced { root: String },
    #[error(
        "{count} entries under {root} kept changing while they were walked (a racing container?): {first}"
    )]
    KeptRacing {
        root: String,
        count: usize,
        first: String,
    },
}

pub(crate) fn display(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

pub(crate) fn open_root(root: &Path) -> Result<OwnedFd, RemapError> {
    walk::open_mount_root(root).map_err(|errno| match errno {
        Errno::LOOP | Errno::XDEV => RemapError::SymlinkInPath {
            root: root.display().to_string(),
        },
        errno => RemapError::Open {
            root: root.display().to_string(),
            errno,
        },
    })
}

/// Refuses, before anything changes, a tree that cannot be changed.
pub(crate) fn preflight(
    root_fd: &OwnedFd,
    root: &Path,
    stat: &rustix::fs::Stat,
) -> Result<(), RemapError> {
    let root_text = root.display().to_string();
    let kind = FileType::from_raw_mode(stat.st_mode);
    if matches!(kind, FileType::BlockDevice | FileType::CharacterDevice) {
        return Err(RemapError::DeviceRoot { root: root_text });
    }
    if let Ok(vfs) = fstatvfs(root_fd)
        && vfs.f_flag.contains(StatVfsMountFlags::RDONLY)
    {
        return Err(RemapError::ReadOnly { root: root_text });
    }
    if kind != FileType::Directory {
        // A chown of a file, even to its own owner, clears its setuid bits
        // and capabilities: no probe before they are recorded.
        return Ok(());
    }
    // A no-op chown of the directory: root_squash and friends refuse it,
    // and then nothing has been touched yet.
    match meta::chown(root_fd, stat.st_uid, stat.st_gid) {
        Ok(()) => Ok(()),
        Err(Errno::ROFS) => Err(RemapError::ReadOnly { root: root_text }),
        Err(errno) => Err(RemapError::NotPermitted {
            root: root_text,
            errno,
        }),
    }
}

/// An entry's birth time: read with its status by the walk, or not yet.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Birth {
    Known(Option<i128>),
    Unknown,
}

impl Birth {
    pub(crate) fn of(self, fd: &OwnedFd) -> Option<i128> {
        match self {
            Birth::Known(btime) => btime,
            Birth::Unknown => walk::birth(fd),
        }
    }
}

/// Whether `entry` is the inode a record (`mode`, `btime`) describes, not
/// another that reused its number since: same type, same birth time where
/// known.
pub(crate) fn same_inode(entry: &Entry, birth: Birth, mode: u32, btime: Option<i128>) -> bool {
    const TYPE_MASK: u32 = 0o170000;
    if entry.stat.st_mode & TYPE_MASK != mode & TYPE_MASK {
        return false;
    }
    match btime {
        Some(recorded) => birth.of(&entry.fd) == Some(recorded),
        None => true,
    }
}
