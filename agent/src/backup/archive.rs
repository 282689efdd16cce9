//! One mount's checkpoint: a zstd-compressed tar of its content, and a
//! manifest with everything the tar format would lose or blur (exact mode
//! bits, every xattr including file capabilities and ACLs, hard-link
//! groups, device numbers, nanosecond mtimes, a sha256 per file).
//!
//! Reading uses the same walk as the ownership remap: no symlink is ever
//! followed, nothing outside the mount is read, and a regular file is
//! reopened for reading only through the descriptor of the inode that was
//! checked to be a regular file (never a device a racing container swapped
//! in).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps, fstat, linkat, mkdirat, mknodat,
    openat, readlinkat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::remap::manifest::{decode_path, encode_path};
use crate::remap::meta;
use crate::remap::walk::{self, Entry, Skipped, Visitor};

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

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// One entry of a mount, as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub px: Option<String>,
    /// d, f, l (symlink), h (hard link to `link`), p (fifo), s (socket), c, b.
    pub kind: char,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: i64,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, or the first name of a hard-link group (hex when not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

fn decode_link(link: &str) -> Vec<u8> {
    link.strip_prefix("hex:")
        .and_then(|h| hex::decode(h).ok())
        .unwrap_or_else(|| link.as_bytes().to_vec())
}

fn encode_link(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex::encode(bytes)),
    }
}

impl Item {
    pub fn path(&self) -> Vec<u8> {
        decode_path(&self.p, &self.px)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveOutcome {
    pub entries: u64,
    pub bytes: u64,
    pub compressed_bytes: u64,
    /// Files whose size changed while they were read (the container kept
    /// writing); their archived bytes are what was read.
    pub changed_while_read: Vec<String>,
    pub skipped: Vec<String>,
}

/// How far an archive is: entries, and bytes of file content, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Archived {
    pub entries: u64,
    pub bytes: u64,
}

/// A report at most every 250 ms, or every 16 MiB of content (so a small
/// fast backup still shows it moving): often enough for a bar, rarely
/// enough to cost nothing — about the ownership walk's rate.
const REPORT_EVERY: Duration = Duration::from_millis(250);
const REPORT_BYTES: u64 = 16 << 20;

/// Counts what is archived and reports it, throttled.
struct Meter<'p> {
    report: &'p (dyn Fn(Archived) + Sync),
    now: Archived,
    reported: Archived,
    reported_at: Instant,
}

impl Meter<'_> {
    fn add(&mut self, entries: u64, bytes: u64) {
        self.now.entries += entries;
        self.now.bytes += bytes;
        if self.now.bytes - self.reported.bytes >= REPORT_BYTES
            || self.reported_at.elapsed() >= REPORT_EVERY
        {
            self.flush();
        }
    }

    /// Reports what is new since the last report (the last one: the totals).
    fn flush(&mut self) {
        if self.now != self.reported {
            (self.report)(self.now);
            self.reported = self.now;
        }
        self.reported_at = Instant::now();
    }
}

/// Size of everything under `root` (regular files), for the free-space check.
pub fn estimate_bytes(root: &Path) -> Result<u64, ArchiveError> {
    struct Sizer(u64);
    impl Visitor for Sizer {
        fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
            if entry.file_type() == FileType::RegularFile {
                self.0 += entry.stat.st_size as u64;
            }
            Ok(entry.file_type() == FileType::Directory)
        }
        fn skipped(&mut self, _: Skipped) {}
    }
    let fd = open_root(root)?;
    if FileType::from_raw_mode(fstat(&fd).map_err(sys("stat", root))?.st_mode)
        != FileType::Directory
    {
        return Ok(fstat(&fd).map_err(sys("stat", root))?.st_size as u64);
    }
    let mut sizers = vec![Sizer(0)];
    walk::walk(fd, &mut sizers).map_err(sys("walk", root))?;
    Ok(sizers[0].0)
}

fn sys<'a>(what: &'static str, root: &'a Path) -> impl Fn(Errno) -> ArchiveError + 'a {
    move |errno| ArchiveError::Sys {
        what: what.to_string(),
        root: root.display().to_string(),
        errno,
    }
}

