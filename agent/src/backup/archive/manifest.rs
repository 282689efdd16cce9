//! The manifest every direction shares: one JSON line per entry of the
//! mount, in archive order, with what the tar format would lose or blur.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::io::{ArchiveError, io_err};
use crate::remap::manifest::decode_path;

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

/// A recorded link target back to its bytes (see [`encode_link`]).
pub(super) fn decode_link(link: &str) -> Vec<u8> {
    link.strip_prefix("hex:")
        .and_then(|h| hex::decode(h).ok())
        .unwrap_or_else(|| link.as_bytes().to_vec())
}

/// A link target as the manifest records it: as is when UTF-8 (and not
/// itself starting `hex:`), else `hex:` and its bytes.
pub(super) fn encode_link(bytes: &[u8]) -> String {
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

/// Reads a manifest; a line that does not parse is damage, never skipped.
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

/// Writes `items` as the manifest's lines and syncs it.
pub(super) fn write_items(
    mut out: BufWriter<File>,
    items: &[Item],
    path: &Path,
) -> Result<(), ArchiveError> {
    for item in items {
        serde_json::to_writer(&mut out, item)
            .map_err(|e| io_err("write", path)(std::io::Error::other(e)))?;
        out.write_all(b"\n").map_err(io_err("write", path))?;
    }
    out.flush().map_err(io_err("write", path))?;
    out.get_ref().sync_all().map_err(io_err("sync", path))
}
