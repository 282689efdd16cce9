//! The tree's root: opened without following a symlink anywhere in its
//! path, and refused before anything changes when it cannot be changed;
//! and how a path under it is shown.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, StatVfsMountFlags, fstatvfs};
use rustix::io::Errno;

use super::error::RemapError;
use super::{meta, walk};

/// A path under the root as reports and errors show it (`.`: the root).
pub(crate) fn display(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

/// The root, never through a symlink anywhere in its path.
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
