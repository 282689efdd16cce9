//! What the forward walk and the undo's reverse walk share: a change is
//! planned from an entry and a mapping, recorded in its manifest, synced,
//! and only then made; an entry is handled once per walk however often it
//! is seen; and an interrupted walk's records are finished, not redone.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use rustix::fs::FileType;
use rustix::io::Errno;

use super::index::{Index, Key, KeyHash, Rec};
use super::manifest::{Change, Header, ManifestWriter};
use super::walk::{Birth, Entry, same_inode};
use super::{error::RemapError, mapping::IdMapping, meta, report::Progress};

/// A change planned for an entry, held with the entry's descriptor until
/// its record is synced.
pub(super) struct Pending {
    pub entry: Entry,
    pub change: Change,
    pub new_acl: Option<Vec<u8>>,
    pub new_dacl: Option<Vec<u8>>,
    /// Already in the manifest (from an interrupted walk).
    pub recorded: bool,
}

/// Entries handled in a walk, sharded so the threads rarely wait on each
/// other: one seen twice (renamed across directories while the walk ran,
/// or walked again after a race) is never changed or counted twice.
struct Handled {
    shards: Vec<Mutex<HashSet<Key, KeyHash>>>,
}

impl Handled {
    const SHARDS: usize = 64;

    fn new() -> Self {
        Handled {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashSet::with_hasher(KeyHash)))
                .collect(),
        }
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, HashSet<Key, KeyHash>> {
        // Inode numbers are dense: their low bits spread well.
        let i = (key.1 ^ key.0.rotate_left(17)) as usize % Self::SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, key: (u64, u64)) -> bool {
        self.shard(key).insert(key)
    }

    fn contains(&self, key: (u64, u64)) -> bool {
        self.shard(key).contains(&key)
    }
}

/// Makes the manifest durable off the walk threads: a batch's records are
/// written (to the kernel) and given a ticket, and the thread goes on
/// walking while this one syncs; the batch's changes are made only once
/// its ticket is synced. One `fdatasync` covers every ticket written
/// before it began, whichever thread wrote them.
struct Syncer {
    state: Mutex<SyncState>,
    changed: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// The last ticket written, and the last made durable.
    requested: u64,
    synced: u64,
    failed: Option<String>,
    stop: bool,
}

