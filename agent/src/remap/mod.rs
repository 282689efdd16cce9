//! Ownership remap of a container's mounts: old ids → new ids (remap, not
//! flatten), safe against the container racing the walk, recorded in a
//! manifest before each change, exactly undoable.
//!
//! Rules (each has a test): only the container's own mounts, never a
//! sensitive host path (`guard`); never follow a symlink at any depth, never
//! cross a filesystem, never open a device node, FIFO or socket (`walk`);
//! never chown a device node; refuse a hard-linked file whose other names
//! are outside the tree; put back the setuid/setgid bits and file
//! capabilities chown clears; remap ACL entries naming a remapped id; clear
//! errors for read-only and root-squashed trees before anything changes.

pub mod guard;
pub mod manifest;
pub mod meta;
mod sys;
pub mod walk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustix::fs::{FileType, StatVfsMountFlags, fstat, fstatvfs};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use manifest::{Change, Header, ManifestWriter};
use walk::{Entry, Skipped};

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub entries: u64,
    pub changed: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapReport {
    pub root: String,
    pub entries: u64,
    pub changed: u64,
    pub bytes: u64,
    /// Entries found in the manifest of an interrupted walk.
    pub resumed: u64,
    pub skipped_root_already_owned: bool,
    pub other_filesystems: Vec<String>,
    pub raced: Vec<String>,
    pub refused_hardlinks: Vec<String>,
    pub devices_left: Vec<String>,
    /// Names that disappeared while the walk ran.
    pub vanished: Vec<String>,
    pub millis: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    pub root: String,
    pub restored: u64,
    /// Entries of the manifest no longer in the tree (deleted since).
    pub missing: Vec<String>,
    /// Recorded inode numbers now held by other files (the recorded file
    /// was deleted and its number reused): left untouched.
    #[serde(default)]
    pub impostors: Vec<String>,
    pub millis: u64,
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

fn display(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, RemapError> {
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
fn preflight(root_fd: &OwnedFd, root: &Path, stat: &rustix::fs::Stat) -> Result<(), RemapError> {
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

/// The birth time of an entry, where the filesystem keeps one.
fn birth_time(fd: &OwnedFd) -> Option<i128> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let stx = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME).ok()?;
    StatxFlags::from_bits_retain(stx.stx_mask)
        .contains(StatxFlags::BTIME)
        .then(|| {
            i128::from(stx.stx_btime.tv_sec) * 1_000_000_000 + i128::from(stx.stx_btime.tv_nsec)
        })
}

/// Whether `entry` is the inode `change` recorded, not another that
/// reused its number since: same type, same birth time where known.
fn same_inode(entry: &Entry, change: &Change) -> bool {
    const TYPE_MASK: u32 = 0o170000;
    if entry.stat.st_mode & TYPE_MASK != change.mode & TYPE_MASK {
        return false;
    }
    match change.btime {
        Some(recorded) => birth_time(&entry.fd) == Some(recorded),
        None => true,
    }
}

struct Pending {
    entry: Entry,
    change: Change,
    new_acl: Option<Vec<u8>>,
    new_dacl: Option<Vec<u8>>,
    recorded: bool,
}

/// A non-directory with more than one name: changed only if, just before
/// the change, every one of its names is a verified name inside the tree.
struct HardLink {
    path: Vec<u8>,
    names: Vec<(std::sync::Arc<OwnedFd>, std::ffi::CString)>,
}

/// What every remap thread shares.
struct Shared<'a> {
    options: &'a RemapOptions,
    root: String,
    writer: Mutex<ManifestWriter>,
    recorded: HashMap<(u64, u64), Change>,
    /// Entries handled in this walk: one seen twice (renamed across
    /// directories while the walk ran) is never remapped twice.
    handled: Mutex<HashSet<(u64, u64)>>,
    entries: AtomicU64,
    changed: AtomicU64,
    bytes: AtomicU64,
    progress: &'a (dyn Fn(&Progress) + Sync),
    /// Changes per commit per thread: each pending change holds a
    /// descriptor, so this stays within the process's descriptor budget.
    batch: usize,
}

impl Shared<'_> {
    fn io(&self, what: &str, errno: Errno) -> RemapError {
        RemapError::Io {
            what: what.to_string(),
            root: self.root.clone(),
            errno,
        }
    }

    fn first_time(&self, key: (u64, u64)) -> bool {
        self.handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
    }
}

