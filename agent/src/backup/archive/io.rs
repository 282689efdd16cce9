//! The archive module's errors, and the two things every direction opens:
//! the mount's root (never through a symlink) and the archive's reader.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::io::Errno;

use crate::remap::walk;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} under {root}: {errno}")]
    Sys {
        what: String,
        root: String,
        errno: Errno,
    },
    #[error("manifest {path} is damaged: {reason}")]
    Manifest { path: String, reason: String },
}

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn sys<'a>(what: &'static str, root: &'a Path) -> impl Fn(Errno) -> ArchiveError + 'a {
    move |errno| ArchiveError::Sys {
        what: what.to_string(),
        root: root.display().to_string(),
        errno,
    }
}

/// A mount's root, refusing a symlink anywhere in its path (see
/// `walk::open_mount_root`).
pub(super) fn open_root(root: &Path) -> Result<OwnedFd, ArchiveError> {
    walk::open_mount_root(root).map_err(sys("open (no symlink may be in the path)", root))
}

/// The archive at `archive` (tar.zst), for reading.
pub(super) fn archive_reader(
    archive: &Path,
) -> Result<tar::Archive<zstd::stream::read::Decoder<'static, BufReader<File>>>, ArchiveError> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(io_err("decompress", archive))?;
    Ok(tar::Archive::new(decoder))
}

/// An entry's path as the manifest names it (the mount's root is empty).
pub(super) fn entry_path(entry: &tar::Entry<'_, impl Read>) -> Vec<u8> {
    let raw = entry.path_bytes().into_owned();
    if raw == b"." || raw == b"./" {
        Vec::new()
    } else {
        raw
    }
}
