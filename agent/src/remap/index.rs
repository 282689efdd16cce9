//! A manifest read back for lookups by inode: one compact record per
//! entry (the first one, which holds its original state), the file's bytes
//! kept so that the rare full record (xattrs, path) is parsed only when it
//! is needed. An undo of a million entries looks up a million inodes; this
//! keeps that map small and its parsing on every core.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::manifest::{Change, End, Header};

/// (device, inode).
pub type Key = (u64, u64);

/// A hasher for inode keys (FxHash's mix): the default SipHash is built
/// to resist chosen keys, and inode numbers are the kernel's, not chosen.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHash;

pub struct KeyHasher(u64);

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type KeyMap<V> = HashMap<Key, V, KeyHash>;

/// What a lookup needs of a record.
#[derive(Debug)]
pub struct Rec {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub new_uid: u32,
    pub new_gid: u32,
    /// Birth time (ns) when recorded and representable.
    pub btime: Option<i64>,
    pub kept: bool,
    /// It records a capability or ACLs: see `Index::change`.
    pub xattrs: bool,
    /// Set by the undo once it has restored the entry.
    pub seen: AtomicBool,
    /// Set by the undo once it has found another inode with its number.
    pub impostor: AtomicBool,
    /// Where its line starts in the manifest.
    offset: usize,
}

impl Rec {
    pub fn btime(&self) -> Option<i128> {
        self.btime.map(i128::from)
    }
}

#[derive(Deserialize)]
struct Line {
    dev: u64,
    ino: u64,
    uid: u32,
    gid: u32,
    mode: u32,
    new_uid: u32,
    new_gid: u32,
    #[serde(default)]
    cap: Option<IgnoredAny>,
    #[serde(default)]
    acl: Option<IgnoredAny>,
    #[serde(default)]
    dacl: Option<IgnoredAny>,
    #[serde(default)]
    btime: Option<i128>,
    #[serde(default)]
    kept: bool,
}