/// A mount's root, refusing a symlink anywhere in its path (see
/// `walk::open_mount_root`).
fn open_root(root: &Path) -> Result<OwnedFd, ArchiveError> {
    walk::open_mount_root(root).map_err(sys("open (no symlink may be in the path)", root))
}

/// Every xattr of an entry (none for symlinks).
fn xattrs_of(entry: &Entry) -> Result<BTreeMap<String, String>, Errno> {
    let mut out = BTreeMap::new();
    for name in meta::list_xattrs(entry)? {
        if let Some(value) = meta::get_xattr(entry, &name)? {
            out.insert(name, hex::encode(value));
        }
    }
    Ok(out)
}

/// Reopens a verified regular file for reading through its own descriptor.
fn reopen_for_read(fd: &OwnedFd) -> Result<File, Errno> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = openat(
        CWD,
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(file))
}

struct Archiver<'p, W: Write> {
    tar: tar::Builder<W>,
    meter: Meter<'p>,
    manifest: BufWriter<File>,
    /// The one buffer small files are read into.
    buf: Vec<u8>,
    items: Vec<Item>,
    outcome: ArchiveOutcome,
    first_names: HashMap<(u64, u64), Vec<u8>>,
    failure: Option<ArchiveError>,
    root: String,
}

fn tar_path(path: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if path.is_empty() {
        std::path::PathBuf::from(".")
    } else {
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path))
    }
}

/// Files up to this size are read in one call into the archiver's own
/// buffer, hashed there and written to the archive from it: one copy out
/// of the kernel and one into the compressor, no allocation per file.
/// Bigger ones stream through a buffer of this size.
const WHOLE_FILE: usize = 1 << 20;

/// Reads exactly `size` bytes (short files padded with zeros), hashing
/// what goes into the archive as it passes and counting it (a big file
/// moves the progress too). Hashing here rather than on a thread of its
/// own: on two cores the compressor's workers already take both, and
/// handing each chunk to a thread cost a copy and an allocation.
struct Exact<'h, 'p, R: Read> {
    inner: R,
    left: u64,
    hasher: &'h mut Sha256,
    meter: &'h mut Meter<'p>,
    short: bool,
}

impl<R: Read> Read for Exact<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            n = want;
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        self.meter.add(0, n as u64);
        Ok(n)
    }
}

/// Reads a file expected to hold `size` bytes (at most [`WHOLE_FILE`])
/// into `buf`, with one byte more room so a file that grew since its
/// stat is seen in the same calls: returns whether it was shorter or
/// longer than `size`, and leaves `buf` exactly `size` bytes (a short
/// file padded with zeros, as the streaming path pads it).
fn read_whole(file: &mut File, size: usize, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    buf.resize(size + 1, 0);
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let changed = got != size;
    buf.truncate(got.min(size));
    buf.resize(size, 0);
    Ok(changed)
}

