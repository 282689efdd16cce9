//! The forward walk: old ids → new ids, every change recorded and synced
//! before it is made, and every entry left as it is that already belongs
//! to a target id recorded as kept. Walked again (at most three passes in
//! all) while a racing container keeps entries from being seen; resumed
//! from its manifest after a crash. Each entry is counted once.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fleet_core::migration::Listed;
use rustix::fs::{FileType, Stat, fstat};
use rustix::io::Errno;

use super::error::RemapError;
use super::index::Index;
use super::ledger::{Batch, Faults, Ledger, Plan, Resumed, kept_record, plan, resume};
use super::links::{HardLinks, all_names_inside, open_first, protected_hardlinks};
use super::manifest::{self, End, Header};
use super::mapping::{IdMapping, Targets};
use super::report::{Progress, RemapReport};
use super::root::{display, open_root, preflight};
use super::walk::{self, Birth, Entry, Skipped};

/// How a remap walks.
#[derive(Debug, Clone)]
pub struct RemapOptions {
    pub mapping: IdMapping,
    /// Allow a hard-linked file whose other names are outside the tree,
    /// when the kernel has `fs.protected_hardlinks = 1`.
    pub allow_protected_hardlinks: bool,
    /// Skip the whole tree when its root already has this owner (like
    /// Kubernetes' `fsGroupChangePolicy: OnRootMismatch`).
    pub skip_if_root_owned_by: Option<(u32, u32)>,
    /// Changes recorded and synced per commit.
    pub batch: usize,
    /// Walk threads; 0 means one per core.
    pub threads: usize,
    /// The (device, inode) the root had when the step was decided: a root
    /// that is now another directory is refused.
    pub expect_root: Option<(u64, u64)>,
}

/// What the passes of one remap share besides the ledger.
struct Context<'a> {
    options: &'a RemapOptions,
    targets: Targets,
    /// Kept records are written only until the walk has finished once:
    /// after that, a target-owned entry it does not know is the workload's.
    record_kept: bool,
}

/// One thread's share of a pass.
struct Worker<'s, 'a> {
    ledger: &'s Ledger<'a>,
    cx: &'s Context<'s>,
    batch: Batch,
    report: RemapReport,
    /// Mount points met (few: each is a mount), every one, so that the
    /// passes of a walk count each once.
    other_filesystems: Vec<String>,
    hardlinks: HardLinks,
    failure: Option<RemapError>,
}

impl<'s, 'a> Worker<'s, 'a> {
    fn new(ledger: &'s Ledger<'a>, cx: &'s Context<'s>) -> Self {
        Worker {
            ledger,
            cx,
            batch: Batch::default(),
            report: RemapReport::default(),
            other_filesystems: Vec::new(),
            hardlinks: HardLinks::default(),
            failure: None,
        }
    }

    fn mapping(&self) -> &IdMapping {
        &self.cx.options.mapping
    }

    fn consider(&mut self, entry: Entry, birth: Birth) -> Result<(), RemapError> {
        let kind = entry.file_type();
        if kind != FileType::Directory && entry.stat.st_nlink > 1 {
            // Judged once every name in the tree has been seen.
            if !self.ledger.handled(entry.key()) {
                self.hardlinks.add(entry);
            }
            return Ok(());
        }
        self.consider_once(entry, birth)
    }

    fn keep(&mut self, entry: &Entry, birth: Birth) -> Result<(), RemapError> {
        if self.cx.record_kept {
            self.batch.keep(self.ledger, kept_record(entry, birth))?;
        }
        Ok(())
    }

