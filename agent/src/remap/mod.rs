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
pub mod walk;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Instant;

use rustix::fs::{CWD, FileType, Mode, OFlags, StatVfsMountFlags, fstat, fstatvfs, openat};
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
    pub unreadable: Vec<String>,
    pub millis: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    pub root: String,
    pub restored: u64,
    /// Entries of the manifest no longer in the tree (deleted since).
    pub missing: Vec<String>,
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
}

fn display(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, RemapError> {
    openat(
        CWD,
        root,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| RemapError::Open {
        root: root.display().to_string(),
        errno,
    })
}

/// Refuses, before anything changes, a tree that cannot be changed.
fn preflight(root_fd: &OwnedFd, root: &Path) -> Result<(), RemapError> {
    let root_text = root.display().to_string();
    let probe = walk::open_dir_from_path_fd(root_fd).or_else(|_| {
        // A single-file mount: statvfs through the O_PATH descriptor's inode.
        rustix::fs::openat(root_fd, "", OFlags::PATH, Mode::empty())
    });
    if let Ok(fd) = probe
        && let Ok(vfs) = fstatvfs(&fd)
        && vfs.f_flag.contains(StatVfsMountFlags::RDONLY)
    {
        return Err(RemapError::ReadOnly { root: root_text });
    }
    let stat = fstat(root_fd).map_err(|errno| RemapError::Open {
        root: root_text.clone(),
        errno,
    })?;
    // A no-op chown: root_squash and friends refuse it, and then nothing
    // has been touched yet.
    match meta::chown(root_fd, stat.st_uid, stat.st_gid) {
        Ok(()) => Ok(()),
        Err(Errno::ROFS) => Err(RemapError::ReadOnly { root: root_text }),
        Err(errno) => Err(RemapError::NotPermitted {
            root: root_text,
            errno,
        }),
    }
}

/// The access and default ACLs rewritten for the new ids, where they change.
type RemappedAcls = (Option<Vec<u8>>, Option<Vec<u8>>);

struct Pending {
    entry: Entry,
    change: Change,
    new_acl: Option<Vec<u8>>,
    new_dacl: Option<Vec<u8>>,
    recorded: bool,
}

struct HardLink {
    path: Vec<u8>,
    seen: u64,
    nlink: u64,
}

struct Remapper<'a> {
    options: &'a RemapOptions,
    root: String,
    writer: ManifestWriter,
    recorded: HashMap<(u64, u64), Change>,
    batch: Vec<Pending>,
    hardlinks: HashMap<(u64, u64), HardLink>,
    report: RemapReport,
    progress: &'a mut dyn FnMut(&Progress),
}