impl<W: Write> Archiver<'_, W> {
    fn add(&mut self, entry: Entry) -> Result<(), ArchiveError> {
        let stat = entry.stat;
        let kind = entry.file_type();
        let sys_err = |what: &str, errno| ArchiveError::Sys {
            what: format!("{what} {}", String::from_utf8_lossy(&entry.path)),
            root: self.root.clone(),
            errno,
        };
        let (p, px) = encode_path(&entry.path);
        let mut item = Item {
            p,
            px,
            kind: 'f',
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
            mtime: stat.st_mtime,
            mtime_ns: stat.st_mtime_nsec as i64,
            size: 0,
            sha256: None,
            link: None,
            rdev: None,
            xattrs: xattrs_of(&entry).map_err(|e| sys_err("read xattrs of", e))?,
        };
        let mut header = tar::Header::new_gnu();
        header.set_uid(u64::from(stat.st_uid));
        header.set_gid(u64::from(stat.st_gid));
        header.set_mode(stat.st_mode & 0o7777);
        header.set_mtime(stat.st_mtime.max(0) as u64);
        header.set_size(0);
        let path = tar_path(&entry.path);
        let tar_err = |source| ArchiveError::Io {
            what: "write archive entry",
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            source,
        };
        match kind {
            FileType::Directory => {
                item.kind = 'd';
                header.set_entry_type(tar::EntryType::Directory);
                self.tar
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(tar_err)?;
            }
            FileType::RegularFile => {
                if stat.st_nlink > 1 {
                    if let Some(first) = self.first_names.get(&entry.key()) {
                        item.kind = 'h';
                        item.link = Some(encode_link(first));
                        header.set_entry_type(tar::EntryType::Link);
                        self.tar
                            .append_link(&mut header, &path, tar_path(first))
                            .map_err(tar_err)?;
                        self.write_item(&item)?;
                        return Ok(());
                    }
                    self.first_names.insert(entry.key(), entry.path.clone());
                }
                let mut file = reopen_for_read(&entry.fd).map_err(|e| sys_err("open", e))?;
                let size = stat.st_size as u64;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let mut hasher = Sha256::new();
                let changed = if size as usize <= WHOLE_FILE {
                    let changed =
                        read_whole(&mut file, size as usize, &mut self.buf).map_err(|source| {
                            ArchiveError::Io {
                                what: "read",
                                path: String::from_utf8_lossy(&entry.path).into_owned(),
                                source,
                            }
                        })?;
                    hasher.update(&self.buf);
                    self.tar
                        .append_data(&mut header, &path, self.buf.as_slice())
                        .map_err(tar_err)?;
                    self.meter.add(0, size);
                    changed
                } else {
                    let mut reader = Exact {
                        inner: BufReader::with_capacity(WHOLE_FILE, file),
                        left: size,
                        hasher: &mut hasher,
                        meter: &mut self.meter,
                        short: false,
                    };
                    let appended = self.tar.append_data(&mut header, &path, &mut reader);
                    let short = reader.short;
                    let mut inner = reader.inner;
                    appended.map_err(tar_err)?;
                    let mut probe = [0u8; 1];
                    short || inner.read(&mut probe).map(|n| n > 0).unwrap_or(false)
                };
                if changed {
                    self.outcome
                        .changed_while_read
                        .push(String::from_utf8_lossy(&entry.path).into_owned());
                }
                item.sha256 = Some(hex::encode(hasher.finalize()));
                item.size = size;
                self.outcome.bytes += size;
            }
            FileType::Symlink => {
                item.kind = 'l';
                let target =
                    readlinkat(&entry.fd, "", Vec::new()).map_err(|e| sys_err("readlink", e))?;
                item.link = Some(encode_link(target.as_bytes()));
                header.set_entry_type(tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut header, &path, tar_path(target.as_bytes()))
                    .map_err(tar_err)?;
            }
            FileType::Fifo => {
                item.kind = 'p';
                header.set_entry_type(tar::EntryType::Fifo);
                self.tar
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(tar_err)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                let char_dev = kind == FileType::CharacterDevice;
                item.kind = if char_dev { 'c' } else { 'b' };
                item.rdev = Some(stat.st_rdev);
                header.set_entry_type(if char_dev {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header
                    .set_device_major(rustix::fs::major(stat.st_rdev))
                    .map_err(tar_err)?;
                header
                    .set_device_minor(rustix::fs::minor(stat.st_rdev))
                    .map_err(tar_err)?;
                self.tar
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(tar_err)?;
            }
            FileType::Socket => {
                // tar has no socket type: the manifest alone restores it.
                item.kind = 's';
            }
            FileType::Unknown => return Ok(()),
        }
        self.items.push(item);
        self.outcome.entries += 1;
        self.meter.add(1, 0);
        Ok(())
    }

    /// Kept in archive order; the manifest is written once the archive is.
    fn write_item(&mut self, item: &Item) -> Result<(), ArchiveError> {
        self.outcome.entries += 1;
        self.meter.add(1, 0);
        self.items.push(item.clone());
        Ok(())
    }
}

impl<W: Write + Send> Visitor for Archiver<'_, W> {
    fn visit(&mut self, entry: Entry) -> Result<bool, Errno> {
        let is_dir = entry.file_type() == FileType::Directory;
        match self.add(entry) {
            Ok(()) => Ok(is_dir),
            Err(e) => {
                self.failure = Some(e);
                Err(Errno::CANCELED)
            }
        }
    }

    fn skipped(&mut self, skipped: Skipped) {
        let text = match skipped {
            Skipped::OtherFilesystem(p) => {
                format!("{} (another filesystem)", String::from_utf8_lossy(&p))
            }
            Skipped::Raced(p) => format!("{} (changed while read)", String::from_utf8_lossy(&p)),
            Skipped::Vanished(p) => {
                format!("{} (vanished while read)", String::from_utf8_lossy(&p))
            }
        };
        self.outcome.skipped.push(text);
    }
}

