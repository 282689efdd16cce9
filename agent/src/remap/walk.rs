//! A tree walk that cannot be led out of its tree: every step is an
//! `openat(…, O_NOFOLLOW)` relative to a descriptor already verified, every
//! entry is opened `O_PATH` (so device nodes, FIFOs and sockets are never
//! opened for I/O) and then `fstat`ed, and directories are re-verified by
//! inode when their turn comes. It never crosses to another filesystem.
//! The container whose tree this is may be root and may race the walk: a
//! swapped entry is reported, not followed.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{Dir, FileType, Mode, OFlags, Stat, fstat, openat};
use rustix::io::Errno;

/// One entry, opened: `fd` is `O_PATH` for non-directories, and for
/// directories a real directory descriptor.
#[derive(Debug)]
pub struct Entry {
    pub fd: OwnedFd,
    pub stat: Stat,
    /// Path relative to the walk's root, `/`-separated; empty for the root.
    pub path: Vec<u8>,
}

impl Entry {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    pub fn key(&self) -> (u64, u64) {
        (self.stat.st_dev, self.stat.st_ino)
    }
}

/// Something the walk saw and did not hand to the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// A mount point of another filesystem: not entered, not changed.
    OtherFilesystem(Vec<u8>),
    /// The entry changed between listing and opening (a racing container).
    Raced(Vec<u8>),
    /// It vanished or could not be opened.
    Unreadable(Vec<u8>, Errno),
}

const PATH_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

pub fn open_path_nofollow<Fd: AsFd>(dir: Fd, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(dir, name, PATH_FLAGS, Mode::empty())
}

/// A readable descriptor for the directory `path_fd` refers to (the same
/// inode: "." relative to it cannot be swapped).
pub fn open_dir_from_path_fd(path_fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    openat(
        path_fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
        p.extend_from_slice(parent);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A directory waiting its turn: where it is, and the inode it had when
/// listed, to be checked again when it is opened.
struct PendingDir {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    path: Vec<u8>,
    ino: u64,
}

/// Walks the tree under `root` (a directory descriptor). `visit` sees every
/// entry, directories before their contents; returning `false` for a
/// directory keeps the walk out of it. `skipped` hears of everything else.
pub fn walk(
    root: OwnedFd,
    visit: &mut dyn FnMut(Entry) -> Result<bool, Errno>,
    skipped: &mut dyn FnMut(Skipped),
) -> Result<(), Errno> {
    let root_stat = fstat(&root)?;
    let device = root_stat.st_dev;
    let listing = open_dir_from_path_fd(&root)?;
    let root_entry = Entry {
        fd: root,
        stat: root_stat,
        path: Vec::new(),
    };
    if !visit(root_entry)? {
        return Ok(());
    }
    let mut stack: Vec<(Arc<OwnedFd>, Vec<u8>)> = vec![(Arc::new(listing), Vec::new())];
    let mut pending: Vec<PendingDir> = Vec::new();
    loop {
        if let Some((dir, dir_path)) = stack.pop() {
            list_directory(&dir, &dir_path, device, &mut pending, visit, skipped)?;
            continue;
        }
        let Some(next) = pending.pop() else {
            return Ok(());
        };
        // Re-open by name relative to the verified parent and make sure it
        // is still the directory that was listed.
        let fd = match open_path_nofollow(next.parent.as_ref(), &next.name) {
            Ok(fd) => fd,
            Err(e) => {
                skipped(Skipped::Unreadable(next.path, e));
                continue;
            }
        };
        let stat = fstat(&fd)?;
        if stat.st_ino != next.ino
            || stat.st_dev != device
            || FileType::from_raw_mode(stat.st_mode) != FileType::Directory
        {
            skipped(Skipped::Raced(next.path));
            continue;
        }
        let listing = match open_dir_from_path_fd(&fd) {
            Ok(l) => l,
            Err(e) => {
                skipped(Skipped::Unreadable(next.path, e));
                continue;
            }
        };
        let path = next.path.clone();
        if visit(Entry {
            fd,
            stat,
            path: next.path,
        })? {
            stack.push((Arc::new(listing), path));
        }
    }
}

fn list_directory(
    dir: &Arc<OwnedFd>,
    dir_path: &[u8],
    device: u64,
    pending: &mut Vec<PendingDir>,
    visit: &mut dyn FnMut(Entry) -> Result<bool, Errno>,
    skipped: &mut dyn FnMut(Skipped),
) -> Result<(), Errno> {
    let mut reader = Dir::read_from(dir.as_ref())?;
    while let Some(item) = reader.read() {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let path = join(dir_path, name);
        let fd = match open_path_nofollow(dir.as_ref(), name) {
            Ok(fd) => fd,
            Err(e) => {
                skipped(Skipped::Unreadable(path, e));
                continue;
            }
        };
        let stat = fstat(&fd)?;
        if stat.st_dev != device {
            skipped(Skipped::OtherFilesystem(path));
            continue;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            // Visited when its turn comes, from a fresh verified open.
            pending.push(PendingDir {
                parent: dir.clone(),
                name: name.to_vec(),
                path,
                ino: stat.st_ino,
            });
            continue;
        }
        visit(Entry { fd, stat, path })?;
    }
    Ok(())
}

/// Resolves `path` (relative, `/`-separated) under `root` one component at
/// a time, never following a symlink; `None` if any component is missing
/// or is not a directory.
pub fn open_under(root: &OwnedFd, path: &[u8]) -> Result<Option<(OwnedFd, Stat)>, Errno> {
    let mut current: Option<OwnedFd> = None;
    let components: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for (i, component) in components.iter().enumerate() {
        let base = current.as_ref().unwrap_or(root);
        let fd = match open_path_nofollow(base, component) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        if i + 1 < components.len()
            && FileType::from_raw_mode(fstat(&fd)?.st_mode) != FileType::Directory
        {
            return Ok(None);
        }
        current = Some(fd);
    }
    match current {
        Some(fd) => {
            let stat = fstat(&fd)?;
            Ok(Some((fd, stat)))
        }
        None => Ok(None),
    }
}
