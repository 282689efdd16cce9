//! Metadata operations on an opened entry, never by path: ownership,
//! mode, extended attributes (file capabilities, POSIX ACLs).
//!
//! Entries are held as `O_PATH` descriptors, on which the f*xattr and
//! fchmod calls do not work; the kernel's own handle of the descriptor,
//! `/proc/self/fd/N`, names exactly that inode (it cannot be swapped).
//! Symlinks get only lchown semantics: following their /proc handle would
//! reach the link's target, so their mode and xattrs are never touched.
//!
//! Reading xattrs through /proc costs more than the chown itself, so they
//! are read by name relative to the verified parent directory, without
//! following a symlink (`sys`), when the kernel can. If a racing container
//! swaps the name at that instant, the values read are those of another
//! entry of its own tree, which it could have set anyway; every *write*
//! still goes through the descriptor of the inode that was checked.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, XattrFlags, chmodat, chownat, getxattr, listxattr, setxattr,
};
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;

use super::sys;
use super::walk::Entry;

pub const CAPABILITY: &str = "security.capability";
pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

/// Bits chown clears on a regular file, restored afterwards.
pub const SET_ID_BITS: u32 = 0o6000;

fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY of intent, not memory: AT_EMPTY_PATH acts on the inode the
    // descriptor holds (for an O_PATH symlink, the symlink itself).
    chownat(
        fd,
        "",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH,
    )
}

/// Sets the permission bits (including setuid/setgid/sticky).
pub fn chmod(fd: &OwnedFd, kind: FileType, mode: u32) -> Result<(), Errno> {
    let mode = Mode::from_raw_mode(mode & 0o7777);
    match kind {
        FileType::Symlink => Ok(()),
        _ => chmodat(CWD, proc_path(fd), mode, AtFlags::empty()),
    }
}

/// Lists the entry's xattr names into `buf` (the kernel's NUL-separated
/// form), relative to its verified parent when the kernel can.
fn list_into(entry: &Entry, buf: &mut [u8]) -> Result<usize, Errno> {
    match &entry.parent {
        Some((dir, name)) if !sys::unsupported() => match sys::list_at(dir.as_fd(), name, buf) {
            // Not supported, or the name moved under a racing container:
            // ask the inode itself.
            Err(Errno::NOSYS | Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                listxattr(proc_path(&entry.fd), buf)
            }
            other => other,
        },
        _ => listxattr(proc_path(&entry.fd), buf),
    }
}