/// Archives the mount at `root` into `archive` (tar.zst) and `manifest`,
/// reporting how far it is to `progress` (throttled; the last report is
/// the outcome's entries and bytes).
pub fn write_mount(
    root: &Path,
    archive: &Path,
    manifest: &Path,
    threads: u32,
    progress: &(dyn Fn(Archived) + Sync),
) -> Result<ArchiveOutcome, ArchiveError> {
    let root_fd = open_root(root)?;
    let out = File::create(archive).map_err(io_err("create", archive))?;
    let mut encoder = zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, out), 1)
        .map_err(io_err("compress", archive))?;
    if threads > 1 {
        encoder
            .multithread(threads)
            .map_err(io_err("compress", archive))?;
    }
    let manifest_file = File::create(manifest).map_err(io_err("create", manifest))?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    let mut archivers = vec![Archiver {
        tar,
        meter: Meter {
            report: progress,
            now: Archived::default(),
            reported: Archived::default(),
            reported_at: Instant::now(),
        },
        manifest: BufWriter::with_capacity(1 << 20, manifest_file),
        buf: Vec::new(),
        items: Vec::new(),
        outcome: ArchiveOutcome::default(),
        first_names: HashMap::new(),
        failure: None,
        root: root.display().to_string(),
    }];
    let root_stat = fstat(&root_fd).map_err(sys("stat", root))?;
    if FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory {
        let result = walk::walk(root_fd, &mut archivers);
        if let Some(e) = archivers[0].failure.take() {
            return Err(e);
        }
        result.map_err(sys("walk", root))?;
    } else {
        let archiver = &mut archivers[0];
        archiver.add(Entry {
            fd: root_fd,
            stat: root_stat,
            path: Vec::new(),
            parent: None,
        })?;
    }
    let Some(mut archiver) = archivers.pop() else {
        return Err(ArchiveError::Manifest {
            path: manifest.display().to_string(),
            reason: "no archiver".into(),
        });
    };
    archiver.meter.flush();
    let mut manifest_out = archiver.manifest;
    let items = archiver.items;
    for item in &items {
        serde_json::to_writer(&mut manifest_out, item)
            .map_err(|e| io_err("write", manifest)(std::io::Error::other(e)))?;
        manifest_out
            .write_all(b"\n")
            .map_err(io_err("write", manifest))?;
    }
    manifest_out.flush().map_err(io_err("write", manifest))?;
    manifest_out
        .get_ref()
        .sync_all()
        .map_err(io_err("sync", manifest))?;
    let encoder = archiver
        .tar
        .into_inner()
        .map_err(io_err("finish", archive))?;
    let mut buffered = encoder.finish().map_err(io_err("finish", archive))?;
    buffered.flush().map_err(io_err("write", archive))?;
    buffered
        .get_ref()
        .sync_all()
        .map_err(io_err("sync", archive))?;
    let mut outcome = archiver.outcome;
    outcome.compressed_bytes = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
    Ok(outcome)
}

pub fn read_manifest(path: &Path) -> Result<Vec<Item>, ArchiveError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut items = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err("read", path))?;
        let item: Item = serde_json::from_str(&line).map_err(|e| ArchiveError::Manifest {
            path: path.display().to_string(),
            reason: format!("line {}: {e}", n + 1),
        })?;
        items.push(item);
    }
    Ok(items)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<String>,
}

