//! The undo: one walk that restores every recorded entry and reverse-maps
//! the rest. An entry the forward manifest recorded as changed gets its
//! recorded owner, mode, capability and ACLs back; one it recorded as kept
//! is left alone; any other entry owned by a target id (or with an ACL
//! entry naming one) was made or replaced by the workload after the remap,
//! and gets the prior ids (`IdMapping::inverse`), its setuid/setgid bits
//! and capability kept as the forward walk keeps them. The reverse changes
//! are recorded and synced in the reverse manifest before they are made,
//! so an undo interrupted by a crash and run again finishes the job and
//! counts each entry once. Same safety rules as the forward walk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fleet_core::migration::Listed;
use rustix::fs::{FileType, fstat};
use rustix::io::Errno;

use super::error::RemapError;
use super::index::{Index, Rec};
use super::ledger::{Batch, Faults, Ledger, Plan, Resumed, plan, resume};
use super::links::{HardLinks, all_names_inside};
use super::manifest::{self, Header};
use super::mapping::IdMapping;
use super::meta;
use super::report::UndoReport;
use super::root::{display, open_root};
use super::walk::{self, Birth, Entry, Skipped, same_inode};

/// Restores one recorded entry: owner, then the mode bits chown cleared,
/// then the capability and ACLs (from the full record, when it has any).
fn restore(
    entry: &Entry,
    change: &Rec,
    index: &Index,
    io: &dyn Fn(&str, Errno) -> RemapError,
) -> Result<(), RemapError> {
    let kind = entry.file_type();
    let fd = &entry.fd;
    let owner_changes = (entry.stat.st_uid, entry.stat.st_gid) != (change.uid, change.gid);
    if owner_changes {
        meta::chown(fd, change.uid, change.gid).map_err(|e| io("chown", e))?;
    }
    if kind != FileType::Symlink {
        // chown clears setuid/setgid on regular files: then the mode must
        // be set again even if it looked right before.
        let cleared =
            owner_changes && kind == FileType::RegularFile && change.mode & meta::SET_ID_BITS != 0;
        if cleared || entry.stat.st_mode & 0o7777 != change.mode & 0o7777 {
            meta::chmod(fd, kind, change.mode).map_err(|e| io("chmod", e))?;
        }
    }
    if !change.xattrs {
        return Ok(());
    }
    let Some(full) = index.change(change) else {
        return Err(io("read the manifest record", Errno::IO));
    };
    for (name, value) in [
        (meta::CAPABILITY, &full.cap),
        (meta::ACL_ACCESS, &full.acl),
        (meta::ACL_DEFAULT, &full.dacl),
    ] {
        if let Some(value) = value {
            let value = hex::decode(value).unwrap_or_default();
            meta::set_xattr(fd, kind, name, &value).map_err(|e| io("setxattr", e))?;
        }
    }
    Ok(())
}

/// What the undo's threads share.
struct Known<'a> {
    /// The forward manifest: first record of each entry.
    wanted: &'a Index,
    /// The prior ids of target-owned entries; `None` when there is no
    /// reverse walk (see `reverse_skipped`).
    inverse: Option<&'a IdMapping>,
}

/// One thread's share of an undo.
struct UndoWorker<'s, 'a> {
    known: &'s Known<'s>,
    ledger: &'s Ledger<'a>,
    batch: Batch,
    impostors: Listed,
    raced: Listed,
    vanished: Listed,
    devices: Listed,
    refused: Listed,
    hardlinks: HardLinks,
    failure: Option<RemapError>,
}

impl<'s, 'a> UndoWorker<'s, 'a> {
    fn new(known: &'s Known<'s>, ledger: &'s Ledger<'a>) -> Self {
        UndoWorker {
            known,
            ledger,
            batch: Batch::default(),
            impostors: Listed::default(),
            raced: Listed::default(),
            vanished: Listed::default(),
            devices: Listed::default(),
            refused: Listed::default(),
            hardlinks: HardLinks::default(),
            failure: None,
        }
    }

