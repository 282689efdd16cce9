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
//!
//! One module per direction — `write` (the archive and its manifest, with
//! throttled progress), `verify` (the archive re-read against the
//! manifest), `restore` (the mount put back exactly) — over the `manifest`
//! format they share and `io` (the errors, and opening the mount's root
//! and the archive). This file only names them.

mod io;
mod manifest;
mod restore;
mod verify;
mod write;

pub use io::ArchiveError;
pub use manifest::{Item, read_manifest};
pub use restore::{RestoreOutcome, restore_mount};
pub use verify::{VerifyOutcome, verify_mount};
pub use write::{ArchiveOutcome, Archived, estimate_bytes, write_mount};