fn archive_reader(
    archive: &Path,
) -> Result<tar::Archive<zstd::stream::read::Decoder<'static, BufReader<File>>>, ArchiveError> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(io_err("decompress", archive))?;
    Ok(tar::Archive::new(decoder))
}

fn entry_path(entry: &tar::Entry<'_, impl Read>) -> Vec<u8> {
    let raw = entry.path_bytes().into_owned();
    if raw == b"." || raw == b"./" {
        Vec::new()
    } else {
        raw
    }
}

/// Re-reads an archive against its manifest: every file's sha256 and size,
/// and every manifest entry present.
pub fn verify_mount(archive: &Path, manifest: &Path) -> Result<VerifyOutcome, ArchiveError> {
    let items = read_manifest(manifest)?;
    let mut expected: HashMap<Vec<u8>, &Item> = items.iter().map(|i| (i.path(), i)).collect();
    let mut outcome = VerifyOutcome::default();
    let mut tar = archive_reader(archive)?;
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let path = entry_path(&entry);
        let shown = String::from_utf8_lossy(&path).into_owned();
        let Some(item) = expected.remove(&path) else {
            outcome
                .problems
                .push(format!("{shown}: in the archive but not in the manifest"));
            continue;
        };
        if item.kind == 'f' {
            let mut hasher = Sha256::new();
            let n = std::io::copy(&mut entry, &mut hasher).map_err(io_err("read", archive))?;
            outcome.files_checked += 1;
            outcome.bytes_checked += n;
            let sha = hex::encode(hasher.finalize());
            if Some(&sha) != item.sha256.as_ref() || n != item.size {
                outcome.problems.push(format!(
                    "{shown}: content differs from the manifest (sha256 {sha})"
                ));
            }
        }
    }
    let mut missing: Vec<String> = expected
        .into_iter()
        .filter(|(_, item)| item.kind != 's')
        .map(|(p, _)| {
            format!(
                "{}: in the manifest but not in the archive",
                String::from_utf8_lossy(&p)
            )
        })
        .collect();
    missing.sort();
    outcome.problems.extend(missing);
    Ok(outcome)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub entries: u64,
    pub bytes: u64,
    pub removed: u64,
}

