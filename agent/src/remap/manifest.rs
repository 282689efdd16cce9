//! The ownership manifest: for every entry the remap changes, its old
//! owner, group, mode and security-relevant xattrs, written and synced
//! before the change is made (in batches), so the undo restores exactly
//! and a walk interrupted by a crash can be resumed or undone.
//!
//! Three kinds of line after the header: a change (`Change`), a kept entry
//! (`Change` with `kept: true`: not changed, but already owned by a target
//! id of the mapping or carrying an ACL entry naming one), and the end of a
//! walk that finished (`{"end":…}`). With the kept records, a target-owned
//! entry the manifest of a finished walk does not know was made by the
//! workload afterwards: the undo's reverse walk gives it back.
//!
//! The undo's reverse changes go, the same way, to a sibling file
//! (`reverse_path`: `mount-0.jsonl` → `mount-0.reverse.jsonl`). Read back
//! with `index::Index`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mapping::IdMapping;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub root: String,
    pub device: u64,
    /// The root's inode: an undo refuses a root that is not this one.
    #[serde(default)]
    pub ino: u64,
    pub mapping: IdMapping,
}

/// A path in a JSON record: as a string when it is UTF-8 (and has no
/// newline), else its bytes in hex (`(p, px)`).
pub fn encode_path(path: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(path) {
        Ok(s) if !s.contains('\n') => (Some(s.to_string()), None),
        _ => (None, Some(hex::encode(path))),
    }
}

pub fn decode_path(p: &Option<String>, px: &Option<String>) -> Vec<u8> {
    match (p, px) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(px)) => hex::decode(px).unwrap_or_default(),
        (None, None) => Vec::new(),
    }
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
    /// Birth time (ns), where the filesystem keeps one: with the file type
    /// (in `mode`), it tells the recorded inode from a new one that reused
    /// its number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<i128>,
    /// Not changed (`new_uid`/`new_gid` are its owner): recorded because it
    /// already belonged to a target id, so the undo leaves it alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

/// The last line of a walk that finished: every change and every kept
/// entry before it is synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub entries: u64,
    pub changed: u64,
    pub kept: u64,
}

#[derive(Serialize)]
struct EndLine {
    end: End,
}

/// Where the undo records its reverse changes, next to `forward`.
pub fn reverse_path(forward: &Path) -> PathBuf {
    let name = forward
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    forward.with_file_name(format!("{stem}.reverse.jsonl"))
}

impl Change {
    pub fn set_path(&mut self, path: &[u8]) {
        (self.p, self.px) = encode_path(path);
    }

    pub fn path(&self) -> Vec<u8> {
        decode_path(&self.p, &self.px)
    }

    pub fn path_display(&self) -> String {
        String::from_utf8_lossy(&self.path()).into_owned()
    }

    pub fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// `change` as one JSON line (with its newline), as serde would write it.
pub fn write_record(out: &mut Vec<u8>, c: &Change) {
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    for (name, value) in [("p", &c.p), ("px", &c.px)] {
        if let Some(v) = value {
            key(out, name);
            json_string(out, v);
        }
    }
    for (name, value) in [
        ("dev", c.dev),
        ("ino", c.ino),
        ("uid", u64::from(c.uid)),
        ("gid", u64::from(c.gid)),
        ("mode", u64::from(c.mode)),
        ("new_uid", u64::from(c.new_uid)),
        ("new_gid", u64::from(c.new_gid)),
    ] {
        key(out, name);
        decimal(out, value);
    }
    for (name, value) in [("cap", &c.cap), ("acl", &c.acl), ("dacl", &c.dacl)] {
        if let Some(v) = value {
            key(out, name);
            json_string(out, v);
        }
    }
    if let Some(btime) = c.btime {
        key(out, "btime");
        if btime < 0 {
            out.push(b'-');
        }
        let magnitude = btime.unsigned_abs();
        match u64::try_from(magnitude) {
            Ok(small) => decimal(out, small),
            Err(_) => out.extend_from_slice(magnitude.to_string().as_bytes()),
        }
    }
    if c.kept {
        key(out, "kept");
        out.extend_from_slice(b"true");
    }
    out.extend_from_slice(b"}\n");
}

fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[derive(Debug)]
pub struct ManifestWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The line being written (kept, so that a record costs no allocation).
    line: Vec<u8>,
}

impl ManifestWriter {
    /// Opens for appending; writes `header` if the file is new.
    pub fn open(path: &Path, header: &Header) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            // The step directory's own name must survive a crash too.
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        crate::journal::truncate_torn_tail(path)?;
        let fresh = !path.exists() || std::fs::metadata(path)?.len() == 0;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut writer = ManifestWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            line: Vec::with_capacity(256),
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

    /// Appends one record line: the JSON serde writes for `Change`, field
    /// for field, written without serde (a million of them per walk).
    pub fn record(&mut self, change: &Change) -> std::io::Result<()> {
        self.line.clear();
        write_record(&mut self.line, change);
        self.out.write_all(&self.line)
    }

    /// Marks the walk finished, synced.
    pub fn finish(&mut self, end: End) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, &EndLine { end }).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.commit()
    }

    /// Everything recorded so far reaches the disk before this returns;
    /// only then may the recorded changes be made.
    pub fn commit(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Hands what is buffered to the kernel (not yet durable).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Another handle on the file, to make it durable from another thread.
    pub fn sync_handle(&self) -> std::io::Result<File> {
        self.out.get_ref().try_clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_as_serde_writes_them() {
        let base = Change {
            p: Some("d/f".into()),
            px: None,
            dev: 2049,
            ino: u64::MAX,
            uid: 0,
            gid: u32::MAX,
            mode: 0o104755,
            new_uid: 61234,
            new_gid: 7,
            cap: None,
            acl: None,
            dacl: None,
            btime: Some(1_764_695_108_123_456_789),
            kept: false,
        };
        let mut changes = vec![base.clone()];
        for p in [
            "a \"q\" \\ b",
            "tab\there\r\u{1}\u{1f}\u{8}\u{c}\u{7f}",
            "ünï/çødé €",
            "",
        ] {
            changes.push(Change {
                p: Some(p.into()),
                ..base.clone()
            });
        }
        changes.push(Change {
            p: None,
            px: Some("ff0a".into()),
            cap: Some("0100".into()),
            acl: Some("02".into()),
            dacl: Some("03".into()),
            btime: Some(-5),
            kept: true,
            ..base.clone()
        });
        changes.push(Change {
            btime: Some(i128::MAX),
            ..base.clone()
        });
        changes.push(Change {
            btime: Some(i128::MIN + 1),
            ..base.clone()
        });
        changes.push(Change {
            btime: None,
            p: None,
            ..base.clone()
        });
        for change in changes {
            let mut ours = Vec::new();
            write_record(&mut ours, &change);
            let mut theirs = serde_json::to_vec(&change).unwrap_or_else(|e| panic!("{e}"));
            theirs.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }

    #[test]
    fn the_reverse_manifest_sits_next_to_the_forward_one() {
        assert_eq!(
            reverse_path(Path::new("/s/step/mount-0.jsonl")),
            PathBuf::from("/s/step/mount-0.reverse.jsonl")
        );
        assert_eq!(
            reverse_path(Path::new("/s/m")),
            PathBuf::from("/s/m.reverse.jsonl")
        );
    }
}