impl Syncer {
    fn start(file: File) -> (Arc<Syncer>, JoinHandle<()>) {
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState::default()),
            changed: Condvar::new(),
        });
        let shared = syncer.clone();
        let handle = std::thread::spawn(move || shared.run(&file));
        (syncer, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, file: &File) {
        let mut state = self.lock();
        loop {
            if state.requested > state.synced && state.failed.is_none() {
                let target = state.requested;
                drop(state);
                let result = file.sync_data();
                state = self.lock();
                match result {
                    Ok(()) => state.synced = target,
                    Err(e) => state.failed = Some(e.to_string()),
                }
                self.changed.notify_all();
            } else if state.stop {
                return;
            } else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    fn request(&self, ticket: u64) {
        let mut state = self.lock();
        state.requested = state.requested.max(ticket);
        self.changed.notify_all();
    }

    /// Waits until `ticket` is durable.
    fn wait(&self, ticket: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        loop {
            if let Some(failed) = &state.failed {
                return Err(std::io::Error::other(failed.clone()));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }
}

/// Fault points of a walk (see `fleet_core::fault`): `synced` once a
/// batch is synced but before any of it is made, `made` after.
#[derive(Clone, Copy)]
pub(super) struct Faults {
    pub synced: &'static str,
    pub made: &'static str,
}

/// One journaled walk's shared state: its manifest, what an interrupted
/// walk recorded, and the counts (each entry once).
pub(super) struct Ledger<'a> {
    pub root: String,
    path: PathBuf,
    header: Header,
    /// Opened on the first commit: a walk with nothing to record leaves no
    /// file (the forward walk opens it at once, for its header).
    writer: Mutex<Option<ManifestWriter>>,
    /// Tickets handed out (under the writer's lock): see `Syncer`.
    tickets: AtomicU64,
    syncer: OnceLock<Arc<Syncer>>,
    syncer_thread: Mutex<Option<JoinHandle<()>>>,
    /// The manifest of an interrupted walk (first record of each entry:
    /// the one that holds its original state).
    pub recorded: Index,
    handled: Handled,
    pub entries: AtomicU64,
    pub changed: AtomicU64,
    pub kept: AtomicU64,
    pub bytes: AtomicU64,
    progress: &'a (dyn Fn(&Progress) + Sync),
    /// Changes per commit per thread: each pending change holds a
    /// descriptor, so this stays within the process's descriptor budget.
    pub batch: usize,
    /// The fault points (a test aid) counting changes synced, and made.
    faults: Faults,
}

impl<'a> Ledger<'a> {
    pub fn new(
        root: String,
        path: &Path,
        header: Header,
        recorded: Index,
        batch: usize,
        faults: Faults,
        progress: &'a (dyn Fn(&Progress) + Sync),
    ) -> Self {
        Ledger {
            root,
            path: path.to_path_buf(),
            header,
            writer: Mutex::new(None),
            tickets: AtomicU64::new(0),
            syncer: OnceLock::new(),
            syncer_thread: Mutex::new(None),
            recorded,
            handled: Handled::new(),
            entries: AtomicU64::new(0),
            changed: AtomicU64::new(0),
            kept: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            progress,
            batch,
            faults,
        }
    }

    pub fn io(&self, what: &str, errno: Errno) -> RemapError {
        RemapError::Io {
            what: what.to_string(),
            root: self.root.clone(),
            errno,
        }
    }

    fn manifest_error(&self, source: std::io::Error) -> RemapError {
        RemapError::Manifest {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Opens the manifest now (writing its header if it is new).
    pub fn open(&self) -> Result<(), RemapError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_open(&mut writer)
    }

    fn ensure_open(&self, writer: &mut Option<ManifestWriter>) -> Result<(), RemapError> {
        if writer.is_none() {
            let opened = ManifestWriter::open(&self.path, &self.header)
                .map_err(|e| self.manifest_error(e))?;
            let file = opened.sync_handle().map_err(|e| self.manifest_error(e))?;
            let (syncer, thread) = Syncer::start(file);
            if self.syncer.set(syncer).is_ok() {
                *self.syncer_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
            }
            *writer = Some(opened);
        }
        Ok(())
    }

    /// Writes records to the manifest (not yet durable) and asks for them
    /// to be synced: the ticket to wait for before making their changes.
    fn write<'c>(&self, records: impl Iterator<Item = &'c Change>) -> Result<u64, RemapError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_open(&mut writer)?;
        let Some(w) = writer.as_mut() else {
            return Err(self.manifest_error(std::io::Error::other("no manifest")));
        };
        for record in records {
            w.record(record).map_err(|e| self.manifest_error(e))?;
        }
        w.flush().map_err(|e| self.manifest_error(e))?;
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(syncer) = self.syncer.get() {
            syncer.request(ticket);
        }
        Ok(ticket)
    }

    /// Waits until the records of `ticket` are durable.
    fn synced(&self, ticket: u64) -> Result<(), RemapError> {
        match self.syncer.get() {
            Some(syncer) => syncer.wait(ticket).map_err(|e| self.manifest_error(e)),
            None => Err(self.manifest_error(std::io::Error::other("no manifest"))),
        }
    }

    /// Whether this is the first time the walk handles `key`.
    pub fn first_time(&self, key: (u64, u64)) -> bool {
        self.handled.insert(key)
    }

    pub fn handled(&self, key: (u64, u64)) -> bool {
        self.handled.contains(key)
    }

    /// Counts an entry seen (once: call after `first_time`).
    pub fn note(&self, entry: &Entry) {
        let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if entry.file_type() == FileType::RegularFile {
            self.bytes
                .fetch_add(entry.stat.st_size as u64, Ordering::Relaxed);
        }
        if entries.is_multiple_of(4096) {
            (self.progress)(&self.snapshot());
        }
    }

    pub fn snapshot(&self) -> Progress {
        Progress {
            entries: self.entries.load(Ordering::Relaxed),
            changed: self.changed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Marks the walk finished in its manifest.
    pub fn finish(&self, end: super::manifest::End) -> Result<(), RemapError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_open(&mut writer)?;
        match writer.as_mut() {
            Some(w) => w.finish(end).map_err(|e| self.manifest_error(e)),
            None => Ok(()),
        }
    }
}

impl Drop for Ledger<'_> {
    fn drop(&mut self) {
        if let Some(syncer) = self.syncer.get() {
            syncer.stop();
        }
        let thread = self
            .syncer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            thread.join().ok();
        }
    }
}

/// One thread's records waiting for their commit: the batch being filled,
/// and the one before it, recorded and being synced (so a thread walks on
/// while its last batch reaches the disk; both hold descriptors, hence
/// `batch_size`).
#[derive(Default)]
pub(super) struct Batch {
    pending: Vec<Pending>,
    kept: Vec<Change>,
    in_flight: Vec<Pending>,
    kept_in_flight: u64,
    /// The ticket of the batch in flight, if any.
    ticket: Option<u64>,
}

