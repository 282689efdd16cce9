//! A full metadata + content snapshot of a tree, and a tree with every
//! kind of entry the remap rules talk about. (Also compiled into the
//! agent's own tests, by path.)

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub kind: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u64,
    pub mtime: (i64, i64),
    pub content: String,
    pub target: String,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path with this inode (hard links share it).
    pub link_group: String,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return BTreeMap::new();
    };
    names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap_or(0);
            value.truncate(len);
            (name, value)
        })
        .collect()
}

/// Everything about every entry under `root` (never following a symlink).
pub fn snapshot(root: &Path) -> BTreeMap<String, Snap> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "chardev"
        } else {
            "blockdev"
        };
        let content = if ft.is_file() {
            hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))
        } else {
            String::new()
        };
        let target = if ft.is_symlink() {
            std::fs::read_link(&path).unwrap().display().to_string()
        } else {
            String::new()
        };
        let group = inodes
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| rel.clone())
            .clone();
        out.insert(
            rel,
            Snap {
                kind,
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode(),
                rdev: meta.rdev(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content,
                target,
                xattrs: if ft.is_symlink() {
                    BTreeMap::new()
                } else {
                    xattrs(&path)
                },
                link_group: group,
            },
        );
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        }
    }
    out
}

/// security.capability v2 with CAP_NET_BIND_SERVICE effective+permitted.
pub fn net_bind_capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // v2, effective
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted lo: CAP_NET_BIND_SERVICE
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable lo
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted hi
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable hi
    v
}

/// A POSIX ACL granting `uid` rw (user::rw-, user:UID:rw-, group::r--, mask::rw-, other::r--).
pub fn acl_for(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 6, uid),
        (4, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Builds the tree the round-trip tests use under `root`, with a canary
/// tree `outside` that symlinks and hard links point at.
pub fn build_tree(root: &Path, outside: &Path) {
    std::fs::create_dir_all(outside.join("secret")).unwrap();
    std::fs::write(outside.join("secret/passwd"), b"host file\n").unwrap();
    std::fs::write(outside.join("hardlinked-host-file"), b"host\n").unwrap();

    std::fs::create_dir_all(root.join("data/sub")).unwrap();
    std::fs::write(root.join("data/root-file"), b"owned by 0").unwrap();
    std::fs::write(root.join("data/pg-file"), b"owned by 999").unwrap();
    std::fs::write(root.join("data/app-file"), b"owned by 1000").unwrap();
    std::fs::write(root.join("data/sub/deep"), vec![7u8; 10_000]).unwrap();
    chown(&root.join("data/pg-file"), 999, 999);
    chown(&root.join("data/app-file"), 1000, 1000);
    chown(&root.join("data/sub"), 999, 999);

    std::os::unix::fs::symlink("root-file", root.join("data/rel-link")).unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret/passwd"),
        root.join("data/abs-link-outside"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", root.join("data/dangling")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("data/dir-link-outside")).unwrap();

    std::fs::hard_link(
        root.join("data/root-file"),
        root.join("data/inner-hardlink"),
    )
    .unwrap();
    std::fs::hard_link(
        outside.join("hardlinked-host-file"),
        root.join("data/host-hardlink"),
    )
    .unwrap();

    let setuid = root.join("data/setuid-bin");
    std::fs::write(&setuid, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let setgid = root.join("data/setgid-bin");
    std::fs::write(&setgid, b"#!/bin/sh\n").unwrap();
    chown(&setgid, 999, 999);
    std::fs::set_permissions(&setgid, std::fs::Permissions::from_mode(0o2755)).unwrap();

    let capped = root.join("data/capped-bin");
    std::fs::write(&capped, b"\x7fELF").unwrap();
    std::fs::set_permissions(&capped, std::fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::setxattr(
        &capped,
        "security.capability",
        &net_bind_capability(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();

    let with_acl = root.join("data/acl-file");
    std::fs::write(&with_acl, b"acl").unwrap();
    rustix::fs::setxattr(
        &with_acl,
        "system.posix_acl_access",
        &acl_for(999),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();

    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("data/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("data/null-device"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let sticky = root.join("data/sticky-dir");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::net::UnixListener::bind(root.join("data/socket")).unwrap();
}