    fn consider_once(&mut self, entry: Entry, birth: Birth) -> Result<(), RemapError> {
        let ledger = self.ledger;
        if !ledger.first_time(entry.key()) {
            return Ok(());
        }
        ledger.note(&entry);
        let (uid, gid) = (entry.stat.st_uid, entry.stat.st_gid);
        if matches!(
            entry.file_type(),
            FileType::BlockDevice | FileType::CharacterDevice
        ) {
            // Never handed to a service user, never opened.
            if self.mapping().target(uid, gid).is_some() {
                self.report.devices_left.push(display(&entry.path));
            } else if self.cx.targets.owns(uid, gid)
                && !ledger.recorded.recs.contains_key(&entry.key())
            {
                self.keep(&entry, birth)?;
            }
            return Ok(());
        }
        if let Some(previous) = ledger.recorded.recs.get(&entry.key()) {
            // Resuming: recorded before the crash; never remapped twice.
            self.report.resumed += 1;
            match resume(entry, birth, previous, &ledger.recorded, self.mapping()) {
                Resumed::Redo(pending) => self.batch.push(ledger, pending)?,
                Resumed::Done => {
                    ledger.changed.fetch_add(1, Ordering::Relaxed);
                }
                Resumed::Kept => {
                    ledger.kept.fetch_add(1, Ordering::Relaxed);
                }
                Resumed::Left => {}
            }
            return Ok(());
        }
        match plan(entry, birth, self.mapping(), &|what, e| ledger.io(what, e))? {
            Plan::Change(pending) => self.batch.push(ledger, pending),
            Plan::Same { entry, acl, dacl } => {
                let targets = &self.cx.targets;
                if targets.owns(uid, gid) || targets.named_in(&acl) || targets.named_in(&dacl) {
                    self.keep(&entry, birth)?;
                }
                Ok(())
            }
        }
    }

    /// A multiply-linked entry whose names are not all inside: left, and
    /// recorded as kept when it already belongs to a target id.
    fn refuse(&mut self, key: (u64, u64), path: &[u8], stat: &Stat) -> Result<(), RemapError> {
        if !self.ledger.first_time(key) {
            return Ok(());
        }
        self.ledger.entries.fetch_add(1, Ordering::Relaxed);
        self.report.refused_hardlinks.push(format!(
            "{} (not all of its names are in the tree; the others could be host files)",
            display(path)
        ));
        if self.cx.record_kept
            && self.cx.targets.owns(stat.st_uid, stat.st_gid)
            && !self.ledger.recorded.recs.contains_key(&key)
        {
            let mut record = manifest::Change {
                p: None,
                px: None,
                dev: key.0,
                ino: key.1,
                uid: stat.st_uid,
                gid: stat.st_gid,
                mode: stat.st_mode,
                new_uid: stat.st_uid,
                new_gid: stat.st_gid,
                cap: None,
                acl: None,
                dacl: None,
                btime: None,
                kept: true,
            };
            record.set_path(path);
            self.batch.keep(self.ledger, record)?;
        }
        Ok(())
    }
}

impl walk::Visitor for Worker<'_, '_> {
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
            Skipped::OtherFilesystem(p) => self.other_filesystems.push(display(&p)),
            Skipped::Raced(p) => self.report.raced.push(display(&p)),
            Skipped::Vanished(p) => self.report.vanished.push(display(&p)),
        }
    }
}

fn threads(options: &RemapOptions) -> usize {
    if options.threads == 0 {
        walk::threads()
    } else {
        options.threads
    }
}

/// A batch size that keeps every thread's held descriptors (two batches
/// each: one filling, one being synced) within half of the soft
/// RLIMIT_NOFILE (the walk itself needs some too).
pub(super) fn batch_size(wanted: usize, threads: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize;
    wanted.clamp(1, (limit / 4 / threads.max(1)).max(16))
}