impl Batch {
    pub fn push(&mut self, ledger: &Ledger<'_>, pending: Pending) -> Result<(), RemapError> {
        self.pending.push(pending);
        if self.pending.len() >= ledger.batch {
            self.send(ledger)?;
        }
        Ok(())
    }

    pub fn keep(&mut self, ledger: &Ledger<'_>, record: Change) -> Result<(), RemapError> {
        self.kept.push(record);
        if self.kept.len() >= ledger.batch.max(1024) {
            self.send(ledger)?;
        }
        Ok(())
    }

    /// Records the batch being filled and has it synced; makes the changes
    /// of the batch before it, once that one is synced.
    fn send(&mut self, ledger: &Ledger<'_>) -> Result<(), RemapError> {
        if self.pending.is_empty() && self.kept.is_empty() {
            return Ok(());
        }
        let records = self.kept.iter().chain(
            self.pending
                .iter()
                .filter(|p| !p.recorded)
                .map(|p| &p.change),
        );
        let ticket = ledger.write(records)?;
        self.land(ledger)?;
        std::mem::swap(&mut self.pending, &mut self.in_flight);
        self.kept_in_flight = self.kept.len() as u64;
        self.kept.clear();
        self.ticket = Some(ticket);
        Ok(())
    }

    /// Waits for the batch in flight to be durable, then makes its changes.
    fn land(&mut self, ledger: &Ledger<'_>) -> Result<(), RemapError> {
        let Some(ticket) = self.ticket.take() else {
            return Ok(());
        };
        ledger.synced(ticket)?;
        // Test aid: a crash with this batch recorded and none of it made.
        fleet_core::fault::count(
            ledger.faults.synced,
            ledger.changed.load(Ordering::Relaxed) + self.in_flight.len() as u64,
        );
        ledger
            .kept
            .fetch_add(std::mem::take(&mut self.kept_in_flight), Ordering::Relaxed);
        // Drained, not taken: the next batch reuses the room.
        for pending in self.in_flight.drain(..) {
            apply(&pending, &|what, e| ledger.io(what, e))?;
            ledger.changed.fetch_add(1, Ordering::Relaxed);
        }
        // Test aid: a crash after N entries were recorded, synced and changed.
        fleet_core::fault::count(ledger.faults.made, ledger.changed.load(Ordering::Relaxed));
        Ok(())
    }

    /// Records everything held, syncs it, and only then changes it.
    pub fn commit(&mut self, ledger: &Ledger<'_>) -> Result<(), RemapError> {
        self.send(ledger)?;
        self.land(ledger)
    }
}

/// Makes a recorded change: the owner, then the setuid/setgid bits and
/// the capability chown clears (as recorded, read before), then the ACLs.
pub(super) fn apply(
    pending: &Pending,
    io: &dyn Fn(&str, Errno) -> RemapError,
) -> Result<(), RemapError> {
    let fd = &pending.entry.fd;
    let kind = pending.entry.file_type();
    let c = &pending.change;
    if (c.new_uid, c.new_gid) != (c.uid, c.gid) {
        meta::chown(fd, c.new_uid, c.new_gid).map_err(|e| io("chown", e))?;
        if kind == FileType::RegularFile && c.mode & meta::SET_ID_BITS != 0 {
            meta::chmod(fd, kind, c.mode).map_err(|e| io("chmod", e))?;
        }
        if let Some(cap) = &c.cap {
            let cap = hex::decode(cap).unwrap_or_default();
            meta::set_xattr(fd, kind, meta::CAPABILITY, &cap)
                .map_err(|e| io("setxattr security.capability", e))?;
        }
    }
    if let Some(acl) = &pending.new_acl {
        meta::set_xattr(fd, kind, meta::ACL_ACCESS, acl).map_err(|e| io("setxattr ACL", e))?;
    }
    if let Some(dacl) = &pending.new_dacl {
        meta::set_xattr(fd, kind, meta::ACL_DEFAULT, dacl)
            .map_err(|e| io("setxattr default ACL", e))?;
    }
    Ok(())
}

fn remap_acl(mapping: &IdMapping, old: &Option<Vec<u8>>) -> Option<Vec<u8>> {
    old.as_ref()
        .and_then(|v| meta::remap_acl(v, &|u| mapping.map_uid(u), &|g| mapping.map_gid(g)))
}