    fn consider(&mut self, entry: Entry, birth: Birth) -> Result<(), RemapError> {
        let kind = entry.file_type();
        let device = matches!(kind, FileType::BlockDevice | FileType::CharacterDevice);
        let wanted = self.known.wanted;
        if let Some(change) = wanted.recs.get(&entry.key()) {
            let same = same_inode(&entry, birth, change.mode, change.btime());
            if same && change.kept {
                return Ok(());
            }
            if same && !device {
                restore(&entry, change, wanted, &|what, e| self.ledger.io(what, e))?;
                change.seen.store(true, Ordering::Relaxed);
                return Ok(());
            }
            // Its number was reused by a new file: that one is the
            // workload's, reverse-mapped like any other new entry. Said
            // once, however many times the undo walks.
            if !change.impostor.swap(true, Ordering::Relaxed) {
                self.impostors.push(display(&entry.path));
            }
        }
        let Some(inverse) = self.known.inverse else {
            return Ok(());
        };
        if device {
            // Never opened, never chowned: said.
            if inverse
                .target(entry.stat.st_uid, entry.stat.st_gid)
                .is_some()
            {
                self.devices.push(display(&entry.path));
            }
            return Ok(());
        }
        if kind != FileType::Directory && entry.stat.st_nlink > 1 {
            // Judged once every name in the tree has been seen.
            if !self.ledger.handled(entry.key()) {
                self.hardlinks.add(entry);
            }
            return Ok(());
        }
        self.reverse(entry, birth, inverse)
    }

    /// Reverse-maps an entry the forward manifest does not know.
    fn reverse(
        &mut self,
        entry: Entry,
        birth: Birth,
        inverse: &IdMapping,
    ) -> Result<(), RemapError> {
        let ledger = self.ledger;
        if let Some(previous) = ledger.recorded.recs.get(&entry.key()) {
            // Recorded by an interrupted undo.
            if !ledger.first_time(entry.key()) {
                return Ok(());
            }
            match resume(entry, birth, previous, &ledger.recorded, inverse) {
                Resumed::Redo(pending) => self.batch.push(ledger, pending)?,
                Resumed::Done => {
                    ledger.changed.fetch_add(1, Ordering::Relaxed);
                }
                Resumed::Kept | Resumed::Left => {}
            }
            return Ok(());
        }
        match plan(entry, birth, inverse, &|what, e| ledger.io(what, e))? {
            Plan::Change(pending) => {
                if ledger.first_time(pending.entry.key()) {
                    self.batch.push(ledger, pending)?;
                }
                Ok(())
            }
            Plan::Same { .. } => Ok(()),
        }
    }
}

impl walk::Visitor for UndoWorker<'_, '_> {
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
        self.visit_born(entry, None)
    }

    fn wants_birth_time(&self) -> bool {
        true
    }

    /// The last batch of this thread, committed on this thread.
    fn finish(&mut self) -> Result<(), Errno> {
        self.batch.commit(self.ledger).map_err(|e| {
            self.failure = Some(e);
            Errno::CANCELED
        })
    }

    fn visit_born(&mut self, entry: Entry, btime: Option<i128>) -> Result<bool, Errno> {
        let is_dir = entry.file_type() == FileType::Directory;
        match self.consider(entry, Birth::Known(btime)) {
            Ok(()) => Ok(is_dir),
            Err(e) => {
                self.failure = Some(e);
                Err(Errno::CANCELED)
            }
        }
    }

    fn skipped(&mut self, skipped: Skipped) {
        match skipped {
            Skipped::Raced(p) => self.raced.push(display(&p)),
            Skipped::Vanished(p) => self.vanished.push(display(&p)),
            Skipped::OtherFilesystem(_) => {}
        }
    }
}

/// Why an undo does not reverse-map, if it does not.
fn reverse_skipped(forward: &Index) -> Option<String> {
    if forward.header.is_none() {
        Some(
            "the manifest has no header (no mapping to reverse): recorded entries restored only"
                .into(),
        )
    } else if forward.end.is_none() {
        Some("the ownership walk never finished, so the workload never ran with the new ids: recorded entries restored only".into())
    } else {
        None
    }
}

/// Puts back every recorded owner, group, mode, capability and ACL under
/// `root`, finding entries by inode (wherever they were moved within the
/// tree) and checking each is still the recorded one; in the same walk,
/// gives every entry the forward manifest does not know and that belongs
/// to a target id the prior ids, recorded first in the reverse manifest
/// next to `manifest_path`. Safe to repeat, and to run again after a crash.
pub fn undo(root: &Path, manifest_path: &Path) -> Result<UndoReport, RemapError> {
    undo_with(root, manifest_path, &UndoOptions::default())
}

