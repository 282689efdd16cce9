//! A container's /etc/passwd and /etc/group without the engine's archive
//! API, where that gives exactly the archive's answer:
//!
//! - a running container's own root, through `/proc/PID/root`, read only
//!   with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` so that an
//!   absolute symlink in the container (`etc/passwd -> /etc/shadow`)
//!   resolves inside the container, as the engine resolves it, and never
//!   against the agent's root;
//! - the proof that a container's writable layer left /etc/passwd and
//!   /etc/group alone (its overlay upper directory holds neither, nor a
//!   whiteout or an opaque /etc), so that containers of one image can share
//!   one read.
//!
//! Every function here answers `None` (or `false`) when it cannot be sure;
//! the caller then asks the engine, which is always right, only slower.
//! Everything is synchronous: a few system calls per container.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, fstat, openat, openat2, statat};
use rustix::io::Errno;

use crate::identity::UserDb;

/// The same bound as the archive path (`inspect::archive::MAX_USER_FILE`):
/// a file above it is left to the archive path, which decides what happens
/// to it.
pub const MAX_USER_FILE: usize = 1024 * 1024;

/// One file as the archive path would report it, and whether it was reached
/// without any symlink (only then may the answer stand for other containers
/// of the same image, whose mounts may differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    pub text: Option<String>,
    pub plain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRead {
    pub db: UserDb,
    /// Both files reached without a symlink on the way.
    pub plain: bool,
}