/// What `mapping` does to an entry.
pub(super) enum Plan {
    Change(Pending),
    /// Nothing changes; its ACLs as read (to tell a kept entry).
    Same {
        entry: Entry,
        acl: Option<Vec<u8>>,
        dacl: Option<Vec<u8>>,
    },
}

fn read_xattr(
    entry: &Entry,
    present: bool,
    name: &str,
    io: &dyn Fn(&str, Errno) -> RemapError,
) -> Result<Option<Vec<u8>>, RemapError> {
    if present {
        meta::get_xattr(entry, name).map_err(|e| io("getxattr", e))
    } else {
        Ok(None)
    }
}

/// Reads what a change of `entry` under `mapping` needs (its xattrs: an
/// entry whose owner stays may carry an ACL naming a mapped id) and plans
/// it, with the record of its state before.
pub(super) fn plan(
    entry: Entry,
    birth: Birth,
    mapping: &IdMapping,
    io: &dyn Fn(&str, Errno) -> RemapError,
) -> Result<Plan, RemapError> {
    let kind = entry.file_type();
    let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
    let target = mapping.target(uid, gid);
    let present = meta::present(&entry).map_err(|e| io("listxattr", e))?;
    let old_acl = read_xattr(&entry, present.acl, meta::ACL_ACCESS, io)?;
    let old_dacl = read_xattr(&entry, present.dacl, meta::ACL_DEFAULT, io)?;
    let (new_acl, new_dacl) = (remap_acl(mapping, &old_acl), remap_acl(mapping, &old_dacl));
    if target.is_none() && new_acl.is_none() && new_dacl.is_none() {
        return Ok(Plan::Same {
            entry,
            acl: old_acl,
            dacl: old_dacl,
        });
    }
    let (new_uid, new_gid) = target.unwrap_or((uid, gid));
    // chown clears the capability: read it before, put it back after.
    let cap = if kind == FileType::RegularFile && target.is_some() {
        read_xattr(&entry, present.cap, meta::CAPABILITY, io)?
    } else {
        None
    };
    let mut change = Change {
        p: None,
        px: None,
        dev: entry.stat.st_dev,
        ino: entry.stat.st_ino,
        uid,
        gid,
        mode: entry.stat.st_mode,
        new_uid,
        new_gid,
        cap: cap.map(hex::encode),
        acl: new_acl.as_ref().and(old_acl.as_ref()).map(hex::encode),
        dacl: new_dacl.as_ref().and(old_dacl.as_ref()).map(hex::encode),
        btime: birth.of(&entry.fd),
        kept: false,
    };
    change.set_path(&entry.path);
    Ok(Plan::Change(Pending {
        entry,
        change,
        new_acl,
        new_dacl,
        recorded: false,
    }))
}

/// The record of an entry left as it is.
pub(super) fn kept_record(entry: &Entry, birth: Birth) -> Change {
    let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
    let mut record = Change {
        p: None,
        px: None,
        dev: entry.stat.st_dev,
        ino: entry.stat.st_ino,
        uid,
        gid,
        mode: entry.stat.st_mode,
        new_uid: uid,
        new_gid: gid,
        cap: None,
        acl: None,
        dacl: None,
        btime: birth.of(&entry.fd),
        kept: true,
    };
    record.set_path(&entry.path);
    record
}

/// An entry found in the manifest of an interrupted walk.
pub(super) enum Resumed {
    /// Recorded, not yet made: make it, from the record (not from a
    /// half-applied state).
    Redo(Pending),
    /// Made before the interruption.
    Done,
    /// Recorded as kept.
    Kept,
    /// No longer the recorded inode or owner: left alone.
    Left,
}

pub(super) fn resume(
    entry: Entry,
    birth: Birth,
    previous: &Rec,
    index: &Index,
    mapping: &IdMapping,
) -> Resumed {
    if !same_inode(&entry, birth, previous.mode, previous.btime()) {
        return Resumed::Left;
    }
    if previous.kept {
        return Resumed::Kept;
    }
    let owner = (entry.stat.st_uid, entry.stat.st_gid);
    if owner == (previous.uid, previous.gid) {
        let Some(change) = index.change(previous) else {
            return Resumed::Left;
        };
        let decode = |v: &Option<String>| v.as_ref().and_then(|h| hex::decode(h).ok());
        let new_acl = remap_acl(mapping, &decode(&change.acl));
        let new_dacl = remap_acl(mapping, &decode(&change.dacl));
        Resumed::Redo(Pending {
            entry,
            change,
            new_acl,
            new_dacl,
            recorded: true,
        })
    } else if owner == (previous.new_uid, previous.new_gid) {
        Resumed::Done
    } else {
        Resumed::Left
    }
}
