//! Ownership remap of a container's mounts: old ids → new ids (remap, not
//! flatten), safe against the container racing the walk, recorded in a
//! manifest before each change, exactly undoable.
//!
//! Rules (each has a test): only the container's own mounts, never a
//! sensitive host path (`guard`); never follow a symlink at any depth, never
//! cross a filesystem, never open a device node, FIFO or socket (`walk`);
//! never chown a device node; refuse a hard-linked file whose other names
//! are outside the tree (`links`); put back the setuid/setgid bits and file
//! capabilities chown clears; remap ACL entries naming a remapped id; clear
//! errors for read-only and root-squashed trees before anything changes;
//! count each entry once, across the passes of a walk and across a resume.
//!
//! The forward walk (`forward`) records every change before making it, and
//! records as *kept* every entry it leaves that already belongs to a target
//! id (or has an ACL entry naming one); a finished walk ends its manifest
//! with an end line. So, once it has finished, a target-owned entry the
//! manifest does not know was made or replaced by the workload since.
//!
//! The undo (`undo`) is one walk with the same rules: it restores every
//! recorded change, leaves kept entries alone, and gives every other entry
//! owned by a target id the prior ids (`IdMapping::inverse`; ACL entries,
//! access and default, likewise; setuid/setgid bits and capabilities kept),
//! recording those reverse changes first in a reverse manifest next to the
//! forward one (`manifest::reverse_path`), so an undo killed half-way and
//! run again finishes and counts each entry once. It does not reverse-map
//! when the forward walk never finished (the workload never ran with the
//! new ids) nor for a manifest written before kept records existed (it
//! cannot tell a new entry from one that belonged to a target id before):
//! `UndoReport::reverse_skipped` says so. A mount skipped because its root
//! already had the target owner (`skip_if_root_owned_by`) was not re-owned
//! by the run: it has no manifest, and nothing to reverse.
//!
//! This file only names the parts: the `mapping` and its inverse, the
//! `root` opened and refused before anything changes, the `census` of ids
//! a tree uses (what a rootless move maps through two namespaces), the `report`s, the
//! `error`s; `forward` and `undo` walk with the `ledger` of synced records,
//! over `walk`, `meta`, `links`, `manifest` and `index`.

mod census;
mod error;
mod forward;
pub mod guard;
pub mod index;
mod ledger;
mod links;
pub mod manifest;
mod mapping;
pub mod meta;
mod report;
mod root;
mod sys;
mod undo;
pub mod walk;

pub use census::{IdCensus, census};
pub use error::RemapError;
/// A count and the first names: how the reports list paths.
pub use fleet_core::migration::Listed;
pub use forward::{RemapOptions, remap};
pub use mapping::IdMapping;
pub use report::{Progress, RemapReport, UndoReport};
pub use undo::{UndoOptions, undo, undo_with};