/// Reads the user database of the running container `id` whose main
/// process is `pid`, through `proc_root/PID/root`, when both files are
/// reached without a symlink (else `None`: ask the engine).
///
/// The pid is proven to be the container's: `proc_root/PID` is opened once
/// and everything else is opened relative to that descriptor, which stays
/// bound to that one process (if it exits, and even if the number is
/// reused, lookups through it fail); that process must be in a cgroup
/// whose path names the container's full id; and when the engine reports
/// the container's merged root (`merged`), the process's root must be that
/// very directory (not a root the process chrooted into).
pub fn read_via_proc(
    proc_root: &Path,
    pid: i32,
    id: &str,
    merged: Option<&Path>,
) -> Option<RootRead> {
    if pid <= 0 || id.len() < 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dir = rustix::fs::open(
        proc_root.join(pid.to_string()),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let cgroup = openat(
        &dir,
        "cgroup",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(cgroup)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    if !text.contains(id) {
        return None;
    }
    // Following the `root` magic link is the point here: it is this process's
    // root. Nothing below follows a magic link again.
    let root = openat(
        &dir,
        "root",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    if let Some(merged) = merged
        && let Ok(expected) = rustix::fs::stat(merged)
    {
        let actual = fstat(&root).ok()?;
        if (actual.st_dev, actual.st_ino) != (expected.st_dev, expected.st_ino) {
            return None;
        }
    }
    let passwd = read_in_root(&root, "/etc/passwd")?;
    let group = read_in_root(&root, "/etc/group")?;
    // A symlink on the way is left to the engine, even though it resolved
    // safely here: the process's root also holds the mounts of its own
    // namespace (/proc, /sys, /dev/shm, ...), which the archive path does
    // not see, so a link into them could give another answer.
    if !(passwd.plain && group.plain) {
        return None;
    }
    Some(RootRead {
        plain: true,
        db: UserDb {
            passwd: passwd.text.map(|t| UserDb::parse_passwd(&t)),
            group: group.text.map(|t| UserDb::parse_group(&t)),
        },
    })
}

/// Scoped resolution: `..` and absolute symlinks stay inside `root`, and
/// magic links (`/proc/self/root` inside the container) are refused.
fn scoped() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

fn open_path(root: &OwnedFd, path: &str, extra: ResolveFlags) -> Result<OwnedFd, Errno> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    openat2(
        root,
        relative,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        scoped() | extra,
    )
}

/// `path` inside `root`, the way `inspect::archive::read_file` reads it
/// through the archive API: the last component is not followed by the
/// engine, the reader follows one symlink itself (an absolute target from the
/// container's root, a relative one from the link's directory), a second
/// symlink or anything but a regular file is "no file". `None`: unsure
/// (an error the archive path may report differently, a file above the
/// bound, a kernel without openat2), ask the engine.
pub fn read_in_root(root: &OwnedFd, path: &str) -> Option<FileRead> {
    // First without any symlink: the common case, and the proof of `plain`.
    match open_path(root, path, ResolveFlags::NO_SYMLINKS) {
        Ok(fd) => match entry(fd)? {
            Entry::Link(_) => {}
            Entry::File(text) => {
                return Some(FileRead {
                    text: Some(text),
                    plain: true,
                });
            }
            Entry::Other => {
                return Some(FileRead {
                    text: None,
                    plain: true,
                });
            }
        },
        // Nothing on the way was a symlink (that would be ELOOP first).
        Err(Errno::NOENT) => {
            return Some(FileRead {
                text: None,
                plain: true,
            });
        }
        // A symlink on the way: resolved below, like the engine does.
        Err(Errno::LOOP) => {}
        Err(_) => return None,
    }
    let mut path = path.to_string();
    for _ in 0..2 {
        match open_path(root, &path, ResolveFlags::empty()) {
            Ok(fd) => match entry(fd)? {
                Entry::File(text) => {
                    return Some(FileRead {
                        text: Some(text),
                        plain: false,
                    });
                }
                Entry::Other => {
                    return Some(FileRead {
                        text: None,
                        plain: false,
                    });
                }
                Entry::Link(target) => {
                    path = if target.starts_with('/') {
                        target
                    } else {
                        let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
                        parent.join(target).display().to_string()
                    };
                }
            },
            Err(Errno::NOENT) => {
                return Some(FileRead {
                    text: None,
                    plain: false,
                });
            }
            Err(_) => return None,
        }
    }
    Some(FileRead {
        text: None,
        plain: false,
    })
}

enum Entry {
    File(String),
    Link(String),
    Other,
}

/// What an `O_PATH | O_NOFOLLOW` descriptor refers to. A regular file is
/// reopened for reading through the agent's own `/proc/self/fd` (the same
/// inode, no second lookup that a container could race into a device).
fn entry(fd: OwnedFd) -> Option<Entry> {
    let stat = fstat(&fd).ok()?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(&fd, "", Vec::new()).ok()?;
            Some(Entry::Link(target.to_string_lossy().into_owned()))
        }
        FileType::RegularFile => {
            if stat.st_size < 0 || stat.st_size as u64 > MAX_USER_FILE as u64 {
                return None;
            }
            let file = rustix::fs::open(
                format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()),
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            )
            .ok()?;
            let reopened = fstat(&file).ok()?;
            if (reopened.st_dev, reopened.st_ino) != (stat.st_dev, stat.st_ino) {
                return None;
            }
            let mut raw = Vec::new();
            std::fs::File::from(file)
                .take(MAX_USER_FILE as u64 + 1)
                .read_to_end(&mut raw)
                .ok()?;
            if raw.len() > MAX_USER_FILE {
                return None;
            }
            Some(Entry::File(String::from_utf8_lossy(&raw).into_owned()))
        }
        _ => Some(Entry::Other),
    }
}

/// Storage drivers whose `UpperDir` is the container's writable layer as
/// an overlay upper directory (kernel whiteouts or `.wh.` files).
const OVERLAY_DRIVERS: &[&str] = &["overlay2", "overlay", "fuse-overlayfs"];

/// Whether the container's writable layer provably left /etc/passwd and
/// /etc/group as the image has them: its upper directory has no `etc`, or
/// an `etc` directory that is not opaque or redirected and holds neither
/// file nor a whiteout of either. The upper path comes from the engine
/// (trusted); inside it nothing is followed.
pub fn layer_keeps_user_files(driver: &str, upper: &Path) -> bool {
    if !OVERLAY_DRIVERS.contains(&driver) || !upper.is_absolute() {
        return false;
    }
    let Ok(upper) = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        // Not visible from here (another mount namespace): unproven.
        return false;
    };
    let absent = |dir: &OwnedFd, name: &str| {
        matches!(
            statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
            Err(Errno::NOENT)
        )
    };
    if !absent(&upper, ".wh.etc") || !absent(&upper, ".wh..wh..opq") {
        return false;
    }
    let etc = match openat(
        &upper,
        "etc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(etc) => etc,
        Err(Errno::NOENT) => return true,
        // A file, a symlink, a whiteout device where /etc was: changed.
        Err(_) => return false,
    };
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(&etc, &mut names[..]) {
        Ok(len) => len,
        // No extended attributes here at all: no opaque or redirect marker.
        Err(Errno::NOTSUP) => 0,
        Err(_) => return false,
    };
    let marked = names[..len]
        .split(|b| *b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .any(|n| n.contains("opaque") || n.contains("redirect"));
    !marked
        && ["passwd", "group", ".wh.passwd", ".wh.group", ".wh..wh..opq"]
            .iter()
            .all(|name| absent(&etc, name))
}