/// One thread's share of a remap.
struct Worker<'s, 'a> {
    shared: &'s Shared<'a>,
    batch: Vec<Pending>,
    report: RemapReport,
    hardlinks: HashMap<(u64, u64), HardLink>,
    failure: Option<RemapError>,
}

impl<'s, 'a> Worker<'s, 'a> {
    fn new(shared: &'s Shared<'a>) -> Self {
        Worker {
            shared,
            batch: Vec::new(),
            report: RemapReport::default(),
            hardlinks: HashMap::new(),
            failure: None,
        }
    }

    fn consider(&mut self, entry: Entry) -> Result<(), RemapError> {
        let shared = self.shared;
        let kind = entry.file_type();
        let entries = shared.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if kind == FileType::RegularFile {
            shared
                .bytes
                .fetch_add(entry.stat.st_size as u64, Ordering::Relaxed);
        }
        if entries.is_multiple_of(4096) {
            (shared.progress)(&Progress {
                entries,
                changed: shared.changed.load(Ordering::Relaxed),
                bytes: shared.bytes.load(Ordering::Relaxed),
            });
        }
        let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
        if matches!(kind, FileType::BlockDevice | FileType::CharacterDevice) {
            // Never handed to a service user, never recorded.
            if shared.options.mapping.target(uid, gid).is_some() {
                self.report.devices_left.push(display(&entry.path));
            }
            return Ok(());
        }
        if kind != FileType::Directory && entry.stat.st_nlink > 1 {
            // Judged once every name in the tree has been seen.
            let link = self.hardlinks.entry(entry.key()).or_insert(HardLink {
                path: entry.path.clone(),
                names: Vec::new(),
            });
            if let Some(parent) = entry.parent.clone() {
                link.names.push(parent);
            }
            return Ok(());
        }
        self.consider_once(entry)
    }

    fn consider_once(&mut self, entry: Entry) -> Result<(), RemapError> {
        let shared = self.shared;
        if !shared.first_time(entry.key()) {
            return Ok(());
        }
        if let Some(previous) = shared.recorded.get(&entry.key()) {
            // Resuming: recorded before the crash. Finish it only if it is
            // still that inode with its old owner; never remap twice.
            self.report.resumed += 1;
            let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
            if (uid, gid) == (previous.uid, previous.gid) && same_inode(&entry, previous) {
                let change = previous.clone();
                // ACLs from what was recorded, not from a half-applied state.
                let decode = |v: &Option<String>| v.as_ref().and_then(|h| hex::decode(h).ok());
                let new_acl = self.remap_acl(&decode(&change.acl));
                let new_dacl = self.remap_acl(&decode(&change.dacl));
                self.push(Pending {
                    entry,
                    change,
                    new_acl,
                    new_dacl,
                    recorded: true,
                })?;
            }
            return Ok(());
        }
        self.prepare(entry)
    }

    fn read_xattr(
        &self,
        entry: &Entry,
        names: &[String],
        name: &str,
    ) -> Result<Option<Vec<u8>>, RemapError> {
        if names.iter().any(|n| n == name) {
            meta::get_xattr(entry, name).map_err(|e| self.shared.io("getxattr", e))
        } else {
            Ok(None)
        }
    }

    fn remap_acl(&self, old: &Option<Vec<u8>>) -> Option<Vec<u8>> {
        let mapping = &self.shared.options.mapping;
        old.as_ref()
            .and_then(|v| meta::remap_acl(v, &|u| mapping.map_uid(u), &|g| mapping.map_gid(g)))
    }

    fn prepare(&mut self, entry: Entry) -> Result<(), RemapError> {
        let kind = entry.file_type();
        let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
        let target = self.shared.options.mapping.target(uid, gid);
        // Even an entry whose owner stays may carry an ACL naming a remapped id.
        let names = meta::list_xattrs(&entry).map_err(|e| self.shared.io("listxattr", e))?;
        let old_acl = self.read_xattr(&entry, &names, meta::ACL_ACCESS)?;
        let old_dacl = self.read_xattr(&entry, &names, meta::ACL_DEFAULT)?;
        let (new_acl, new_dacl) = (self.remap_acl(&old_acl), self.remap_acl(&old_dacl));
        if target.is_none() && new_acl.is_none() && new_dacl.is_none() {
            return Ok(());
        }
        let (new_uid, new_gid) = target.unwrap_or((uid, gid));
        let cap = if kind == FileType::RegularFile {
            self.read_xattr(&entry, &names, meta::CAPABILITY)?
        } else {
            None
        };
        let mut change = Change {
            p: None,
            px: None,
            dev: entry.stat.st_dev,
            ino: entry.stat.st_ino,
            uid,
            gid,
            mode: entry.stat.st_mode,
            new_uid,
            new_gid,
            cap: cap.map(hex::encode),
            acl: new_acl.as_ref().and(old_acl.as_ref()).map(hex::encode),
            dacl: new_dacl.as_ref().and(old_dacl.as_ref()).map(hex::encode),
            btime: birth_time(&entry.fd),
        };
        change.set_path(&entry.path);
        self.push(Pending {
            entry,
            change,
            new_acl,
            new_dacl,
            recorded: false,
        })
    }