/// Deletes everything under the directory `dir` (never following a
/// symlink, never entering another filesystem).
fn clear_directory(dir: &OwnedFd, device: u64, removed: &mut u64) -> Result<(), Errno> {
    let listing = walk::open_dir_from_path_fd(dir)?;
    let mut reader = rustix::fs::Dir::read_from(&listing)?;
    let mut names = Vec::new();
    while let Some(item) = reader.read() {
        let item = item?;
        let name = item.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    for name in names {
        let fd = match walk::open_path_nofollow(dir, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        let stat = fstat(&fd)?;
        if stat.st_dev != device {
            continue;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            clear_directory(&fd, device, removed)?;
            unlinkat(&listing, name.as_slice(), AtFlags::REMOVEDIR)?;
        } else {
            unlinkat(&listing, name.as_slice(), AtFlags::empty())?;
        }
        *removed += 1;
    }
    Ok(())
}

/// Puts the mount at `root` back exactly as the manifest says: its
/// current content is removed, the archive extracted, then owners, modes,
/// xattrs and times applied (directories last, deepest first).
pub fn restore_mount(
    root: &Path,
    archive: &Path,
    manifest: &Path,
) -> Result<RestoreOutcome, ArchiveError> {
    let items = read_manifest(manifest)?;
    let by_path: HashMap<Vec<u8>, &Item> = items.iter().map(|i| (i.path(), i)).collect();
    let root_fd = open_root(root)?;
    let root_stat = fstat(&root_fd).map_err(sys("stat", root))?;
    let mut outcome = RestoreOutcome::default();
    let is_dir = FileType::from_raw_mode(root_stat.st_mode) == FileType::Directory;
    if !is_dir {
        return restore_single_file(root, archive, &items);
    }
    clear_directory(&root_fd, root_stat.st_dev, &mut outcome.removed)
        .map_err(sys("clear", root))?;
    let mut dirs: HashMap<Vec<u8>, OwnedFd> = HashMap::new();
    dirs.insert(
        Vec::new(),
        walk::open_dir_from_path_fd(&root_fd).map_err(sys("open", root))?,
    );
    let parent_of = |path: &[u8]| -> (Vec<u8>, Vec<u8>) {
        match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.to_vec()),
        }
    };
    let mut tar = archive_reader(archive)?;
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let path = entry_path(&entry);
        if path.is_empty() {
            continue;
        }
        let Some(item) = by_path.get(&path) else {
            continue;
        };
        let (parent, name) = parent_of(&path);
        let Some(dir) = dirs.get(&parent) else {
            return Err(ArchiveError::Manifest {
                path: manifest.display().to_string(),
                reason: format!(
                    "{} comes before its directory",
                    String::from_utf8_lossy(&path)
                ),
            });
        };
        let failed = |what: &'static str| {
            let path = path.clone();
            move |errno: Errno| ArchiveError::Sys {
                what: format!("{what} {}", String::from_utf8_lossy(&path)),
                root: root.display().to_string(),
                errno,
            }
        };
        match item.kind {
            'd' => {
                mkdirat(dir, name.as_slice(), Mode::from_raw_mode(0o700))
                    .map_err(failed("mkdir"))?;
                let fd = openat(
                    dir,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(failed("open"))?;
                dirs.insert(path.clone(), fd);
            }
            'f' => {
                let fd = openat(
                    dir,
                    name.as_slice(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(failed("create"))?;
                let mut file = File::from(fd);
                let n = std::io::copy(&mut entry, &mut file).map_err(io_err("write", root))?;
                outcome.bytes += n;
            }
            'h' => {
                let target = decode_link(item.link.as_deref().unwrap_or_default());
                let (tparent, tname) = parent_of(&target);
                let Some(tdir) = dirs.get(&tparent) else {
                    return Err(ArchiveError::Manifest {
                        path: manifest.display().to_string(),
                        reason: format!(
                            "{} links to {}, which the archive never made",
                            String::from_utf8_lossy(&path),
                            String::from_utf8_lossy(&target)
                        ),
                    });
                };
                linkat(
                    tdir,
                    tname.as_slice(),
                    dir,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(failed("link"))?;
            }
            'l' => {
                let target = decode_link(item.link.as_deref().unwrap_or_default());
                symlinkat(target.as_slice(), dir, name.as_slice()).map_err(failed("symlink"))?;
            }
            'p' => mknodat(
                dir,
                name.as_slice(),
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(failed("mkfifo"))?,
            'c' | 'b' => {
                let kind = if item.kind == 'c' {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                mknodat(
                    dir,
                    name.as_slice(),
                    kind,
                    Mode::from_raw_mode(0o600),
                    item.rdev.unwrap_or(0),
                )
                .map_err(failed("mknod"))?
            }
            _ => {}
        }
        outcome.entries += 1;
    }
    // Sockets are only in the manifest.
    for item in items.iter().filter(|i| i.kind == 's') {
        let (parent, name) = parent_of(&item.path());
        if let Some(dir) = dirs.get(&parent) {
            mknodat(
                dir,
                name.as_slice(),
                FileType::Socket,
                Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(sys("mknod socket", root))?;
            outcome.entries += 1;
        }
    }
    // Metadata: deepest first, so a directory's mtime is set after its children.
    let mut ordered: Vec<&Item> = items.iter().collect();
    ordered.sort_by_key(|i| {
        std::cmp::Reverse(
            i.path().iter().filter(|b| **b == b'/').count() + usize::from(!i.path().is_empty()),
        )
    });
    for item in ordered {
        let path = item.path();
        let (parent, name) = parent_of(&path);
        if path.is_empty() {
            apply_metadata(&root_fd, None, item).map_err(sys("set metadata", root))?;
            continue;
        }
        let Some(dir) = dirs.get(&parent) else {
            return Err(ArchiveError::Manifest {
                path: manifest.display().to_string(),
                reason: format!(
                    "{}: its directory was never restored",
                    String::from_utf8_lossy(&path)
                ),
            });
        };
        let fd =
            walk::open_path_nofollow(dir, &name).map_err(sys("reopen restored entry", root))?;
        apply_metadata(&fd, Some((dir, &name)), item).map_err(sys("set metadata", root))?;
    }
    if let Some(listing) = dirs.get(&Vec::new()) {
        rustix::fs::syncfs(listing).map_err(sys("sync", root))?;
    }
    Ok(outcome)
}

fn restore_single_file(
    root: &Path,
    archive: &Path,
    items: &[Item],
) -> Result<RestoreOutcome, ArchiveError> {
    let mut tar = archive_reader(archive)?;
    let mut outcome = RestoreOutcome::default();
    // Only ever a regular file, reopened through the descriptor that was
    // checked: a FIFO would hang the restore, a device would be opened.
    let path_fd = open_root(root)?;
    let stat = fstat(&path_fd).map_err(sys("stat", root))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ArchiveError::Manifest {
            path: root.display().to_string(),
            reason: "the mount is no longer a regular file; nothing was restored".into(),
        });
    }
    if let Some(entry) = tar.entries().map_err(io_err("read", archive))?.next() {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
        let fd = openat(
            CWD,
            proc_path.as_str(),
            OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(sys("open", root))?;
        let mut file = File::from(fd);
        outcome.bytes = std::io::copy(&mut entry, &mut file).map_err(io_err("write", root))?;
        file.sync_all().map_err(io_err("sync", root))?;
        outcome.entries = 1;
    }
    if let Some(item) = items.first() {
        apply_metadata(&path_fd, None, item).map_err(sys("set metadata", root))?;
    }
    Ok(outcome)
}

/// Owner, then mode (after chown, which clears setuid bits), then xattrs
/// (after chown, which drops capabilities), then times. `place` is the
/// directory and name the entry sits under (none for the mount's root).
fn apply_metadata(
    fd: &OwnedFd,
    place: Option<(&OwnedFd, &Vec<u8>)>,
    item: &Item,
) -> Result<(), Errno> {
    let kind = match item.kind {
        'd' => FileType::Directory,
        'l' => FileType::Symlink,
        'p' => FileType::Fifo,
        's' => FileType::Socket,
        'c' => FileType::CharacterDevice,
        'b' => FileType::BlockDevice,
        _ => FileType::RegularFile,
    };
    meta::chown(fd, item.uid, item.gid)?;
    meta::chmod(fd, kind, item.mode)?;
    for (name, value) in &item.xattrs {
        let value = hex::decode(value).unwrap_or_default();
        meta::set_xattr(fd, kind, name, &value)?;
    }
    let when = Timespec {
        tv_sec: item.mtime,
        tv_nsec: item.mtime_ns as _,
    };
    let times = Timestamps {
        last_access: when,
        last_modification: when,
    };
    match place {
        Some((dir, name)) => utimensat(dir, name.as_slice(), &times, AtFlags::SYMLINK_NOFOLLOW),
        None if kind == FileType::Symlink => Ok(()),
        None => utimensat(
            CWD,
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            &times,
            AtFlags::empty(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read_as(content: &[u8], size: usize) -> (bool, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let mut buf = vec![7u8; 3];
        let changed = read_whole(&mut File::open(&path).unwrap(), size, &mut buf).unwrap();
        (changed, buf)
    }

    #[test]
    fn a_whole_file_read_is_exactly_its_size_and_notices_a_file_that_changed_size() {
        assert_eq!(read_as(b"abcd", 4), (false, b"abcd".to_vec()));
        // Shrunk since its stat: padded with zeros, as tar needs the size.
        assert_eq!(read_as(b"ab", 4), (true, b"ab\0\0".to_vec()));
        // Grew since its stat: the stat's size is what is archived.
        assert_eq!(read_as(b"abcdef", 4), (true, b"abcd".to_vec()));
        assert_eq!(read_as(b"", 0), (false, Vec::new()));
    }
}