/// Remaps the tree at `root` (an absolute path without symlinks; already
/// cleared by `guard`), recording every change in `manifest_path` first.
/// Resumes an interrupted walk from its manifest; walks again (at most
/// three passes) while a racing container keeps entries from being seen.
///
/// In order: the root opened and checked and the manifest read (nothing
/// written yet), the manifest opened (its header synced), the passes, and
/// only once nothing raced the end line.
pub fn remap(
    root: &Path,
    manifest_path: &Path,
    options: &RemapOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<RemapReport, RemapError> {
    let started = Instant::now();
    options.mapping.validate()?;
    let root_text = root.display().to_string();
    let (root_fd, root_stat) = open_expected_root(root, options)?;
    let header = Header {
        version: 1,
        root: root_text.clone(),
        device: root_stat.st_dev,
        ino: root_stat.st_ino,
        mapping: options.mapping.clone(),
    };
    let recorded = read_manifest(manifest_path, &header)?;
    let finished_before = recorded.end.is_some();
    if recorded.recs.is_empty()
        && !finished_before
        && options.skip_if_root_owned_by == Some((root_stat.st_uid, root_stat.st_gid))
    {
        // Not re-owned by this run: no manifest, nothing for an undo.
        return Ok(RemapReport {
            root: root_text,
            skipped_root_already_owned: true,
            ..Default::default()
        });
    }
    let workers = if FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory {
        threads(options)
    } else {
        1
    };
    let ledger = Ledger::new(
        root_text.clone(),
        manifest_path,
        header,
        recorded,
        batch_size(options.batch, workers),
        Faults {
            synced: "agent:ownership-synced",
            made: "agent:ownership-entries",
        },
        progress,
    );
    ledger.open()?;
    let cx = Context {
        options,
        targets: Targets::of(&options.mapping),
        record_kept: !finished_before,
    };
    let mut report = walk_passes(root, &ledger, &cx, root_fd, root_stat, workers)?;
    report.entries = ledger.entries.load(Ordering::Relaxed);
    report.changed = ledger.changed.load(Ordering::Relaxed);
    report.kept = ledger.kept.load(Ordering::Relaxed);
    report.bytes = ledger.bytes.load(Ordering::Relaxed);
    if let Some(first) = report.raced.paths.first() {
        return Err(RemapError::KeptRacing {
            root: root_text,
            count: report.raced.count as usize,
            first: first.clone(),
        });
    }
    // Every change and kept entry is synced: from now on, a target-owned
    // entry this manifest does not know is the workload's.
    ledger.finish(End {
        entries: report.entries,
        changed: report.changed,
        kept: report.kept,
    })?;
    (progress)(&ledger.snapshot());
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The root, opened and cleared by `preflight`; refused when it is no
/// longer the directory the step was decided for.
fn open_expected_root(
    root: &Path,
    options: &RemapOptions,
) -> Result<(rustix::fd::OwnedFd, Stat), RemapError> {
    let root_text = root.display().to_string();
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(|errno| RemapError::Open {
        root: root_text.clone(),
        errno,
    })?;
    if let Some(expected) = options.expect_root
        && expected != (root_stat.st_dev, root_stat.st_ino)
    {
        return Err(RemapError::RootReplaced { root: root_text });
    }
    preflight(&root_fd, root, &root_stat)?;
    Ok((root_fd, root_stat))
}

/// What an interrupted walk recorded (empty without a manifest); refused
/// when the manifest is another root's or another mapping's.
fn read_manifest(manifest_path: &Path, header: &Header) -> Result<Index, RemapError> {
    if !manifest_path.exists() {
        return Ok(Index::empty());
    }
    let recorded = Index::read(manifest_path).map_err(|source| RemapError::Manifest {
        path: manifest_path.display().to_string(),
        source,
    })?;
    if let Some(h) = &recorded.header
        && (h.root != header.root || h.mapping != header.mapping)
    {
        return Err(RemapError::ManifestMismatch {
            path: manifest_path.display().to_string(),
        });
    }
    Ok(recorded)
}

/// At most three passes, again while a racing container keeps entries
/// from being seen; each pass after the first opens the root again and
/// refuses one that is now another directory. The report sums the passes
/// (the entries raced: the last pass's).
fn walk_passes(
    root: &Path,
    ledger: &Ledger<'_>,
    cx: &Context<'_>,
    root_fd: rustix::fd::OwnedFd,
    root_stat: Stat,
    workers: usize,
) -> Result<RemapReport, RemapError> {
    let mut report = RemapReport {
        root: ledger.root.clone(),
        ..Default::default()
    };
    let mut root_fd = Some(root_fd);
    let mut other_filesystems = Vec::new();
    for pass in 0..3 {
        let fd = match root_fd.take() {
            Some(fd) => fd,
            None => {
                let fd = open_root(root)?;
                let stat = fstat(&fd).map_err(|e| ledger.io("stat", e))?;
                if (stat.st_dev, stat.st_ino) != (root_stat.st_dev, root_stat.st_ino) {
                    return Err(RemapError::RootReplaced {
                        root: ledger.root.clone(),
                    });
                }
                fd
            }
        };
        let (once, mounts) = run_pass(ledger, cx, fd, root_stat, workers)?;
        other_filesystems.extend(mounts);
        report.resumed += once.resumed;
        report.devices_left.extend(once.devices_left);
        report.vanished.extend(once.vanished);
        report.refused_hardlinks.extend(once.refused_hardlinks);
        report.raced = once.raced;
        if report.raced.is_empty() || pass == 2 {
            break;
        }
    }
    // Walked again, a tree shows its mount points again: each counts once.
    report.other_filesystems = Listed::of(other_filesystems);
    Ok(report)
}

/// One walk over the tree; what an earlier pass handled is not handled
/// again.
fn run_pass(
    ledger: &Ledger<'_>,
    cx: &Context<'_>,
    root_fd: rustix::fd::OwnedFd,
    root_stat: Stat,
    threads: usize,
) -> Result<(RemapReport, Vec<String>), RemapError> {
    let root_text = ledger.root.clone();
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    let mut workers: Vec<Worker<'_, '_>> = (0..threads).map(|_| Worker::new(ledger, cx)).collect();
    if is_dir {
        let result = walk::walk(root_fd, &mut workers);
        if let Some(failure) = workers.iter_mut().find_map(|w| w.failure.take()) {
            // What was recorded stays recorded: the undo can use it.
            for worker in &mut workers {
                worker.batch.commit(ledger).ok();
            }
            return Err(failure);
        }
        result.map_err(|e| ledger.io("walk", e))?;
    } else if root_stat.st_nlink > 1 {
        // A single file mounted from the host with other names: they
        // cannot be looked for, so it is never given away.
        if ledger.first_time((root_stat.st_dev, root_stat.st_ino)) {
            workers[0].report.refused_hardlinks.push(format!(
                "{root_text} (a file with {} names; the others could be host files)",
                root_stat.st_nlink
            ));
        }
    } else {
        workers[0].consider(
            Entry {
                fd: root_fd,
                stat: root_stat,
                path: Vec::new(),
                parent: None,
            },
            Birth::Unknown,
        )?;
    }
    for worker in &mut workers {
        worker.batch.commit(ledger)?;
    }
    // Merge what the threads saw; multiply-linked entries are judged only
    // now, once every name of theirs in the tree has been seen.
    let mut report = RemapReport::default();
    let mut other_filesystems = Vec::new();
    let mut hardlinks = HardLinks::default();
    for worker in workers {
        let r = worker.report;
        other_filesystems.extend(worker.other_filesystems);
        report.resumed += r.resumed;
        report.raced.extend(r.raced);
        report.devices_left.extend(r.devices_left);
        report.vanished.extend(r.vanished);
        report.refused_hardlinks.extend(r.refused_hardlinks);
        hardlinks.merge(worker.hardlinks);
    }
    let allow_outside = protected_hardlinks() && cx.options.allow_protected_hardlinks;
    let mut finisher = Worker::new(ledger, cx);
    for (key, link) in hardlinks.links {
        if ledger.handled(key) {
            continue;
        }
        let inside = all_names_inside(&link, key).map_err(|e| ledger.io("verify hard link", e))?;
        let opened = match inside {
            Some(opened) => Some(opened),
            None if allow_outside => {
                open_first(&link, key).map_err(|e| ledger.io("open hard link", e))?
            }
            None => {
                finisher.refuse(key, &link.path, &link.stat)?;
                continue;
            }
        };
        match opened {
            Some((fd, stat)) => finisher.consider_once(
                Entry {
                    fd,
                    stat,
                    path: link.path,
                    parent: None,
                },
                Birth::Unknown,
            )?,
            None => report.raced.push(display(&link.path)),
        }
    }
    finisher.batch.commit(ledger)?;
    report.resumed += finisher.report.resumed;
    report
        .refused_hardlinks
        .extend(finisher.report.refused_hardlinks);
    report.devices_left.extend(finisher.report.devices_left);
    Ok((report, other_filesystems))
}