/// How an undo runs.
#[derive(Debug, Clone)]
pub struct UndoOptions {
    /// Reverse changes recorded and synced per commit (per thread).
    pub batch: usize,
    /// Walk threads; 0 means one per core.
    pub threads: usize,
}

impl Default for UndoOptions {
    fn default() -> Self {
        UndoOptions {
            batch: 8192,
            threads: 0,
        }
    }
}

/// `undo`, with its batch and threads chosen.
///
/// In order: the forward manifest read and the mapping to reverse chosen,
/// the reverse manifest of an interrupted undo read (nothing written yet),
/// then up to three passes, each recording its reverse changes before it
/// makes them.
pub fn undo_with(
    root: &Path,
    manifest_path: &Path,
    options: &UndoOptions,
) -> Result<UndoReport, RemapError> {
    let started = Instant::now();
    let root_text = root.display().to_string();
    let forward = Index::read(manifest_path).map_err(|e| manifest_error(manifest_path, e))?;
    let mut report = UndoReport {
        root: root_text.clone(),
        reverse_skipped: reverse_skipped(&forward),
        ..Default::default()
    };
    let header = forward.header.clone();
    let inverse = match (&header, &report.reverse_skipped) {
        (Some(h), None) => {
            let root_owner = forward.recs.get(&(h.device, h.ino)).map(|c| (c.uid, c.gid));
            Some(h.mapping.inverse(root_owner))
        }
        _ => None,
    };
    if forward.recs.is_empty() && inverse.is_none() {
        return Ok(report);
    }
    let reverse_path = manifest::reverse_path(manifest_path);
    let reverse_recorded = read_reverse(&reverse_path, header.as_ref())?;
    let reverse_header = header.unwrap_or(Header {
        version: 1,
        root: root_text.clone(),
        device: 0,
        ino: 0,
        mapping: IdMapping::default(),
    });
    let threads = match options.threads {
        0 => walk::threads(),
        n => n,
    };
    let ledger = Ledger::new(
        root_text.clone(),
        &reverse_path,
        reverse_header,
        reverse_recorded,
        super::forward::batch_size(options.batch, threads),
        Faults {
            synced: "agent:reverse-synced",
            made: "agent:reverse-entries",
        },
        &|_| {},
    );
    let known = Known {
        wanted: &forward,
        inverse: inverse.as_ref(),
    };
    let mut seen = Seen::default();
    for attempt in 0..3 {
        let raced = undo_pass(root, &known, &ledger, threads, &mut seen)?;
        let Some(first) = raced.paths.first() else {
            break;
        };
        if attempt == 2 {
            return Err(RemapError::KeptRacing {
                root: root_text,
                count: raced.count as usize,
                first: first.clone(),
            });
        }
        seen.raced.extend(raced);
    }
    let (restored, missing) = restored_and_missing(&forward);
    report.restored = restored;
    report.missing = missing;
    report.impostors = seen.impostors;
    report.reverse_mapped = ledger.changed.load(Ordering::Relaxed);
    report.refused_hardlinks = seen.refused;
    report.devices_left = seen.devices;
    report.vanished = seen.vanished;
    report.raced = seen.raced;
    if reverse_path.exists() {
        report.reverse_manifest = Some(reverse_path.display().to_string());
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn manifest_error(path: &Path, source: std::io::Error) -> RemapError {
    RemapError::Manifest {
        path: path.display().to_string(),
        source,
    }
}

/// What an interrupted undo recorded (empty without a reverse manifest);
/// refused when it is another root's than the forward manifest's.
fn read_reverse(reverse_path: &Path, header: Option<&Header>) -> Result<Index, RemapError> {
    if !reverse_path.exists() {
        return Ok(Index::empty());
    }
    let recorded = Index::read(reverse_path).map_err(|e| manifest_error(reverse_path, e))?;
    if let (Some(h), Some(r)) = (header, &recorded.header)
        && (h.root != r.root || (h.device, h.ino) != (r.device, r.ino))
    {
        return Err(RemapError::ManifestMismatch {
            path: reverse_path.display().to_string(),
        });
    }
    Ok(recorded)
}

/// What the passes of an undo saw and left, summed over the passes (raced:
/// over the passes that were followed by another).
#[derive(Default)]
struct Seen {
    impostors: Listed,
    devices: Listed,
    refused: Listed,
    vanished: Listed,
    raced: Listed,
}

/// One walk of the undo over the tree (the root opened again, and refused
/// when it is no longer the recorded one): what it left is added to
/// `seen`; what a racing container kept it from seeing is returned.
fn undo_pass(
    root: &Path,
    known: &Known<'_>,
    ledger: &Ledger<'_>,
    threads: usize,
    seen: &mut Seen,
) -> Result<Listed, RemapError> {
    let forward = known.wanted;
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(|e| ledger.io("stat", e))?;
    if let Some(h) = &forward.header
        && h.ino != 0
        && (h.device, h.ino) != (root_stat.st_dev, root_stat.st_ino)
    {
        return Err(RemapError::RootReplaced {
            root: ledger.root.clone(),
        });
    }
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    let count = if is_dir { threads } else { 1 };
    let mut workers: Vec<UndoWorker<'_, '_>> =
        (0..count).map(|_| UndoWorker::new(known, ledger)).collect();
    if is_dir {
        let result = walk::walk(root_fd, &mut workers);
        if let Some(e) = workers.iter_mut().find_map(|w| w.failure.take()) {
            // What was recorded stays recorded: a second undo resumes.
            for worker in &mut workers {
                worker.batch.commit(ledger).ok();
            }
            return Err(e);
        }
        result.map_err(|e| ledger.io("walk", e))?;
    } else if root_stat.st_nlink > 1
        && !forward
            .recs
            .contains_key(&(root_stat.st_dev, root_stat.st_ino))
    {
        // A single file with other names it cannot look for.
        if known
            .inverse
            .is_some_and(|i| i.target(root_stat.st_uid, root_stat.st_gid).is_some())
        {
            seen.refused.push(format!(
                "{} (a file with {} names; the others could be host files)",
                ledger.root, root_stat.st_nlink
            ));
        }
    } else {
        let entry = Entry {
            fd: root_fd,
            stat: root_stat,
            path: Vec::new(),
            parent: None,
        };
        match (forward.recs.get(&entry.key()), known.inverse) {
            (Some(_), _) | (None, None) => workers[0].consider(entry, Birth::Unknown)?,
            (None, Some(inverse)) => workers[0].reverse(entry, Birth::Unknown, inverse)?,
        }
    }
    for worker in &mut workers {
        worker.batch.commit(ledger)?;
    }
    let mut hardlinks = HardLinks::default();
    let mut raced = Listed::default();
    for worker in workers {
        seen.impostors.extend(worker.impostors);
        raced.extend(worker.raced);
        seen.vanished.extend(worker.vanished);
        seen.devices.extend(worker.devices);
        seen.refused.extend(worker.refused);
        hardlinks.merge(worker.hardlinks);
    }
    if let Some(inverse) = known.inverse {
        reverse_hardlinks(known, ledger, inverse, hardlinks, &mut seen.refused)?;
    }
    Ok(raced)
}

/// Multiply-linked entries, judged once every name of theirs in the tree
/// has been seen: reverse-mapped when all their names are inside, else
/// left (and said, when a target id owns them).
fn reverse_hardlinks(
    known: &Known<'_>,
    ledger: &Ledger<'_>,
    inverse: &IdMapping,
    hardlinks: HardLinks,
    refused: &mut Listed,
) -> Result<(), RemapError> {
    let mut finisher = UndoWorker::new(known, ledger);
    for (key, link) in hardlinks.links {
        if ledger.handled(key) {
            continue;
        }
        match all_names_inside(&link, key).map_err(|e| ledger.io("verify hard link", e))? {
            Some((fd, stat)) => finisher.reverse(
                Entry {
                    fd,
                    stat,
                    path: link.path,
                    parent: None,
                },
                Birth::Unknown,
                inverse,
            )?,
            None => {
                if inverse.target(link.stat.st_uid, link.stat.st_gid).is_some()
                    && ledger.first_time(key)
                {
                    refused.push(format!(
                        "{} (not all of its names are in the tree; the others could be host files)",
                        display(&link.path)
                    ));
                }
            }
        }
    }
    finisher.batch.commit(ledger)
}

/// How many recorded changes were put back, and the recorded entries no
/// longer in the tree.
fn restored_and_missing(forward: &Index) -> (u64, Listed) {
    let mut restored = 0;
    let mut missing = Listed::default();
    for rec in forward.recs.values().filter(|r| !r.kept) {
        if rec.seen.load(Ordering::Relaxed) {
            restored += 1;
        } else if let Some(change) = forward.change(rec) {
            missing.push(change.path_display());
        }
    }
    (restored, missing)
}