impl Remapper<'_> {
    fn io(&self, what: &str, errno: Errno) -> RemapError {
        RemapError::Io {
            what: what.to_string(),
            root: self.root.clone(),
            errno,
        }
    }

    fn consider(&mut self, entry: Entry) -> Result<(), RemapError> {
        self.report.entries += 1;
        let kind = entry.file_type();
        if kind == FileType::RegularFile {
            self.report.bytes += entry.stat.st_size as u64;
        }
        if self.report.entries.is_multiple_of(4096) {
            (self.progress)(&Progress {
                entries: self.report.entries,
                changed: self.report.changed,
                bytes: self.report.bytes,
            });
        }
        let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
        if let Some(previous) = self.recorded.get(&entry.key()) {
            // Resuming: recorded before the crash. Finish it only if it
            // still has its old owner; never remap a remapped entry.
            self.report.resumed += 1;
            if (uid, gid) == (previous.uid, previous.gid) {
                let change = previous.clone();
                let (new_acl, new_dacl) = self.remapped_acls(&entry, kind)?;
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
        match kind {
            FileType::BlockDevice | FileType::CharacterDevice => {
                if self.options.mapping.target(uid, gid).is_some() {
                    self.report.devices_left.push(display(&entry.path));
                }
                return Ok(());
            }
            FileType::RegularFile if entry.stat.st_nlink > 1 => {
                let key = entry.key();
                let link = self.hardlinks.entry(key).or_insert(HardLink {
                    path: entry.path.clone(),
                    seen: 0,
                    nlink: entry.stat.st_nlink,
                });
                link.seen += 1;
                return Ok(());
            }
            _ => {}
        }
        self.prepare(entry, kind)
    }

    fn remapped_acls(
        &self,
        entry: &Entry,
        kind: FileType,
    ) -> Result<RemappedAcls, RemapError> {
        if kind == FileType::Symlink {
            return Ok((None, None));
        }
        let names = meta::list_xattrs(&entry.fd, kind).map_err(|e| self.io("listxattr", e))?;
        let mapping = &self.options.mapping;
        let remap = |name: &str| -> Result<Option<Vec<u8>>, RemapError> {
            if !names.iter().any(|n| n == name) {
                return Ok(None);
            }
            let value =
                meta::get_xattr(&entry.fd, kind, name).map_err(|e| self.io("getxattr", e))?;
            Ok(value.and_then(|v| {
                meta::remap_acl(&v, &|u| mapping.map_uid(u), &|g| mapping.map_gid(g))
            }))
        };
        Ok((remap(meta::ACL_ACCESS)?, remap(meta::ACL_DEFAULT)?))
    }

    fn prepare(&mut self, entry: Entry, kind: FileType) -> Result<(), RemapError> {
        let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
        let target = self.options.mapping.target(uid, gid);
        let (new_acl, new_dacl) = self.remapped_acls(&entry, kind)?;
        if target.is_none() && new_acl.is_none() && new_dacl.is_none() {
            return Ok(());
        }
        let (new_uid, new_gid) = target.unwrap_or((uid, gid));
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
            cap: None,
            acl: None,
            dacl: None,
        };
        change.set_path(&entry.path);
        if kind == FileType::RegularFile {
            change.cap = meta::get_xattr(&entry.fd, kind, meta::CAPABILITY)
                .map_err(|e| self.io("getxattr security.capability", e))?
                .map(hex::encode);
        }
        if new_acl.is_some() {
            change.acl = meta::get_xattr(&entry.fd, kind, meta::ACL_ACCESS)
                .map_err(|e| self.io("getxattr ACL", e))?
                .map(hex::encode);
        }
        if new_dacl.is_some() {
            change.dacl = meta::get_xattr(&entry.fd, kind, meta::ACL_DEFAULT)
                .map_err(|e| self.io("getxattr default ACL", e))?
                .map(hex::encode);
        }
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
        if self.batch.len() >= self.options.batch.max(1) {
            self.commit()?;
        }
        Ok(())
    }

    /// Records the batch, syncs the manifest, and only then changes.
    fn commit(&mut self) -> Result<(), RemapError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let manifest_error = |w: &ManifestWriter, source| RemapError::Manifest {
            path: w.path().display().to_string(),
            source,
        };
        for pending in self.batch.iter().filter(|p| !p.recorded) {
            self.writer
                .record(&pending.change)
                .map_err(|e| manifest_error(&self.writer, e))?;
        }
        self.writer
            .commit()
            .map_err(|e| manifest_error(&self.writer, e))?;
        for pending in std::mem::take(&mut self.batch) {
            self.apply(&pending)?;
        }
        Ok(())
    }

    fn apply(&mut self, pending: &Pending) -> Result<(), RemapError> {
        let fd = &pending.entry.fd;
        let kind = pending.entry.file_type();
        let c = &pending.change;
        if (c.new_uid, c.new_gid) != (c.uid, c.gid) {
            meta::chown(fd, c.new_uid, c.new_gid).map_err(|e| self.io("chown", e))?;
            // chown cleared these: put them back, as recorded.
            if kind == FileType::RegularFile && c.mode & meta::SET_ID_BITS != 0 {
                meta::chmod(fd, kind, c.mode).map_err(|e| self.io("chmod", e))?;
            }
            if let Some(cap) = &c.cap {
                let cap = hex::decode(cap).unwrap_or_default();
                meta::set_xattr(fd, kind, meta::CAPABILITY, &cap)
                    .map_err(|e| self.io("setxattr security.capability", e))?;
            }
        }
        if let Some(acl) = &pending.new_acl {
            meta::set_xattr(fd, kind, meta::ACL_ACCESS, acl)
                .map_err(|e| self.io("setxattr ACL", e))?;
        }
        if let Some(dacl) = &pending.new_dacl {
            meta::set_xattr(fd, kind, meta::ACL_DEFAULT, dacl)
                .map_err(|e| self.io("setxattr default ACL", e))?;
        }
        self.report.changed += 1;
        Ok(())
    }

    fn skipped(&mut self, skipped: Skipped) {
        match skipped {
            Skipped::OtherFilesystem(p) => self.report.other_filesystems.push(display(&p)),
            Skipped::Raced(p) => self.report.raced.push(display(&p)),
            Skipped::Unreadable(p, e) => {
                self.report.unreadable.push(format!("{}: {e}", display(&p)))
            }
        }
    }

    /// Hard-linked files, once every name in the tree has been seen.
    fn finish_hardlinks(&mut self, root_dir: &OwnedFd) -> Result<(), RemapError> {
        let protected = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        let allow_outside = protected && self.options.allow_protected_hardlinks;
        let links: Vec<((u64, u64), HardLink)> = self.hardlinks.drain().collect();
        for (key, link) in links {
            if link.seen < link.nlink && !allow_outside {
                self.report.refused_hardlinks.push(format!(
                    "{} ({} of its {} names are in the tree; the others could be host files)",
                    display(&link.path),
                    link.seen,
                    link.nlink
                ));
                continue;
            }
            let Some((fd, stat)) =
                walk::open_under(root_dir, &link.path).map_err(|e| self.io("open", e))?
            else {
                self.report.raced.push(display(&link.path));
                continue;
            };
            if (stat.st_dev, stat.st_ino) != key {
                self.report.raced.push(display(&link.path));
                continue;
            }
            let entry = Entry {
                fd,
                stat,
                path: link.path,
            };
            self.prepare(entry, FileType::RegularFile)?;
        }
        Ok(())
    }
}

