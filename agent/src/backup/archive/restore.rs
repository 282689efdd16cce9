//! Restore: the mount put back exactly as the manifest says.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps, fstat, linkat, mkdirat, mknodat,
    openat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::io::{ArchiveError, archive_reader, entry_path, io_err, open_root, sys};
use super::manifest::{Item, decode_link, read_manifest};
use crate::remap::meta;
use crate::remap::walk;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub entries: u64,
    pub bytes: u64,
    pub removed: u64,
}

/// Deletes everything under the directory `dir` (never following a
/// symlink, never entering another filesystem).
fn clear_directory(dir: &OwnedFd, device: u64, removed: &mut u64) -> Result<(), Errno> {
    let listing = walk::open_dir_from_path_fd(dir)?;
    let mut reader = rustix::fs::Dir::read_from(&listing)?;
    let mut names = Vec::new();
    while let Some(item) = reader.read() {
        let item = item?;
        let name = item.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    for name in names {
        let fd = match walk::open_path_nofollow(dir, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        let stat = fstat(&fd)?;
        if stat.st_dev != device {
            continue;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            clear_directory(&fd, device, removed)?;
            unlinkat(&listing, name.as_slice(), AtFlags::REMOVEDIR)?;
        } else {
            unlinkat(&listing, name.as_slice(), AtFlags::empty())?;
        }
        *removed += 1;
    }
    Ok(())
}

/// Puts the mount at `root` back exactly as the manifest says: its
/// current content is removed, the archive extracted, then owners, modes,
/// xattrs and times applied (directories last, deepest first).
pub fn restore_mount(
    root: &Path,
    archive: &Path,
    manifest: &Path,
) -> Result<RestoreOutcome, ArchiveError> {
    let items = read_manifest(manifest)?;
    let by_path: HashMap<Vec<u8>, &Item> = items.iter().map(|i| (i.path(), i)).collect();
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(sys("stat", root))?;
    let mut outcome = RestoreOutcome::default();
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    if !is_dir {
        return restore_single_file(root, archive, &items);
    }
    clear_directory(&root_fd, root_stat.st_dev, &mut outcome.removed)
        .map_err(sys("clear", root))?;
    let mut restorer = Restorer {
        root,
        manifest,
        dirs: HashMap::new(),
    };
    restorer.dirs.insert(
        Vec::new(),
        walk::open_dir_from_path_fd(&root_fd).map_err(sys("open", root))?,
    );
    let mut tar = archive_reader(archive)?;
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let path = entry_path(&entry);
        if path.is_empty() {
            continue;
        }
        let Some(item) = by_path.get(&path) else {
            continue;
        };
        outcome.bytes += restorer.make(&mut entry, &path, item)?;
        outcome.entries += 1;
    }
    outcome.entries += restorer.make_sockets(&items)?;
    restorer.apply_all_metadata(&root_fd, &items)?;
    if let Some(listing) = restorer.dirs.get(&Vec::new()) {
        rustix::fs::syncfs(listing).map_err(sys("sync", root))?;
    }
    Ok(outcome)
}

/// A path's directory and its own name.
fn split_parent(path: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
        None => (Vec::new(), path.to_vec()),
    }
}

/// A failed system call on the entry at `path`.
fn failed<'r>(
    root: &'r Path,
    what: &'static str,
    path: &[u8],
) -> impl Fn(Errno) -> ArchiveError + use<'r> {
    let path = path.to_vec();
    move |errno| ArchiveError::Sys {
        what: format!("{what} {}", String::from_utf8_lossy(&path)),
        root: root.display().to_string(),
        errno,
    }
}

/// One directory restore under way: the directories made so far, by path
/// (the root's is the empty path), through which every entry is made.
struct Restorer<'a> {
    root: &'a Path,
    manifest: &'a Path,
    dirs: HashMap<Vec<u8>, OwnedFd>,
}