    fn push(&mut self, pending: Pending) -> Result<(), RemapError> {
        self.batch.push(pending);
        if self.batch.len() >= self.shared.batch {
            self.commit()?;
        }
        Ok(())
    }

    /// Records the batch, syncs the manifest, and only then changes.
    fn commit(&mut self) -> Result<(), RemapError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        {
            let mut writer = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            let manifest_error = |w: &ManifestWriter, source| RemapError::Manifest {
                path: w.path().display().to_string(),
                source,
            };
            for pending in self.batch.iter().filter(|p| !p.recorded) {
                writer
                    .record(&pending.change)
                    .map_err(|e| manifest_error(&writer, e))?;
            }
            writer.commit().map_err(|e| manifest_error(&writer, e))?;
        }
        for pending in std::mem::take(&mut self.batch) {
            self.apply(&pending)?;
        }
        // Test aid: a crash after N entries were recorded, synced and changed.
        fleet_core::fault::count(
            "agent:ownership-entries",
            self.shared.changed.load(Ordering::Relaxed),
        );
        Ok(())
    }

    fn apply(&mut self, pending: &Pending) -> Result<(), RemapError> {
        let io = |what: &str, e| self.shared.io(what, e);
        let fd = &pending.entry.fd;
        let kind = pending.entry.file_type();
        let c = &pending.change;
        if (c.new_uid, c.new_gid) != (c.uid, c.gid) {
            meta::chown(fd, c.new_uid, c.new_gid).map_err(|e| io("chown", e))?;
            // chown cleared these: put them back, as recorded.
            if kind == FileType::RegularFile && c.mode & meta::SET_ID_BITS != 0 {
                meta::chmod(fd, kind, c.mode).map_err(|e| io("chmod", e))?;
            }
            if let Some(cap) = &c.cap {
                let cap = hex::decode(cap).unwrap_or_default();
                meta::set_xattr(fd, kind, meta::CAPABILITY, &cap)
                    .map_err(|e| io("setxattr security.capability", e))?;
            }
        }
        if let Some(acl) = &pending.new_acl {
            meta::set_xattr(fd, kind, meta::ACL_ACCESS, acl).map_err(|e| io("setxattr ACL", e))?;
        }
        if let Some(dacl) = &pending.new_dacl {
            meta::set_xattr(fd, kind, meta::ACL_DEFAULT, dacl)
                .map_err(|e| io("setxattr default ACL", e))?;
        }
        self.shared.changed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl walk::Visitor for Worker<'_, '_> {
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
        let is_dir = entry.file_type() == FileType::Directory;
        match self.consider(entry) {
            Ok(()) => Ok(is_dir),
            Err(e) => {
                self.failure = Some(e);
                Err(Errno::CANCELED)
            }
        }
    }

    fn skipped(&mut self, skipped: Skipped) {
        match skipped {
            Skipped::OtherFilesystem(p) => self.report.other_filesystems.push(display(&p)),
            Skipped::Raced(p) => self.report.raced.push(display(&p)),
            Skipped::Vanished(p) => self.report.vanished.push(display(&p)),
        }
    }
}

fn threads(options: &RemapOptions) -> usize {
    if options.threads == 0 {
        walk::threads()
    } else {
        options.threads
    }
}

/// A batch size that keeps every thread's held descriptors within half of
/// the soft RLIMIT_NOFILE (the walk itself needs some too).
fn batch_size(wanted: usize, threads: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize;
    wanted.clamp(1, (limit / 2 / threads.max(1)).max(16))
}

fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// Whether every name of a multiply-linked entry is, right now, a name
/// inside the tree: each recorded name still resolves to the inode, and
/// the inode has exactly that many names. A container may add names in the
/// tree, never outside it; it may remove names, which this notices.
fn all_names_inside(
    link: &HardLink,
    key: (u64, u64),
) -> Result<Option<(OwnedFd, rustix::fs::Stat)>, Errno> {
    use rustix::fs::{AtFlags, statat};
    let mut verified: HashSet<(u64, Vec<u8>)> = HashSet::new();
    let mut opened = None;
    for (parent, name) in &link.names {
        let Ok(stat) = statat(parent.as_ref(), name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if (stat.st_dev, stat.st_ino) != key {
            continue;
        }
        verified.insert((fstat(parent.as_ref())?.st_ino, name.as_bytes().to_vec()));
        if opened.is_none() {
            let fd = walk::open_path_nofollow(parent.as_ref(), name.as_bytes())?;
            let stat = fstat(&fd)?;
            if (stat.st_dev, stat.st_ino) == key {
                opened = Some((fd, stat));
            }
        }
    }
    Ok(match opened {
        Some((fd, _)) => {
            // The count is read after the names were verified.
            let stat = fstat(&fd)?;
            (stat.st_nlink as usize == verified.len()).then_some((fd, stat))
        }
        None => None,
    })
}

/// Remaps the tree at `root` (an absolute path without symlinks; already
/// cleared by `guard`), recording every change in `manifest_path` first.
/// Resumes an interrupted walk from its manifest; walks again (at most
/// three times) while a racing container keeps entries from being seen.
pub fn remap(
    root: &Path,
    manifest_path: &Path,
    options: &RemapOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<RemapReport, RemapError> {
    let started = Instant::now();
    let mut report = remap_once(root, manifest_path, options, progress)?;
    for _ in 0..2 {
        if report.raced.is_empty() || report.skipped_root_already_owned {
            break;
        }
        let again = remap_once(root, manifest_path, options, progress)?;
        report.raced = again.raced;
        report.changed += again.changed;
        report.vanished.extend(again.vanished);
    }
    if let Some(first) = report.raced.first() {
        return Err(RemapError::KeptRacing {
            root: root.display().to_string(),
            count: report.raced.len(),
            first: first.clone(),
        });
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn remap_once(
    root: &Path,
    manifest_path: &Path,
    options: &RemapOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<RemapReport, RemapError> {
    options.mapping.validate()?;
    let root_text = root.display().to_string();
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(|errno| RemapError::Open {
        root: root_text.clone(),
        errno,
    })?;
    if let Some(expected) = options.expect_root
        && expected != (root_stat.st_dev, root_stat.st_ino)
    {
        return Err(RemapError::RootReplaced { root: root_text });
    }
    preflight(&root_fd, root, &root_stat)?;
    let header = Header {
        version: 1,
        root: root_text.clone(),
        device: root_stat.st_dev,
        ino: root_stat.st_ino,
        mapping: options.mapping.clone(),
    };
    let manifest_err = |source| RemapError::Manifest {
        path: manifest_path.display().to_string(),
        source,
    };
    let mut recorded = HashMap::new();
    if manifest_path.exists() {
        let (existing, changes) = manifest::read(manifest_path).map_err(manifest_err)?;
        if let Some(existing) = existing
            && (existing.root != header.root || existing.mapping != header.mapping)
        {
            return Err(RemapError::ManifestMismatch {
                path: manifest_path.display().to_string(),
            });
        }
        for change in changes {
            // The first record of an entry is the one that holds its
            // original state.
            recorded.entry(change.key()).or_insert(change);
        }
    }
    if recorded.is_empty()
        && options.skip_if_root_owned_by == Some((root_stat.st_uid, root_stat.st_gid))
    {
        return Ok(RemapReport {
            root: root_text,
            skipped_root_already_owned: true,
            ..Default::default()
        });
    }
    let shared = Shared {
        options,
        root: root_text.clone(),
        writer: Mutex::new(ManifestWriter::open(manifest_path, &header).map_err(manifest_err)?),
        recorded,
        handled: Mutex::new(HashSet::new()),
        entries: AtomicU64::new(0),
        changed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        progress,
        batch: batch_size(options.batch, threads(options)),
    };
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    let mut workers: Vec<Worker<'_, '_>> = (0..if is_dir { threads(options) } else { 1 })
        .map(|_| Worker::new(&shared))
        .collect();
    if is_dir {
        let result = walk::walk(root_fd, &mut workers);
        if let Some(failure) = workers.iter_mut().find_map(|w| w.failure.take()) {
            // What was recorded stays recorded: the undo can use it.
            for worker in &mut workers {
                worker.commit().ok();
            }
            return Err(failure);
        }
        result.map_err(|e| shared.io("walk", e))?;
    } else if root_stat.st_nlink > 1 {
        // A single file mounted from the host with other names: they
        // cannot be looked for, so it is never given away.
        workers[0].report.refused_hardlinks.push(format!(
            "{root_text} (a file with {} names; the others could be host files)",
            root_stat.st_nlink
        ));
    } else {
        workers[0].consider(Entry {
            fd: root_fd,
            stat: root_stat,
            path: Vec::new(),
            parent: None,
        })?;
    }
    for worker in &mut workers {
        worker.commit()?;
    }
    // Merge what the threads saw; multiply-linked entries are judged only
    // now, once every name of theirs in the tree has been seen.
    let mut report = RemapReport {
        root: root_text.clone(),
        ..Default::default()
    };
    let mut hardlinks: HashMap<(u64, u64), HardLink> = HashMap::new();
    for worker in workers {
        let r = worker.report;
        report.resumed += r.resumed;
        report.other_filesystems.extend(r.other_filesystems);
        report.raced.extend(r.raced);
        report.devices_left.extend(r.devices_left);
        report.vanished.extend(r.vanished);
        report.refused_hardlinks.extend(r.refused_hardlinks);
        for (key, link) in worker.hardlinks {
            match hardlinks.get_mut(&key) {
                Some(existing) => existing.names.extend(link.names),
                None => {
                    hardlinks.insert(key, link);
                }
            }
        }
    }
    let allow_outside = protected_hardlinks() && options.allow_protected_hardlinks;
    let mut finisher = Worker::new(&shared);
    for (key, link) in hardlinks {
        let inside = all_names_inside(&link, key).map_err(|e| shared.io("verify hard link", e))?;
        let opened = match inside {
            Some(opened) => Some(opened),
            None if allow_outside => match link.names.first() {
                Some((parent, name)) => {
                    let fd = walk::open_path_nofollow(parent.as_ref(), name.as_bytes())
                        .map_err(|e| shared.io("open", e))?;
                    let stat = fstat(&fd).map_err(|e| shared.io("stat", e))?;
                    ((stat.st_dev, stat.st_ino) == key).then_some((fd, stat))
                }
                None => None,
            },
            None => {
                report.refused_hardlinks.push(format!(
                    "{} (not all of its names are in the tree; the others could be host files)",
                    display(&link.path)
                ));
                continue;
            }
        };
        match opened {
            Some((fd, stat)) => finisher.consider_once(Entry {
                fd,
                stat,
                path: link.path,
                parent: None,
            })?,
            None => report.raced.push(display(&link.path)),
        }
    }
    finisher.commit()?;
    report.resumed += finisher.report.resumed;
    for list in [
        &mut report.other_filesystems,
        &mut report.raced,
        &mut report.devices_left,
        &mut report.vanished,
        &mut report.refused_hardlinks,
    ] {
        list.sort();
    }
    report.entries = shared.entries.load(Ordering::Relaxed);
    report.changed = shared.changed.load(Ordering::Relaxed);
    report.bytes = shared.bytes.load(Ordering::Relaxed);
    Ok(report)
}

/// Restores one recorded entry: owner, then the mode bits chown cleared,
/// then the capability and ACLs.
fn restore(
    entry: &Entry,
    change: &Change,
    io: &dyn Fn(&str, Errno) -> RemapError,
) -> Result<(), RemapError> {
    let kind = entry.file_type();
    let fd = &entry.fd;
    let owner_changes = (entry.stat.st_uid, entry.stat.st_gid) != (change.uid, change.gid);
    if owner_changes {
        meta::chown(fd, change.uid, change.gid).map_err(|e| io("chown", e))?;
    }
    if kind != FileType::Symlink {
        // chown clears setuid/setgid on regular files: then the mode must
        // be set again even if it looked right before.
        let cleared =
            owner_changes && kind == FileType::RegularFile && change.mode & meta::SET_ID_BITS != 0;
        if cleared || entry.stat.st_mode & 0o7777 != change.mode & 0o7777 {
            meta::chmod(fd, kind, change.mode).map_err(|e| io("chmod", e))?;
        }
    }
    for (name, value) in [
        (meta::CAPABILITY, &change.cap),
        (meta::ACL_ACCESS, &change.acl),
        (meta::ACL_DEFAULT, &change.dacl),
    ] {
        if let Some(value) = value {
            let value = hex::decode(value).unwrap_or_default();
            meta::set_xattr(fd, kind, name, &value).map_err(|e| io("setxattr", e))?;
        }
    }
    Ok(())
}

/// One thread's share of an undo.
struct UndoWorker<'a> {
    wanted: &'a HashMap<(u64, u64), Change>,
    root: &'a str,
    restored: HashSet<(u64, u64)>,
    /// Recorded inodes now holding something else (a reused number).
    impostors: Vec<String>,
    raced: Vec<String>,
    failure: Option<RemapError>,
}

impl walk::Visitor for UndoWorker<'_> {
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
        let is_dir = entry.file_type() == FileType::Directory;
        if let Some(change) = self.wanted.get(&entry.key()) {
            if !same_inode(&entry, change)
                || matches!(
                    entry.file_type(),
                    FileType::BlockDevice | FileType::CharacterDevice
                )
            {
                self.impostors.push(display(&entry.path));
                return Ok(is_dir);
            }
            let root = self.root;
            let io = |what: &str, errno: Errno| RemapError::Io {
                what: what.to_string(),
                root: root.to_string(),
                errno,
            };
            if let Err(e) = restore(&entry, change, &io) {
                self.failure = Some(e);
                return Err(Errno::CANCELED);
            }
            self.restored.insert(entry.key());
        }
        Ok(is_dir)
    }

    fn skipped(&mut self, skipped: Skipped) {
        if let Skipped::Raced(path) = skipped {
            self.raced.push(display(&path));
        }
    }
}

/// Puts back every recorded owner, group, mode, capability and ACL under
/// `root`, finding entries by inode (wherever they were moved within the
/// tree) and checking each is still the recorded one. Safe to repeat.
pub fn undo(root: &Path, manifest_path: &Path) -> Result<UndoReport, RemapError> {
    let started = Instant::now();
    let root_text = root.display().to_string();
    let (header, changes) =
        manifest::read(manifest_path).map_err(|source| RemapError::Manifest {
            path: manifest_path.display().to_string(),
            source,
        })?;
    let mut report = UndoReport {
        root: root_text.clone(),
        ..Default::default()
    };
    if changes.is_empty() {
        return Ok(report);
    }
    let mut wanted: HashMap<(u64, u64), Change> = HashMap::new();
    for change in changes {
        // The first record holds the original state.
        wanted.entry(change.key()).or_insert(change);
    }
    let io = |what: &str, errno: Errno| RemapError::Io {
        what: what.to_string(),
        root: root_text.clone(),
        errno,
    };
    let mut restored: HashSet<(u64, u64)> = HashSet::new();
    let mut impostors = Vec::new();
    for attempt in 0..3 {
        let root_fd = open_root(root)?;
        let root_stat = fstat(&root_fd).map_err(|e| io("stat", e))?;
        if let Some(h) = &header
            && h.ino != 0
            && (h.device, h.ino) != (root_stat.st_dev, root_stat.st_ino)
        {
            return Err(RemapError::RootReplaced { root: root_text });
        }
        let mut raced = Vec::new();
        if FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory {
            let mut workers: Vec<UndoWorker<'_>> = (0..walk::threads())
                .map(|_| UndoWorker {
                    wanted: &wanted,
                    root: &root_text,
                    restored: HashSet::new(),
                    impostors: Vec::new(),
                    raced: Vec::new(),
                    failure: None,
                })
                .collect();
            let result = walk::walk(root_fd, &mut workers);
            if let Some(e) = workers.iter_mut().find_map(|w| w.failure.take()) {
                return Err(e);
            }
            result.map_err(|e| io("walk", e))?;
            for worker in workers {
                restored.extend(worker.restored);
                impostors.extend(worker.impostors);
                raced.extend(worker.raced);
            }
        } else if let Some(change) = wanted.get(&(root_stat.st_dev, root_stat.st_ino)) {
            let entry = Entry {
                fd: root_fd,
                stat: root_stat,
                path: Vec::new(),
                parent: None,
            };
            if same_inode(&entry, change) {
                restore(&entry, change, &io)?;
                restored.insert(entry.key());
            }
        }
        if raced.is_empty() {
            break;
        }
        if attempt == 2 {
            return Err(RemapError::KeptRacing {
                root: root_text,
                count: raced.len(),
                first: raced[0].clone(),
            });
        }
    }
    report.restored = restored.len() as u64;
    let mut missing: Vec<String> = wanted
        .iter()
        .filter(|(key, _)| !restored.contains(key))
        .map(|(_, c)| c.path_display())
        .collect();
    missing.sort();
    report.missing = missing;
    impostors.sort();
    impostors.dedup();
    report.impostors = impostors;
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}
