//! A tree walk that cannot be led out of its tree: every step is an
//! `openat(…, O_NOFOLLOW)` relative to a descriptor already verified, every
//! entry is opened `O_PATH` (so device nodes, FIFOs and sockets are never
//! opened for I/O) and then `fstat`ed, and directories are re-verified by
//! inode when their turn comes. It never crosses to another filesystem.
//! The container whose tree this is may be root and may race the walk: a
//! swapped entry is reported, not followed.
//!
//! Directories are shared out to several threads: ownership changes are
//! bound by per-entry system calls, and one thread per core is what lets a
//! safe walk keep up with `chown -R`.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{Dir, FileType, Mode, OFlags, Stat, fstat, openat};
use rustix::io::Errno;

/// One entry, opened `O_PATH` (directories included).
#[derive(Debug)]
pub struct Entry {
    pub fd: OwnedFd,
    pub stat: Stat,
    /// Path relative to the walk's root, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    /// The verified directory holding it, and its name there (not for the
    /// root): xattrs are read by name from there (see `meta`).
    pub parent: Option<(Arc<OwnedFd>, CString)>,
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
    /// It vanished between listing and opening.
    Vanished(Vec<u8>),
}

/// What a walk does with what it finds; one per thread.
pub trait Visitor: Send {
    /// Sees every entry, a directory before its contents; `Ok(false)` for
    /// a directory keeps the walk out of it; an error stops every thread.
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno>;
    fn skipped(&mut self, skipped: Skipped);

    /// Whether the walk reads each entry's birth time with its status (one
    /// `statx` instead of `fstat`) and calls `visit_born`.
    fn wants_birth_time(&self) -> bool {
        false
    }

    /// Called by each thread once the whole tree is walked (not after an
    /// error): a visitor finishes its own work there, on its own thread.
    fn finish(&mut self) -> Result<(), Errno> {
        Ok(())
    }

    /// `visit`, with the birth time (ns) where the filesystem keeps one.
    fn visit_born(&mut self, entry: Entry, btime: Option<i128>) -> Result<bool, Errno> {
        let _ = btime;
        self.visit(entry)
    }
}

/// The status of an opened entry, and its birth time when `born` (one
/// system call either way).
fn status(fd: &OwnedFd, born: bool, template: &Stat) -> Result<(Stat, Option<i128>), Errno> {
    if !born {
        return Ok((fstat(fd)?, None));
    }
    use rustix::fs::{AtFlags, StatxFlags, makedev, statx};
    let x = statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    let mask = StatxFlags::from_bits_retain(x.stx_mask);
    let needed = StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::NLINK
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::INO
        | StatxFlags::SIZE;
    if !mask.contains(needed) {
        // A filesystem that does not fill them in: ask the usual way.
        return Ok((fstat(fd)?, None));
    }
    // `Stat` cannot be built outside rustix: every field `fstat` fills in
    // is set from the statx answer (the same values the kernel's stat
    // would give, device numbers encoded alike).
    let mut stat = *template;
    stat.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor) as _;
    stat.st_ino = x.stx_ino as _;
    stat.st_nlink = x.stx_nlink as _;
    stat.st_mode = x.stx_mode as _;
    stat.st_uid = x.stx_uid as _;
    stat.st_gid = x.stx_gid as _;
    stat.st_rdev = makedev(x.stx_rdev_major, x.stx_rdev_minor) as _;
    stat.st_size = x.stx_size as _;
    stat.st_blksize = x.stx_blksize as _;
    stat.st_blocks = x.stx_blocks as _;
    stat.st_atime = x.stx_atime.tv_sec as _;
    stat.st_atime_nsec = x.stx_atime.tv_nsec as _;
    stat.st_mtime = x.stx_mtime.tv_sec as _;
    stat.st_mtime_nsec = x.stx_mtime.tv_nsec as _;
    stat.st_ctime = x.stx_ctime.tv_sec as _;
    stat.st_ctime_nsec = x.stx_ctime.tv_nsec as _;
    let btime = mask
        .contains(StatxFlags::BTIME)
        .then(|| i128::from(x.stx_btime.tv_sec) * 1_000_000_000 + i128::from(x.stx_btime.tv_nsec));
    Ok((stat, btime))
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