impl Restorer<'_> {
    fn damaged(&self, reason: String) -> ArchiveError {
        ArchiveError::Manifest {
            path: self.manifest.display().to_string(),
            reason,
        }
    }

    /// Makes the entry at `path` as `item` says (a regular file with the
    /// archive's content); returns the bytes written.
    fn make(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        path: &[u8],
        item: &Item,
    ) -> Result<u64, ArchiveError> {
        let (parent, name) = split_parent(path);
        let Some(dir) = self.dirs.get(&parent) else {
            return Err(self.damaged(format!(
                "{} comes before its directory",
                String::from_utf8_lossy(path)
            )));
        };
        let name = name.as_slice();
        match item.kind {
            'd' => {
                mkdirat(dir, name, Mode::from_raw_mode(0o700))
                    .map_err(failed(self.root, "mkdir", path))?;
                let fd = openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(failed(self.root, "open", path))?;
                self.dirs.insert(path.to_vec(), fd);
            }
            'f' => {
                let fd = openat(
                    dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(failed(self.root, "create", path))?;
                let mut file = File::from(fd);
                return std::io::copy(entry, &mut file).map_err(io_err("write", self.root));
            }
            'h' => {
                let target = decode_link(item.link.as_deref().unwrap_or_default());
                let (tparent, tname) = split_parent(&target);
                let Some(tdir) = self.dirs.get(&tparent) else {
                    return Err(self.damaged(format!(
                        "{} links to {}, which the archive never made",
                        String::from_utf8_lossy(path),
                        String::from_utf8_lossy(&target)
                    )));
                };
                linkat(tdir, tname.as_slice(), dir, name, AtFlags::empty())
                    .map_err(failed(self.root, "link", path))?;
            }
            'l' => {
                let target = decode_link(item.link.as_deref().unwrap_or_default());
                symlinkat(target.as_slice(), dir, name)
                    .map_err(failed(self.root, "symlink", path))?;
            }
            'p' => mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                .map_err(failed(self.root, "mkfifo", path))?,
            'c' | 'b' => {
                let kind = if item.kind == 'c' {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                mknodat(
                    dir,
                    name,
                    kind,
                    Mode::from_raw_mode(0o600),
                    item.rdev.unwrap_or(0),
                )
                .map_err(failed(self.root, "mknod", path))?
            }
            _ => {}
        }
        Ok(0)
    }

    /// Sockets are only in the manifest; returns how many were made.
    fn make_sockets(&self, items: &[Item]) -> Result<u64, ArchiveError> {
        let mut made = 0;
        for item in items.iter().filter(|i| i.kind == 's') {
            let (parent, name) = split_parent(&item.path());
            if let Some(dir) = self.dirs.get(&parent) {
                mknodat(
                    dir,
                    name.as_slice(),
                    FileType::Socket,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(sys("mknod socket", self.root))?;
                made += 1;
            }
        }
        Ok(made)
    }

    /// Metadata: deepest first, so a directory's mtime is set after its children.
    fn apply_all_metadata(&self, root_fd: &OwnedFd, items: &[Item]) -> Result<(), ArchiveError> {
        let root = self.root;
        let mut ordered: Vec<&Item> = items.iter().collect();
        ordered.sort_by_key(|i| {
            std::cmp::Reverse(
                i.path().iter().filter(|b| **b == b'/').count() + usize::from(!i.path().is_empty()),
            )
        });
        for item in ordered {
            let path = item.path();
            let (parent, name) = split_parent(&path);
            if path.is_empty() {
                apply_metadata(root_fd, None, item).map_err(sys("set metadata", root))?;
                continue;
            }
            let Some(dir) = self.dirs.get(&parent) else {
                return Err(self.damaged(format!(
                    "{}: its directory was never restored",
                    String::from_utf8_lossy(&path)
                )));
            };
            let fd =
                walk::open_path_nofollow(dir, &name).map_err(sys("reopen restored entry", root))?;
            apply_metadata(&fd, Some((dir, &name)), item).map_err(sys("set metadata", root))?;
        }
        Ok(())
    }
}

fn restore_single_file(
    root: &Path,
    archive: &Path,
    items: &[Item],
) -> Result<RestoreOutcome, ArchiveError> {
    let mut tar = archive_reader(archive)?;
    let mut outcome = RestoreOutcome::default();
    // Only ever a regular file, reopened through the descriptor that was
    // checked: a FIFO would hang the restore, a device would be opened.
    let path_fd = open_root(root)?;
    let stat = fstat(&path_fd).map_err(sys("stat", root))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ArchiveError::Manifest {
            path: root.display().to_string(),
            reason: "the mount is no longer a regular file; nothing was restored".into(),
        });
    }
    if let Some(entry) = tar.entries().map_err(io_err("read", archive))?.next() {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
        let fd = openat(
            CWD,
            proc_path.as_str(),
            OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(sys("open", root))?;
        let mut file = File::from(fd);
        outcome.bytes = std::io::copy(&mut entry, &mut file).map_err(io_err("write", root))?;
        file.sync_all().map_err(io_err("sync", root))?;
        outcome.entries = 1;
    }
    if let Some(item) = items.first() {
        apply_metadata(&path_fd, None, item).map_err(sys("set metadata", root))?;
    }
    Ok(outcome)
}

/// Owner, then mode (after chown, which clears setuid bits), then xattrs
/// (after chown, which drops capabilities), then times. `place` is the
/// directory and name the entry sits under (none for the mount's root).
fn apply_metadata(
    fd: &OwnedFd,
    place: Option<(&OwnedFd, &Vec<u8>)>,
    item: &Item,
) -> Result<(), Errno> {
    let kind = match item.kind {
        'd' => FileType::Directory,
        'l' => FileType::Symlink,
        'p' => FileType::Fifo,
        's' => FileType::Socket,
        'c' => FileType::CharacterDevice,
        'b' => FileType::BlockDevice,
        _ => FileType::RegularFile,
    };
    meta::chown(fd, item.uid, item.gid)?;
    meta::chmod(fd, kind, item.mode)?;
    for (name, value) in &item.xattrs {
        let value = hex::decode(value).unwrap_or_default();
        meta::set_xattr(fd, kind, name, &value)?;
    }
    let when = Timespec {
        tv_sec: item.mtime,
        tv_nsec: item.mtime_ns as _,
    };
    let times = Timestamps {
        last_access: when,
        last_modification: when,
    };
    match place {
        Some((dir, name)) => utimensat(dir, name.as_slice(), &times, AtFlags::SYMLINK_NOFOLLOW),
        None if kind == FileType::Symlink => Ok(()),
        None => utimensat(
            CWD,
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            &times,
            AtFlags::empty(),
        ),
    }
}