/// The names of the entry's extended attributes.
pub fn list_xattrs(entry: &Entry) -> Result<Vec<String>, Errno> {
    let kind = entry.file_type();
    if kind == FileType::Symlink {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match list_into(entry, &mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

/// Which of the xattrs an ownership change must carry over an entry has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    pub acl: bool,
    pub dacl: bool,
    pub cap: bool,
}

impl Present {
    fn of<'n>(names: impl Iterator<Item = &'n [u8]>) -> Self {
        let mut present = Present::default();
        for name in names {
            match name {
                n if n == ACL_ACCESS.as_bytes() => present.acl = true,
                n if n == ACL_DEFAULT.as_bytes() => present.dacl = true,
                n if n == CAPABILITY.as_bytes() => present.cap = true,
                _ => {}
            }
        }
        present
    }
}

/// `list_xattrs`, reduced to what an ownership change needs, without a
/// heap allocation for the usual entry that has few or none.
pub fn present(entry: &Entry) -> Result<Present, Errno> {
    if entry.file_type() == FileType::Symlink {
        return Ok(Present::default());
    }
    let mut buf = [0u8; 512];
    match list_into(entry, &mut buf) {
        Ok(n) => Ok(Present::of(buf[..n].split(|b| *b == 0))),
        Err(Errno::NOTSUP) => Ok(Present::default()),
        Err(Errno::RANGE) => {
            let names = list_xattrs(entry)?;
            Ok(Present::of(names.iter().map(|n| n.as_bytes())))
        }
        Err(e) => Err(e),
    }
}

pub fn get_xattr(entry: &Entry, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    if entry.file_type() == FileType::Symlink {
        return Ok(None);
    }
    let attr = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let result = match &entry.parent {
            Some((dir, file)) if !sys::unsupported() => {
                match sys::get_at(dir.as_fd(), file, &attr, &mut buf[..]) {
                    Err(Errno::NOSYS | Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                        getxattr(proc_path(&entry.fd), name, &mut buf[..])
                    }
                    other => other,
                }
            }
            _ => getxattr(proc_path(&entry.fd), name, &mut buf[..]),
        };
        match result {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

pub fn set_xattr(fd: &OwnedFd, kind: FileType, name: &str, value: &[u8]) -> Result<(), Errno> {
    match kind {
        FileType::Symlink => Ok(()),
        _ => setxattr(proc_path(fd), name, value, XattrFlags::empty()),
    }
}

const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Remaps the named-user and named-group entries of a POSIX ACL in its
/// xattr form (version 2, then {tag u16, perm u16, id u32} little-endian).
/// `None` when nothing changes or the value is not an ACL we understand.
pub fn remap_acl(
    value: &[u8],
    map_uid: &dyn Fn(u32) -> Option<u32>,
    map_gid: &dyn Fn(u32) -> Option<u32>,
) -> Option<Vec<u8>> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes([value[0], value[1], value[2], value[3]]) != 2 {
        return None;
    }
    let mut out = value.to_vec();
    let mut changed = false;
    for entry in out[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let mapped = match tag {
            ACL_USER => map_uid(id),
            ACL_GROUP => map_gid(id),
            _ => None,
        };
        if let Some(new) = mapped.filter(|n| *n != id) {
            entry[4..8].copy_from_slice(&new.to_le_bytes());
            changed = true;
        }
    }
    changed.then_some(out)
}

/// The ids a POSIX ACL (xattr form) names: its named users, its named
/// groups.
pub fn acl_named_ids(value: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    if value.len() >= 4 && (value.len() - 4).is_multiple_of(8) {
        for entry in value[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            match tag {
                ACL_USER => users.push(id),
                ACL_GROUP => groups.push(id),
                _ => {}
            }
        }
    }
    (users, groups)
}

/// Whether a POSIX ACL (xattr form) has a named-user entry `user` accepts
/// or a named-group entry `group` accepts.
pub fn acl_names(value: &[u8], user: &dyn Fn(u32) -> bool, group: &dyn Fn(u32) -> bool) -> bool {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return false;
    }
    value[4..].chunks_exact(8).any(|entry| {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        match tag {
            ACL_USER => user(id),
            ACL_GROUP => group(id),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_named_acl_entries_only() {
        // user::rw-, user:1000:rw-, group::r--, group:999:r--, mask::rw-, other::r--
        let acl: Vec<u8> = [
            2u32.to_le_bytes().to_vec(),
            [1u16.to_le_bytes(), 6u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [2u16.to_le_bytes(), 6u16.to_le_bytes()].concat(),
            1000u32.to_le_bytes().to_vec(),
            [4u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [8u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            999u32.to_le_bytes().to_vec(),
            [0x10u16.to_le_bytes(), 6u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [0x20u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
        ]
        .concat();
        let mapped = remap_acl(&acl, &|u| (u == 1000).then_some(2000), &|g| {
            (g == 999).then_some(2999)
        })
        .unwrap();
        assert_eq!(&mapped[4 + 8 + 4..4 + 8 + 8], &2000u32.to_le_bytes());
        assert_eq!(&mapped[4 + 24 + 4..4 + 24 + 8], &2999u32.to_le_bytes());
        assert_eq!(mapped.len(), acl.len());
        assert!(
            remap_acl(&acl, &|_| None, &|_| None).is_none(),
            "nothing to change"
        );
        assert!(remap_acl(b"junk", &|_| Some(1), &|_| Some(1)).is_none());
        assert!(acl_names(&acl, &|u| u == 1000, &|_| false));
        assert!(acl_names(&acl, &|_| false, &|g| g == 999));
        assert!(!acl_names(&acl, &|u| u == 999, &|g| g == 1000));
    }
}