/// Remaps the tree at `root` (canonical; already cleared by `guard`),
/// recording every change in `manifest_path` first. Resumes an interrupted
/// walk from its manifest.
pub fn remap(
    root: &Path,
    manifest_path: &Path,
    options: &RemapOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RemapReport, RemapError> {
    let started = Instant::now();
    options.mapping.validate()?;
    let root_text = root.display().to_string();
    let root_fd = open_root(root)?;
    preflight(&root_fd, root)?;
    let root_stat = fstat(&root_fd).map_err(|errno| RemapError::Open {
        root: root_text.clone(),
        errno,
    })?;
    let header = Header {
        version: 1,
        root: root_text.clone(),
        device: root_stat.st_dev,
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
        recorded = changes.into_iter().map(|c| (c.key(), c)).collect();
    }
    let mut report = RemapReport {
        root: root_text.clone(),
        ..Default::default()
    };
    if recorded.is_empty()
        && options.skip_if_root_owned_by == Some((root_stat.st_uid, root_stat.st_gid))
    {
        report.skipped_root_already_owned = true;
        return Ok(report);
    }
    let writer = ManifestWriter::open(manifest_path, &header).map_err(manifest_err)?;
    let mut remapper = Remapper {
        options,
        root: root_text.clone(),
        writer,
        recorded,
        batch: Vec::new(),
        hardlinks: HashMap::new(),
        report,
        progress,
    };
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    if is_dir {
        let root_for_links = root_fd
            .try_clone()
            .map_err(|e| remapper.io("dup", Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        let mut failure: Option<RemapError> = None;
        let cell = std::cell::RefCell::new(&mut remapper);
        let result = walk::walk(
            root_fd,
            &mut |entry| {
                let is_dir = entry.file_type() == FileType::Directory;
                if let Err(e) = cell.borrow_mut().consider(entry) {
                    failure = Some(e);
                    return Err(Errno::CANCELED);
                }
                Ok(is_dir)
            },
            &mut |skipped| cell.borrow_mut().skipped(skipped),
        );
        if let Some(e) = failure {
            remapper.commit().ok();
            return Err(e);
        }
        result.map_err(|e| remapper.io("walk", e))?;
        remapper.finish_hardlinks(&root_for_links)?;
    } else {
        // A single-file mount (a config file, say).
        remapper.consider(Entry {
            fd: root_fd,
            stat: root_stat,
            path: Vec::new(),
        })?;
        let links: Vec<HardLink> = remapper.hardlinks.drain().map(|(_, l)| l).collect();
        for link in links {
            remapper.report.refused_hardlinks.push(format!(
                "{} (a file with {} names; the others could be host files)",
                root_text, link.nlink
            ));
        }
    }
    remapper.commit()?;
    let mut report = remapper.report;
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Puts back every recorded owner, group, mode, capability and ACL under
/// `root`, finding entries by inode (wherever they were moved within the
/// tree). Safe to repeat.
pub fn undo(root: &Path, manifest_path: &Path) -> Result<UndoReport, RemapError> {
    let started = Instant::now();
    let root_text = root.display().to_string();
    let (_, changes) = manifest::read(manifest_path).map_err(|source| RemapError::Manifest {
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
    let mut wanted: HashMap<(u64, u64), Change> =
        changes.into_iter().map(|c| (c.key(), c)).collect();
    let io = |what: &str, errno: Errno| RemapError::Io {
        what: what.to_string(),
        root: root_text.clone(),
        errno,
    };
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(|e| io("stat", e))?;
    let restore = |entry: &Entry, change: &Change| -> Result<(), RemapError> {
        let kind = entry.file_type();
        let fd = &entry.fd;
        if (entry.stat.st_uid, entry.stat.st_gid) != (change.uid, change.gid) {
            meta::chown(fd, change.uid, change.gid).map_err(|e| io("chown", e))?;
        }
        if kind != FileType::Symlink {
            let current = fstat(fd).map_err(|e| io("stat", e))?.st_mode & 0o7777;
            if current != change.mode & 0o7777 {
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
    };
    if FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory {
        let mut failure = None;
        let result = walk::walk(
            root_fd,
            &mut |entry| {
                let is_dir = entry.file_type() == FileType::Directory;
                if let Some(change) = wanted.remove(&entry.key()) {
                    if let Err(e) = restore(&entry, &change) {
                        failure = Some(e);
                        return Err(Errno::CANCELED);
                    }
                    report.restored += 1;
                }
                Ok(is_dir)
            },
            &mut |_| {},
        );
        if let Some(e) = failure {
            return Err(e);
        }
        result.map_err(|e| io("walk", e))?;
    } else if let Some(change) = wanted.remove(&(root_stat.st_dev, root_stat.st_ino)) {
        let entry = Entry {
            fd: root_fd,
            stat: root_stat,
            path: Vec::new(),
        };
        restore(&entry, &change)?;
        report.restored += 1;
    }
    let mut missing: Vec<String> = wanted.values().map(Change::path_display).collect();
    missing.sort();
    report.missing = missing;
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}
