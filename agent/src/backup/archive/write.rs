//! Writing: the walk of the mount into a tar.zst and its manifest, with
//! throttled progress.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{CWD, FileType, Mode, OFlags, fstat, openat, readlinkat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::io::{ArchiveError, io_err, open_root, sys};
use super::manifest::{self, Item, encode_link};
use crate::remap::manifest::encode_path;
use crate::remap::meta;
use crate::remap::walk::{self, Entry, Skipped, Visitor};

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

/// One mount's archive being written: the walk's visitor.
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

/// A manifest path as tar names it (the mount's root is `.`).
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

/// A failed system call on `entry`.
fn sys_err(root: &str, entry: &Entry, what: &str, errno: Errno) -> ArchiveError {
    ArchiveError::Sys {
        what: format!("{what} {}", String::from_utf8_lossy(&entry.path)),
        root: root.to_string(),
        errno,
    }
}

/// A failed write of `entry` into the archive.
fn tar_err(entry: &Entry) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        what: "write archive entry",
        path: String::from_utf8_lossy(&entry.path).into_owned(),
        source,
    }
}

/// The manifest item and tar header of `entry`, before its kind is known.
fn item_and_header(root: &str, entry: &Entry) -> Result<(Item, tar::Header), ArchiveError> {
    let stat = entry.stat;
    let (p, px) = encode_path(&entry.path);
    let item = Item {
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
        xattrs: xattrs_of(entry).map_err(|e| sys_err(root, entry, "read xattrs of", e))?,
    };
    let mut header = tar::Header::new_gnu();
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mode(stat.st_mode & 0o7777);
    header.set_mtime(stat.st_mtime.max(0) as u64);
    header.set_size(0);
    Ok((item, header))
}

impl<W: Write> Archiver<'_, W> {
    /// Archives one entry and records it for the manifest, in archive order.
    fn add(&mut self, entry: Entry) -> Result<(), ArchiveError> {
        let stat = entry.stat;
        let kind = entry.file_type();
        let (mut item, mut header) = item_and_header(&self.root, &entry)?;
        let path = tar_path(&entry.path);
        let tar_err = tar_err(&entry);
        match kind {
            FileType::Directory => {
                item.kind = 'd';
                header.set_entry_type(tar::EntryType::Directory);
                self.tar
                    .append_data(&mut header, &path, std::io::empty())
                    .map_err(tar_err)?;
            }
            FileType::RegularFile => self.add_regular(&entry, &mut item, &mut header, &path)?,
            FileType::Symlink => {
                item.kind = 'l';
                let target = readlinkat(&entry.fd, "", Vec::new())
                    .map_err(|e| sys_err(&self.root, &entry, "readlink", e))?;
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
                    .map_err(&tar_err)?;
                header
                    .set_device_minor(rustix::fs::minor(stat.st_rdev))
                    .map_err(&tar_err)?;
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

    /// A regular file: a hard link to the first name of its group when
    /// one was archived, else its content, hashed as it is archived.
    fn add_regular(
        &mut self,
        entry: &Entry,
        item: &mut Item,
        header: &mut tar::Header,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        let stat = entry.stat;
        let tar_err = tar_err(entry);
        if stat.st_nlink > 1 {
            if let Some(first) = self.first_names.get(&entry.key()) {
                item.kind = 'h';
                item.link = Some(encode_link(first));
                header.set_entry_type(tar::EntryType::Link);
                return self
                    .tar
                    .append_link(header, path, tar_path(first))
                    .map_err(tar_err);
            }
            self.first_names.insert(entry.key(), entry.path.clone());
        }
        let mut file =
            reopen_for_read(&entry.fd).map_err(|e| sys_err(&self.root, entry, "open", e))?;
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
                .append_data(header, path, self.buf.as_slice())
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
            let appended = self.tar.append_data(header, path, &mut reader);
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
    let Some(archiver) = archivers.pop() else {
        return Err(ArchiveError::Manifest {
            path: manifest.display().to_string(),
            reason: "no archiver".into(),
        });
    };
    finish(archiver, archive, manifest)
}

/// The last report, the manifest written and synced, then the archive
/// finished and synced.
fn finish(
    mut archiver: Archiver<'_, zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    archive: &Path,
    manifest: &Path,
) -> Result<ArchiveOutcome, ArchiveError> {
    archiver.meter.flush();
    manifest::write_items(archiver.manifest, &archiver.items, manifest)?;
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
