//! What a remap and an undo report: their progress while they walk, and
//! what they did once done.

use serde::{Deserialize, Serialize};

use fleet_core::migration::Listed;

/// What a walk has seen, changed and read so far.
pub use fleet_core::step::Progress;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapReport {
    pub root: String,
    /// Entries seen, each once (an inode with several names counts once),
    /// across passes and across a resume.
    pub entries: u64,
    /// Entries changed by this run, each once, including those an
    /// interrupted walk changed before it was resumed.
    pub changed: u64,
    /// Entries left as they were that already belonged to a target id (or
    /// had an ACL entry naming one), recorded so the undo leaves them.
    #[serde(default)]
    pub kept: u64,
    pub bytes: u64,
    /// Entries found in the manifest of an interrupted walk.
    pub resumed: u64,
    pub skipped_root_already_owned: bool,
    /// Each list below is its true count and its first `Listed::MAX`
    /// names, sorted (a plain array of every name in older journals).
    #[serde(default)]
    pub other_filesystems: Listed,
    #[serde(default)]
    pub raced: Listed,
    #[serde(default)]
    pub refused_hardlinks: Listed,
    #[serde(default)]
    pub devices_left: Listed,
    /// Names that disappeared while the walk ran.
    #[serde(default)]
    pub vanished: Listed,
    pub millis: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    pub root: String,
    pub restored: u64,
    /// Entries of the manifest no longer in the tree (deleted since). Each
    /// list is its true count and its first `Listed::MAX` names.
    #[serde(default)]
    pub missing: Listed,
    /// Recorded inode numbers now held by other files (the recorded file
    /// was deleted and its number reused): left untouched.
    #[serde(default)]
    pub impostors: Listed,
    /// Entries the forward manifest did not know (made or replaced by the
    /// workload after the remap) that were owned by a target id or had an
    /// ACL entry naming one, given the prior ids: the total over every undo
    /// of this manifest (the reverse manifest keeps it), each entry once.
    #[serde(default)]
    pub reverse_mapped: u64,
    /// Why there was no reverse walk, when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_skipped: Option<String>,
    /// The reverse manifest, when the undo reverse-mapped anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_manifest: Option<String>,
    /// Target-owned multiply-linked files with a name outside the tree:
    /// left owned by the target id.
    #[serde(default)]
    pub refused_hardlinks: Listed,
    /// Target-owned device nodes the manifest did not know: never chowned.
    #[serde(default)]
    pub devices_left: Listed,
    /// Names that disappeared while the walk ran.
    #[serde(default)]
    pub vanished: Listed,
    /// Directories that changed while they were walked, walked again (an
    /// undo that cannot settle them fails with `KeptRacing`).
    #[serde(default)]
    pub raced: Listed,
    pub millis: u64,
}