/// Parses a record line as the writer writes it (a flat object of
/// strings, integers and booleans) without serde: the undo reads a
/// million of them before it can start. `None` for anything else, which
/// then goes to serde.
fn fast_line(line: &[u8]) -> Option<Line> {
    let mut l = Line {
        dev: 0,
        ino: 0,
        uid: 0,
        gid: 0,
        mode: 0,
        new_uid: 0,
        new_gid: 0,
        cap: None,
        acl: None,
        dacl: None,
        btime: None,
        kept: false,
    };
    let mut seen = 0u8;
    let mut i = 1;
    if line.first() != Some(&b'{') {
        return None;
    }
    loop {
        // "key":
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = i + 1 + line.get(i + 1..)?.iter().position(|b| *b == b'"')?;
        let key = &line[i + 1..key_end];
        i = key_end + 1;
        if line.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        match line.get(i)? {
            b'"' => {
                // A string: skipped (paths and hex values), escapes honoured.
                let mut j = i + 1;
                loop {
                    match line.get(j)? {
                        b'\\' => j += 2,
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                match key {
                    b"cap" => l.cap = Some(IgnoredAny),
                    b"acl" => l.acl = Some(IgnoredAny),
                    b"dacl" => l.dacl = Some(IgnoredAny),
                    b"p" | b"px" => {}
                    _ => return None,
                }
                i = j + 1;
            }
            b't' if line.get(i..i + 4) == Some(b"true") => {
                if key != b"kept" {
                    return None;
                }
                l.kept = true;
                i += 4;
            }
            b'f' if line.get(i..i + 5) == Some(b"false") => {
                if key != b"kept" {
                    return None;
                }
                i += 5;
            }
            _ => {
                let start = i;
                if line.get(i) == Some(&b'-') {
                    i += 1;
                }
                while line.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let text = std::str::from_utf8(&line[start..i]).ok()?;
                let small = |t: &str| t.parse::<u32>().ok();
                match key {
                    b"dev" => (l.dev, seen) = (text.parse().ok()?, seen | 1),
                    b"ino" => (l.ino, seen) = (text.parse().ok()?, seen | 2),
                    b"uid" => (l.uid, seen) = (small(text)?, seen | 4),
                    b"gid" => (l.gid, seen) = (small(text)?, seen | 8),
                    b"mode" => (l.mode, seen) = (small(text)?, seen | 16),
                    b"new_uid" => (l.new_uid, seen) = (small(text)?, seen | 32),
                    b"new_gid" => (l.new_gid, seen) = (small(text)?, seen | 64),
                    b"btime" => l.btime = Some(text.parse().ok()?),
                    _ => return None,
                }
            }
        }
        match line.get(i)? {
            b',' => i += 1,
            b'}' if i + 1 == line.len() => break,
            _ => return None,
        }
    }
    (seen == 127).then_some(l)
}

#[derive(Deserialize)]
struct EndLine {
    end: End,
}

/// A manifest, indexed.
#[derive(Default)]
pub struct Index {
    bytes: Vec<u8>,
    pub header: Option<Header>,
    /// Set when a walk finished (its last end line).
    pub end: Option<End>,
    pub recs: KeyMap<Rec>,
}

impl Index {
    pub fn empty() -> Self {
        Index::default()
    }

    /// The full record behind `rec`.
    pub fn change(&self, rec: &Rec) -> Option<Change> {
        let line = self.bytes.get(rec.offset..)?;
        let line = &line[..line.iter().position(|b| *b == b'\n')?];
        serde_json::from_slice(line).ok()
    }

    /// Reads a manifest; a torn last line (crash mid-write) is ignored: its
    /// change was never made, since changes follow a synced commit.
    pub fn read(path: &Path) -> std::io::Result<Index> {
        let bytes = std::fs::read(path)?;
        let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = &bytes[..end];
        let (header, body_start) = match text.iter().position(|b| *b == b'\n') {
            Some(first) if text.starts_with(b"{\"version\"") => (
                serde_json::from_slice::<Header>(&text[..first]).ok(),
                first + 1,
            ),
            _ => (None, 0),
        };
        let parts = parse(text, body_start)?;
        let mut index = Index {
            header,
            recs: HashMap::with_capacity_and_hasher(parts.iter().map(|p| p.0.len()).sum(), KeyHash),
            ..Default::default()
        };
        // In file order: the first record of an entry holds its original state.
        for (recs, end) in parts {
            for (key, rec) in recs {
                index.recs.entry(key).or_insert(rec);
            }
            index.end = end.or(index.end);
        }
        index.bytes = bytes;
        Ok(index)
    }
}

type Part = (Vec<(Key, Rec)>, Option<End>);

/// Parses the records of `text[start..]` on every core, in order.
fn parse(text: &[u8], start: usize) -> std::io::Result<Vec<Part>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut chunks = Vec::new();
    let target = (text.len() - start) / threads + 1;
    let mut from = start;
    while from < text.len() {
        let mut to = (from + target).min(text.len());
        while to < text.len() && text[to - 1] != b'\n' {
            to += 1;
        }
        chunks.push(from..to);
        from = to;
    }
    let parsed: Vec<std::io::Result<Part>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|range| scope.spawn(move || parse_chunk(text, range)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("manifest parser panicked")))
            })
            .collect()
    });
    parsed.into_iter().collect()
}

