//! Mount roots the engine resets. When a new container mounts an empty
//! named volume, the engine copies the image's content at that path into
//! it and gives the volume root the image directory's owner and mode, at
//! create: the root the ownership step just re-owned is root's again. The
//! recreate records each mount root it owns before create and puts back
//! what the engine changed, before the new container starts. The undo
//! needs nothing of its own: the ownership step's undo restores the root
//! from its manifest, whoever changed it since.

use std::os::fd::OwnedFd;

use fleet_core::audit::FileOwner;
use rustix::fs::{Gid, Mode, OFlags, Uid};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::container::ContainerError;

/// A mount root as the ownership step left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRoot {
    /// The host path (the volume's `_data`, or the bind source).
    pub source: String,
    pub destination: String,
    pub owner: FileOwner,
}

/// A root the engine changed, and what it was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRootReset {
    pub destination: String,
    /// What the engine made it.
    pub engine_set: FileOwner,
    /// What the ownership step had made it, and it is again.
    pub restored: FileOwner,
}

fn open_dir(path: &str) -> std::io::Result<OwnedFd> {
    // Never through a symlink: the root is the directory itself.
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn owner_of(fd: &OwnedFd) -> std::io::Result<FileOwner> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(FileOwner {
        uid: stat.st_uid,
        gid: stat.st_gid,
        mode: stat.st_mode & 0o7777,
    })
}

/// The roots of the old container's bind and volume mounts that the
/// ownership step gave to the target ids (owner or group), read now.
pub fn owned_by(old: &Value, uid: u32, gid: u32) -> Vec<MountRoot> {
    old.pointer("/Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter(|m| {
            matches!(
                m.get("Type").and_then(|t| t.as_str()),
                Some("volume" | "bind")
            )
        })
        .filter_map(|m| {
            let source = m.get("Source")?.as_str()?.to_string();
            let destination = m.get("Destination")?.as_str()?.to_string();
            let owner = open_dir(&source).and_then(|fd| owner_of(&fd)).ok()?;
            (owner.uid == uid || owner.gid == gid).then_some(MountRoot {
                source,
                destination,
                owner,
            })
        })
        .collect()
}

/// Gives each root back the owner and mode it had before create, where the
/// engine changed them.
pub fn restore(roots: &[MountRoot]) -> Result<Vec<MountRootReset>, ContainerError> {
    let fail = |root: &MountRoot, e: std::io::Error| {
        ContainerError::Verify(format!(
            "the root of the mount at {} ({}) could not be re-owned after create: {e}",
            root.destination, root.source
        ))
    };
    let mut reset = Vec::new();
    for root in roots {
        let fd = open_dir(&root.source).map_err(|e| fail(root, e))?;
        let now = owner_of(&fd).map_err(|e| fail(root, e))?;
        if now == root.owner {
            continue;
        }
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(root.owner.uid)),
            Some(Gid::from_raw(root.owner.gid)),
        )
        .map_err(|e| fail(root, e.into()))?;
        // After the chown, which clears setuid and setgid bits.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(root.owner.mode))
            .map_err(|e| fail(root, e.into()))?;
        reset.push(MountRootReset {
            destination: root.destination.clone(),
            engine_set: now,
            restored: root.owner,
        });
    }
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_reset_root_gets_its_owner_and_mode_back_and_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let source = root.display().to_string();
        let doc = serde_json::json!({"Mounts": [
            {"Type": "volume", "Source": source, "Destination": "/data"},
        ]});
        std::os::unix::fs::chown(&root, Some(4321), Some(4321)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let roots = owned_by(&doc, 4321, 4321);
        assert_eq!(roots.len(), 1);
        assert_eq!(owned_by(&doc, 5000, 5000), Vec::new(), "not ours");

        // What the engine does to an empty volume at create.
        std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let reset = restore(&roots).unwrap();
        assert_eq!(reset.len(), 1);
        assert_eq!(
            (reset[0].engine_set.uid, reset[0].engine_set.mode),
            (0, 0o755)
        );
        let meta = std::fs::metadata(&root).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (4321, 4321, 0o2770)
        );
        assert_eq!(
            restore(&roots).unwrap(),
            Vec::new(),
            "nothing changed since"
        );

        // A root swapped for a symlink is never followed.
        std::fs::remove_dir(&root).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
        assert!(restore(&roots).is_err());
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().uid(), 0);
    }
}