/// Whether a mount destination can hide or replace /etc/passwd or
/// /etc/group on a path without symlinks.
pub fn covers_user_files(destination: &str) -> bool {
    let d = destination.trim_end_matches('/');
    matches!(d, "" | "/etc" | "/etc/passwd" | "/etc/group")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root_of(dir: &Path) -> OwnedFd {
        rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // A host file the container's link names by its absolute host path.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host:x:4242:4242::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("etc/passwd")).unwrap();
        let fd = root_of(&root);
        let read = read_in_root(&fd, "/etc/passwd").unwrap();
        assert_eq!(read.text, None, "the host file must not be read");
        assert!(!read.plain);
        // Inside the root that same path exists: that one is read.
        let inside = root.join(secret.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "inside:x:7:7::/:/bin/sh\n").unwrap();
        let read = read_in_root(&fd, "/etc/passwd").unwrap();
        assert_eq!(read.text.as_deref(), Some("inside:x:7:7::/:/bin/sh\n"));
        // `..` is clamped at the root.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&fd, "/etc/passwd").unwrap().text, None);
    }

    #[test]
    fn one_symlink_is_followed_a_second_is_no_file_like_the_archive_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/passwd"), "a:x:1:1::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../data/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/group")).unwrap();
        std::fs::write(root.join("etc/shadow"), "plain").unwrap();
        let fd = root_of(root);
        let read = read_in_root(&fd, "/etc/passwd").unwrap();
        assert_eq!(read.text.as_deref(), Some("a:x:1:1::/:/bin/sh\n"));
        assert!(!read.plain);
        assert_eq!(
            read_in_root(&fd, "/etc/group").unwrap().text,
            None,
            "two links"
        );
        let read = read_in_root(&fd, "/etc/shadow").unwrap();
        assert_eq!((read.text.as_deref(), read.plain), (Some("plain"), true));
        let read = read_in_root(&fd, "/etc/missing").unwrap();
        assert_eq!((read.text, read.plain), (None, true));
        std::fs::create_dir(root.join("etc/dir")).unwrap();
        assert_eq!(read_in_root(&fd, "/etc/dir").unwrap().text, None);
        // Above the bound: left to the engine.
        std::fs::write(root.join("etc/big"), vec![b'x'; MAX_USER_FILE + 1]).unwrap();
        assert_eq!(read_in_root(&fd, "/etc/big"), None);
    }

    #[test]
    fn an_upper_layer_that_touched_the_user_files_is_not_proof() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        assert!(layer_keeps_user_files("overlay2", upper));
        assert!(!layer_keeps_user_files("btrfs", upper));
        assert!(!layer_keeps_user_files("overlay2", &upper.join("gone")));
        std::fs::create_dir(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/hostname"), "x").unwrap();
        assert!(layer_keeps_user_files("fuse-overlayfs", upper));
        for name in ["passwd", "group", ".wh.passwd", ".wh..wh..opq"] {
            std::fs::write(upper.join("etc").join(name), "").unwrap();
            assert!(!layer_keeps_user_files("overlay2", upper), "{name}");
            std::fs::remove_file(upper.join("etc").join(name)).unwrap();
        }
        std::fs::write(upper.join(".wh.etc"), "").unwrap();
        assert!(!layer_keeps_user_files("overlay2", upper));
        std::fs::remove_file(upper.join(".wh.etc")).unwrap();
        std::fs::remove_dir_all(upper.join("etc")).unwrap();
        std::os::unix::fs::symlink("/tmp", upper.join("etc")).unwrap();
        assert!(!layer_keeps_user_files("overlay2", upper));
        assert!(covers_user_files("/etc/") && covers_user_files("/etc/passwd"));
        assert!(!covers_user_files("/etc/nginx") && !covers_user_files("/data"));
    }
}
