//! The ownership manifest: for every entry the remap changes, its old
//! owner, group, mode and security-relevant xattrs, written and synced
//! before the change is made (in batches), so the undo restores exactly
//! and a walk interrupted by a crash can be resumed or undone.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::IdMapping;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub root: String,
    pub device: u64,
    pub mapping: IdMapping,
}

/// One changed entry, as it was before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The path, when it is UTF-8 ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// ... or its bytes in hex otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub px: Option<String>,
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub new_uid: u32,
    pub new_gid: u32,
    /// security.capability, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    /// system.posix_acl_access, hex, when the remap rewrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
    /// system.posix_acl_default, hex, when the remap rewrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dacl: Option<String>,
}

impl Change {
    pub fn set_path(&mut self, path: &[u8]) {
        match std::str::from_utf8(path) {
            Ok(p) if !p.contains('\n') => self.p = Some(p.to_string()),
            _ => self.px = Some(hex::encode(path)),
        }
    }

    pub fn path(&self) -> Vec<u8> {
        match (&self.p, &self.px) {
            (Some(p), _) => p.as_bytes().to_vec(),
            (None, Some(px)) => hex::decode(px).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    pub fn path_display(&self) -> String {
        String::from_utf8_lossy(&self.path()).into_owned()
    }

    pub fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

#[derive(Debug)]
pub struct ManifestWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ManifestWriter {
    /// Opens for appending; writes `header` if the file is new.
    pub fn open(path: &Path, header: &Header) -> std::io::Result<Self> {
        let fresh = !path.exists() || std::fs::metadata(path)?.len() == 0;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        truncate_torn_tail(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut writer = ManifestWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
        };
        if fresh {
            serde_json::to_writer(&mut writer.out, header).map_err(std::io::Error::other)?;
            writer.out.write_all(b"\n")?;
            writer.commit()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(writer)
    }

    pub fn record(&mut self, change: &Change) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, change).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }

    /// Everything recorded so far reaches the disk before this returns;
    /// only then may the recorded changes be made.
    pub fn commit(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn truncate_torn_tail(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()
}

/// Reads a manifest; a torn last line (crash mid-write) is ignored: its
/// change was never made, since changes follow a synced commit.
pub fn read(path: &Path) -> std::io::Result<(Option<Header>, Vec<Change>)> {
    let reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut header = None;
    let mut changes = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.starts_with("{\"version\"") {
            match serde_json::from_str::<Header>(&line) {
                Ok(h) => header = Some(h),
                Err(_) => break,
            }
        } else {
            match serde_json::from_str::<Change>(&line) {
                Ok(c) => changes.push(c),
                Err(_) => break,
            }
        }
    }
    Ok((header, changes))
}
