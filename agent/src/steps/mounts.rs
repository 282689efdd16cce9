//! The mounts a step may touch (the ownership change, the backup): a
//! container's bind and volume mounts, each opened with no symbolic link
//! anywhere in its host path and checked against the sensitive host paths;
//! what is refused is said, with why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::Connected;
use crate::remap::guard::MountGuard;

/// One mount an ownership step changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedMount {
    pub root: String,
    pub destination: String,
    pub manifest: String,
    /// The root's (device, inode) when the step was decided.
    #[serde(default)]
    pub identity: Option<(u64, u64)>,
}

/// The container's bind and volume mounts that may change (only those
/// whose destination is in `only`, unless it is empty), each with its
/// manifest path under `step_dir`; sensitive ones are refused with a reason.
pub fn mounts_of(
    conn: &Connected,
    doc: &Value,
    only: &[String],
    step_dir: &Path,
) -> (Vec<OwnedMount>, Vec<String>) {
    let mounts: Vec<&Value> = doc
        .get("Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .collect();
    let own_volume_dirs: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.get("Type").and_then(|t| t.as_str()) == Some("volume"))
        .filter_map(|m| m.get("Source")?.as_str())
        .map(|s| std::fs::canonicalize(s).unwrap_or_else(|_| PathBuf::from(s)))
        .collect();
    let guard = MountGuard {
        engine_root: conn.data_root.clone(),
        engine_socket: Some(conn.canonical_socket.clone()),
        own_volume_dirs,
    };
    let mut owned = Vec::new();
    let mut refusals = Vec::new();
    for mount in mounts {
        let kind = mount
            .get("Type")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        if kind != "bind" && kind != "volume" {
            continue;
        }
        let destination = mount
            .get("Destination")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_string();
        if !only.is_empty() && !only.contains(&destination) {
            continue;
        }
        let source = mount
            .get("Source")
            .and_then(|s| s.as_str())
            .unwrap_or_default();
        match checked(&guard, source, &destination) {
            Ok(identity) => {
                let index = owned.len();
                owned.push(OwnedMount {
                    root: source.to_string(),
                    destination,
                    manifest: step_dir
                        .join(format!("mount-{index}.jsonl"))
                        .display()
                        .to_string(),
                    identity: Some(identity),
                });
            }
            Err(refusal) => refusals.push(refusal),
        }
    }
    (owned, refusals)
}

/// The mount root's (device, inode), or why the mount is refused.
fn checked(guard: &MountGuard, source: &str, destination: &str) -> Result<(u64, u64), String> {
    let path = PathBuf::from(source);
    // The path as the engine has it, with no symlink anywhere in it:
    // a container able to write a parent of it could have planted one.
    let opened = crate::remap::walk::open_mount_root(&path).and_then(|fd| rustix::fs::fstat(&fd));
    let identity = match opened {
        Ok(stat) => (stat.st_dev, stat.st_ino),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            return Err(format!(
                "{destination}: host path {source} has a symbolic link in it; fleet never follows one (point the mount at the real directory)"
            ));
        }
        Err(e) => {
            return Err(format!(
                "{destination}: host path {source} is not usable: {e}"
            ));
        }
    };
    if let Some(reason) = guard.refusal(&path) {
        return Err(format!("{destination}: {source} is refused: {reason}"));
    }
    Ok(identity)
}