fn parse_chunk(text: &[u8], range: std::ops::Range<usize>) -> std::io::Result<Part> {
    let mut recs = Vec::with_capacity(range.len() / 128);
    let mut end = None;
    let mut offset = range.start;
    for line in text[range].split(|b| *b == b'\n') {
        let at = offset;
        offset += line.len() + 1;
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"{\"end\"") {
            let line: EndLine = serde_json::from_slice(line).map_err(std::io::Error::other)?;
            end = Some(line.end);
            continue;
        }
        let l = match fast_line(line) {
            Some(l) => l,
            None => serde_json::from_slice(line).map_err(std::io::Error::other)?,
        };
        recs.push((
            (l.dev, l.ino),
            Rec {
                uid: l.uid,
                gid: l.gid,
                mode: l.mode,
                new_uid: l.new_uid,
                new_gid: l.new_gid,
                btime: l.btime.and_then(|b| i64::try_from(b).ok()),
                kept: l.kept,
                xattrs: l.cap.is_some() || l.acl.is_some() || l.dacl.is_some(),
                seen: AtomicBool::new(false),
                impostor: AtomicBool::new(false),
                offset: at,
            },
        ));
    }
    Ok((recs, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_parser_reads_what_serde_reads_and_declines_the_rest() {
        let lines = [
            r#"{"p":"a \"q\" \\ b","dev":2049,"ino":7,"uid":0,"gid":5,"mode":33261,"new_uid":2000,"new_gid":2000,"cap":"01","btime":-3}"#,
            r#"{"px":"ff00","dev":1,"ino":2,"uid":3,"gid":4,"mode":5,"new_uid":6,"new_gid":7,"acl":"02","dacl":"03","kept":true}"#,
            r#"{"p":"x","dev":1,"ino":2,"uid":3,"gid":4,"mode":5,"new_uid":6,"new_gid":7,"kept":false}"#,
        ];
        for line in lines {
            let fast = fast_line(line.as_bytes()).unwrap_or_else(|| panic!("{line}"));
            let slow: Line = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
            let fields = |l: &Line| {
                (
                    (l.dev, l.ino, l.uid, l.gid, l.mode, l.new_uid, l.new_gid),
                    (l.cap.is_some(), l.acl.is_some(), l.dacl.is_some()),
                    (l.btime, l.kept),
                )
            };
            assert_eq!(fields(&fast), fields(&slow), "{line}");
        }
        for other in [
            r#"{"dev":1,"ino":2,"uid":3,"gid":4,"mode":5,"new_uid":6}"#,
            r#"{"dev":1,"ino":2,"uid":3,"gid":4,"mode":5,"new_uid":6,"new_gid":7,"x":[1]}"#,
            r#"{ "dev":1}"#,
            r#"{"dev":1,"ino":2,"uid":99999999999,"gid":4,"mode":5,"new_uid":6,"new_gid":7}"#,
        ] {
            assert!(fast_line(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn reads_first_records_ends_and_full_records_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("m.jsonl");
        let text = concat!(
            r#"{"version":1,"root":"/r","device":1,"ino":2,"mapping":{}}"#,
            "\n",
            r#"{"p":"a","dev":1,"ino":5,"uid":0,"gid":0,"mode":33188,"new_uid":7,"new_gid":7,"cap":"0102","btime":12}"#,
            "\n",
            r#"{"p":"b","dev":1,"ino":6,"uid":7,"gid":7,"mode":33188,"new_uid":7,"new_gid":7,"kept":true}"#,
            "\n",
            r#"{"p":"a","dev":1,"ino":5,"uid":9,"gid":9,"mode":33188,"new_uid":7,"new_gid":7}"#,
            "\n",
            r#"{"end":{"entries":3,"changed":1,"kept":1}}"#,
            "\n",
            r#"{"p":"torn","dev":1,"#
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let index = Index::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(index.header.as_ref().map(|h| h.ino), Some(2));
        assert_eq!(index.recs.len(), 2);
        let a = &index.recs[&(1, 5)];
        assert_eq!(
            (a.uid, a.new_uid, a.btime, a.xattrs),
            (0, 7, Some(12), true)
        );
        let full = index.change(a).unwrap_or_else(|| panic!("no record"));
        assert_eq!(
            (full.path_display(), full.cap),
            ("a".into(), Some("0102".into()))
        );
        assert!(index.recs[&(1, 6)].kept);
        assert_eq!(index.end.map(|e| e.changed), Some(1));
    }
}
