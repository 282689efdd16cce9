//! Multiply-linked entries: changed only if, just before the change, every
//! one of their names is a verified name inside the tree (a container may
//! link a file it can reach from two mounts of one filesystem, and a name
//! outside the tree could be a host file's).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{Stat, fstat};
use rustix::io::Errno;

use super::walk::{self, Entry};

/// A non-directory with more than one name, as the walk saw it.
pub(super) struct HardLink {
    pub path: Vec<u8>,
    /// Its status when first seen (its owner, for the report).
    pub stat: Stat,
    pub names: Vec<(Arc<OwnedFd>, CString)>,
}

/// What each thread collects, merged once the walk has seen every name.
#[derive(Default)]
pub(super) struct HardLinks {
    pub links: HashMap<(u64, u64), HardLink>,
}

impl HardLinks {
    pub fn add(&mut self, entry: Entry) {
        let link = self.links.entry(entry.key()).or_insert(HardLink {
            path: entry.path.clone(),
            stat: entry.stat,
            names: Vec::new(),
        });
        if let Some(parent) = entry.parent {
            link.names.push(parent);
        }
    }

    pub fn merge(&mut self, other: HardLinks) {
        for (key, link) in other.links {
            match self.links.get_mut(&key) {
                Some(existing) => existing.names.extend(link.names),
                None => {
                    self.links.insert(key, link);
                }
            }
        }
    }
}

pub(super) fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// Whether every name of a multiply-linked entry is, right now, a name
/// inside the tree: each recorded name still resolves to the inode, and
/// the inode has exactly that many names. A container may add names in the
/// tree, never outside it; it may remove names, which this notices.
pub(super) fn all_names_inside(
    link: &HardLink,
    key: (u64, u64),
) -> Result<Option<(OwnedFd, Stat)>, Errno> {
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

/// Opens the entry by its first name, whatever its other names (when the
/// kernel's protected_hardlinks makes a link to a host file harmless).
pub(super) fn open_first(
    link: &HardLink,
    key: (u64, u64),
) -> Result<Option<(OwnedFd, Stat)>, Errno> {
    let Some((parent, name)) = link.names.first() else {
        return Ok(None);
    };
    let fd = walk::open_path_nofollow(parent.as_ref(), name.as_bytes())?;
    let stat = fstat(&fd)?;
    Ok(((stat.st_dev, stat.st_ino) == key).then_some((fd, stat)))
}