#[derive(Default)]
struct Queue {
    dirs: VecDeque<PendingDir>,
    busy: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    failed: AtomicBool,
    device: u64,
    /// The root's mount: a bind mount of the same filesystem inside the
    /// tree has the same device number but another mount id.
    mount_id: Option<u64>,
    /// Whether the visitors want birth times (`Visitor::wants_birth_time`).
    born: bool,
    /// The root's status: the shape `status` fills in.
    template: Stat,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Walks the tree under `root` (an `O_PATH` directory descriptor) with one
/// thread per visitor. The root itself goes to the first visitor.
pub fn walk<V: Visitor>(root: OwnedFd, visitors: &mut [V]) -> Result<(), Errno> {
    let Some(first) = visitors.first_mut() else {
        return Ok(());
    };
    let root_stat = fstat(&root)?;
    let listing = open_dir_from_path_fd(&root)?;
    let listing_for_id = listing
        .try_clone()
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    let born = first.wants_birth_time();
    let root_entry = Entry {
        fd: root,
        stat: root_stat,
        path: Vec::new(),
        parent: None,
    };
    let descend = if born {
        let btime = birth(&root_entry.fd);
        first.visit_born(root_entry, btime)?
    } else {
        first.visit(root_entry)?
    };
    if !descend {
        return Ok(());
    }
    let shared = Shared {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        failed: AtomicBool::new(false),
        device: root_stat.st_dev,
        mount_id: mount_id(&listing_for_id),
        born,
        template: root_stat,
    };
    // The root's own listing seeds the queue.
    {
        let mut seed = Vec::new();
        list_directory(&Arc::new(listing), &[], &shared, &mut seed, first)?;
        shared.lock().dirs.extend(seed);
    }
    let results: Vec<Result<(), Errno>> = std::thread::scope(|scope| {
        let handles: Vec<_> = visitors
            .iter_mut()
            .map(|visitor| {
                let shared = &shared;
                scope.spawn(move || {
                    let result = work(shared, visitor);
                    if result.is_err() {
                        shared.failed.store(true, Ordering::SeqCst);
                        shared.ready.notify_all();
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(Errno::IO)))
            .collect()
    });
    results.into_iter().collect()
}

fn work<V: Visitor>(shared: &Shared, visitor: &mut V) -> Result<(), Errno> {
    let mut found = Vec::new();
    loop {
        let next = {
            let mut queue = shared.lock();
            loop {
                if shared.failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if let Some(dir) = queue.dirs.pop_back() {
                    queue.busy += 1;
                    break Some(dir);
                }
                if queue.busy == 0 {
                    shared.ready.notify_all();
                    break None;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(next) = next else {
            return visitor.finish();
        };
        let result = enter(shared, next, &mut found, visitor);
        let mut queue = shared.lock();
        queue.busy -= 1;
        queue.dirs.extend(found.drain(..));
        shared.ready.notify_all();
        drop(queue);
        result?;
    }
}

/// Re-opens a pending directory by name relative to its verified parent,
/// checks it is still the directory that was listed, visits and lists it.
fn enter<V: Visitor>(
    shared: &Shared,
    next: PendingDir,
    found: &mut Vec<PendingDir>,
    visitor: &mut V,
) -> Result<(), Errno> {
    let fd = match open_path_nofollow(next.parent.as_ref(), &next.name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            visitor.skipped(Skipped::Vanished(next.path));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (stat, btime) = status(&fd, shared.born, &shared.template)?;
    if stat.st_ino != next.ino
        || stat.st_dev != shared.device
        || FileType::from_raw_mode(stat.st_mode) != FileType::Directory
    {
        visitor.skipped(Skipped::Raced(next.path));
        return Ok(());
    }
    if shared.mount_id.is_some() && mount_id(&fd) != shared.mount_id {
        visitor.skipped(Skipped::OtherFilesystem(next.path));
        return Ok(());
    }
    let listing = match open_dir_from_path_fd(&fd) {
        Ok(listing) => listing,
        // Removed between the check and the listing.
        Err(Errno::NOENT) => {
            visitor.skipped(Skipped::Vanished(next.path));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let path = next.path.clone();
    let parent = CString::new(next.name)
        .ok()
        .map(|name| (next.parent.clone(), name));
    let entry = Entry {
        fd,
        stat,
        path: next.path,
        parent,
    };
    let descend = if shared.born {
        visitor.visit_born(entry, btime)?
    } else {
        visitor.visit(entry)?
    };
    if descend {
        list_directory(&Arc::new(listing), &path, shared, found, visitor)?;
    }
    Ok(())
}

fn list_directory<V: Visitor>(
    dir: &Arc<OwnedFd>,
    dir_path: &[u8],
    shared: &Shared,
    found: &mut Vec<PendingDir>,
    visitor: &mut V,
) -> Result<(), Errno> {
    let mut reader = Dir::read_from(dir.as_ref())?;
    while let Some(item) = reader.read() {
        if shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let item = item?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let path = join(dir_path, name);
        // Only a name that vanished is passed over; anything else (out of
        // descriptors, I/O errors) stops the walk rather than skip silently.
        let fd = match open_path_nofollow(dir.as_ref(), name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                visitor.skipped(Skipped::Vanished(path));
                continue;
            }
            Err(e) => return Err(e),
        };
        let (stat, btime) = status(&fd, shared.born, &shared.template)?;
        if stat.st_dev != shared.device {
            visitor.skipped(Skipped::OtherFilesystem(path));
            continue;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            // Visited when its turn comes, from a fresh verified open.
            found.push(PendingDir {
                parent: dir.clone(),
                name: name.to_vec(),
                path,
                ino: stat.st_ino,
            });
            continue;
        }
        let parent = CString::new(name).ok().map(|n| (dir.clone(), n));
        let entry = Entry {
            fd,
            stat,
            path,
            parent,
        };
        if shared.born {
            visitor.visit_born(entry, btime)?;
        } else {
            visitor.visit(entry)?;
        }
    }
    Ok(())
}

/// The birth time of an opened entry, where the filesystem keeps one.
pub fn birth(fd: &OwnedFd) -> Option<i128> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let stx = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME).ok()?;
    StatxFlags::from_bits_retain(stx.stx_mask)
        .contains(StatxFlags::BTIME)
        .then(|| {
            i128::from(stx.stx_btime.tv_sec) * 1_000_000_000 + i128::from(stx.stx_btime.tv_nsec)
        })
}

/// The mount id of the mount an entry sits on (Linux 5.8+).
pub fn mount_id(fd: &OwnedFd) -> Option<u64> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let stx = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    StatxFlags::from_bits_retain(stx.stx_mask)
        .contains(StatxFlags::MNT_ID)
        .then_some(stx.stx_mnt_id)
}

/// A mount's root directory or file, by absolute path, refusing a symlink
/// in *any* component: a container that can write a parent directory of a
/// mount source (compose's `./` next to `./data`) could otherwise turn the
/// source into a link to anywhere on the host.
pub fn open_mount_root(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    use rustix::fs::{CWD, ResolveFlags, openat2};
    if !path.is_absolute() {
        return Err(Errno::INVAL);
    }
    openat2(
        CWD,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
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

/// How many threads a walk uses: one per core, at most four.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
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
            Birth::Unknown => birth(fd),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_read_with_the_birth_time_is_the_status_fstat_gives() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::write(root.join("file"), b"content").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("file", root.join("link")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(root.join("dir")).unwrap_or_else(|e| panic!("{e}"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dirfd = open_path_nofollow(rustix::fs::CWD, root.as_os_str().as_encoded_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let template = fstat(&dirfd).unwrap_or_else(|e| panic!("{e}"));
        for name in ["file", "link", "dir", "null"] {
            let fd = open_path_nofollow(&dirfd, name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            let plain = fstat(&fd).unwrap_or_else(|e| panic!("{e}"));
            let (born, _) = status(&fd, true, &template).unwrap_or_else(|e| panic!("{e}"));
            let fields = |s: &Stat| {
                (
                    s.st_dev,
                    s.st_ino,
                    s.st_nlink,
                    s.st_mode,
                    s.st_uid,
                    s.st_gid,
                    s.st_rdev,
                    s.st_size,
                    s.st_blocks,
                    (s.st_mtime, s.st_mtime_nsec),
                    (s.st_ctime, s.st_ctime_nsec),
                )
            };
            assert_eq!(fields(&born), fields(&plain), "{name}");
        }
    }
}
