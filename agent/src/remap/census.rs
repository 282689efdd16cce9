//! Every id a tree uses: its entries' owners and the ids its POSIX ACLs
//! name (access and default), walked with the same rules as the remap
//! (`walk`). A rootless move maps each of them through two user
//! namespaces before anything changes, so an id the target cannot map is
//! refused with its paths at plan time, never turned into 65534.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::error::RemapError;
use super::meta;
use super::root::{display, open_root};
use super::walk::{self, Entry, Skipped, Visitor};

const ACL_NAMES: [&str; 2] = [meta::ACL_ACCESS, meta::ACL_DEFAULT];

/// The ids a tree uses, each with one path that uses it (for the error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdCensus {
    pub uids: BTreeMap<u32, String>,
    pub gids: BTreeMap<u32, String>,
}

impl IdCensus {
    pub fn merge(&mut self, other: IdCensus) {
        for (id, path) in other.uids {
            self.uids.entry(id).or_insert(path);
        }
        for (id, path) in other.gids {
            self.gids.entry(id).or_insert(path);
        }
    }
}

struct Counter {
    found: Arc<Mutex<IdCensus>>,
    local: IdCensus,
}

impl Visitor for Counter {
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
        let path = display(&entry.path);
        self.local
            .uids
            .entry(entry.stat.st_uid)
            .or_insert_with(|| path.clone());
        self.local
            .gids
            .entry(entry.stat.st_gid)
            .or_insert_with(|| path.clone());
        if entry.file_type() != FileType::Symlink {
            let present = meta::present(&entry)?;
            for (name, here) in ACL_NAMES.iter().zip([present.acl, present.dacl]) {
                if !here {
                    continue;
                }
                if let Some(value) = meta::get_xattr(&entry, name)? {
                    let (users, groups) = meta::acl_named_ids(&value);
                    for uid in users {
                        self.local
                            .uids
                            .entry(uid)
                            .or_insert_with(|| format!("{path} (ACL)"));
                    }
                    for gid in groups {
                        self.local
                            .gids
                            .entry(gid)
                            .or_insert_with(|| format!("{path} (ACL)"));
                    }
                }
            }
        }
        Ok(entry.file_type() == FileType::Directory)
    }

    fn skipped(&mut self, _skipped: Skipped) {}

    fn finish(&mut self) -> Result<(), Errno> {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.merge(std::mem::take(&mut self.local));
        Ok(())
    }
}

/// The ids used under `root`.
pub fn census(root: &Path) -> Result<IdCensus, RemapError> {
    let fd = open_root(root)?;
    let found = Arc::new(Mutex::new(IdCensus::default()));
    let mut counters: Vec<Counter> = (0..walk::threads())
        .map(|_| Counter {
            found: found.clone(),
            local: IdCensus::default(),
        })
        .collect();
    walk::walk(fd, &mut counters).map_err(|errno| RemapError::Io {
        what: "reading the ids in use".into(),
        root: root.display().to_string(),
        errno,
    })?;
    drop(counters);
    let census = found.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(census)
}
