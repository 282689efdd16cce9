//! Checkpoint backups: for a container, its full inspect document and an
//! archive + manifest per mount, with an id, a retention and a listing;
//! verify and restore. Kept until pruned: a rollback days later may need
//! them.

pub mod archive;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use archive::{ArchiveError, ArchiveOutcome, Archived, RestoreOutcome, VerifyOutcome};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "not enough free space for the backup at {dir}: about {needed} bytes needed (the mounts' size), {available} available; free space or point the agent's state_dir elsewhere"
    )]
    NoSpace {
        dir: String,
        needed: u64,
        available: u64,
    },
    #[error("no backup '{0}' on this host (`fleet-agent backups` lists them)")]
    NotFound(String),
    #[error("backup {id} is damaged: {reason}")]
    Damaged { id: String, reason: String },
}

/// One mount in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountBackup {
    pub index: usize,
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub archive: String,
    pub manifest: String,
    pub outcome: ArchiveOutcome,
}

/// What `backups/<id>/backup.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub id: String,
    pub container_id: String,
    pub container_name: String,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub mounts: Vec<MountBackup>,
    /// Output of the app-consistent hooks that ran first.
    pub hooks: Vec<String>,
}

/// A mount to back up.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub kind: String,
    pub source: PathBuf,
    pub destination: String,
}

/// What a new backup is of.
#[derive(Debug)]
pub struct NewBackup<'a> {
    pub id: &'a str,
    pub container_id: &'a str,
    pub container_name: &'a str,
    pub inspect: &'a serde_json::Value,
    pub mounts: &'a [MountSpec],
    pub retention_days: u64,
    pub hooks: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BackupStore {
    dir: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BackupStore {
    pub fn new(state_dir: &Path) -> Self {
        BackupStore {
            dir: state_dir.join("backups"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Refuses when the backup directory has less free space than the
    /// mounts hold (uncompressed: the worst case).
    pub fn preflight(&self, mounts: &[MountSpec]) -> Result<u64, BackupError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let mut needed = 0;
        for mount in mounts {
            needed += archive::estimate_bytes(&mount.source)?;
        }
        let vfs = rustix::fs::statvfs(&self.dir).map_err(|e| BackupError::Io {
            path: self.dir.display().to_string(),
            source: e.into(),
        })?;
        let available = vfs.f_bavail * vfs.f_frsize;
        if needed > available {
            return Err(BackupError::NoSpace {
                dir: self.dir.display().to_string(),
                needed,
                available,
            });
        }
        Ok(needed)
    }

    /// Writes a backup: the inspect document, then each mount, reporting
    /// the mount being archived and the whole backup's counts so far.
    pub fn create(
        &self,
        request: &NewBackup<'_>,
        progress: &(dyn Fn(&str, Archived) + Sync),
    ) -> Result<BackupMeta, BackupError> {
        let NewBackup {
            id,
            container_id,
            container_name,
            inspect,
            mounts,
            retention_days,
            hooks,
        } = request;
        let dir = self.dir.join(id);
        std::fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        let inspect_path = dir.join("inspect.json");
        std::fs::write(
            &inspect_path,
            serde_json::to_vec_pretty(inspect).unwrap_or_default(),
        )
        .map_err(Self::io(&inspect_path))?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let mut out = Vec::new();
        let mut before = Archived::default();
        for (index, mount) in mounts.iter().enumerate() {
            let archive = format!("mount-{index}.tar.zst");
            let manifest = format!("mount-{index}.manifest.jsonl");
            let outcome = archive::write_mount(
                &mount.source,
                &dir.join(&archive),
                &dir.join(&manifest),
                threads,
                &|this: Archived| {
                    let so_far = Archived {
                        entries: before.entries + this.entries,
                        bytes: before.bytes + this.bytes,
                    };
                    progress(&mount.destination, so_far)
                },
            )?;
            before.entries += outcome.entries;
            before.bytes += outcome.bytes;
            out.push(MountBackup {
                index,
                kind: mount.kind.clone(),
                source: mount.source.display().to_string(),
                destination: mount.destination.clone(),
                archive,
                manifest,
                outcome,
            });
        }
        let created = now();
        let meta = BackupMeta {
            id: id.to_string(),
            container_id: container_id.to_string(),
            container_name: container_name.to_string(),
            created_unix: created,
            expires_unix: created + retention_days * 86_400,
            mounts: out,
            hooks: hooks.clone(),
        };
        let meta_path = dir.join("backup.json");
        // Written last: a backup without it is incomplete and never listed.
        std::fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )
        .map_err(Self::io(&meta_path))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io(&dir))?;
        Ok(meta)
    }

    pub fn get(&self, id: &str) -> Result<BackupMeta, BackupError> {
        if !fleet_core::is_valid_name(id) {
            return Err(BackupError::NotFound(id.to_string()));
        }
        let path = self.dir.join(id).join("backup.json");
        let text = std::fs::read(&path).map_err(|_| BackupError::NotFound(id.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| BackupError::Damaged {
            id: id.to_string(),
            reason: e.to_string(),
        })
    }

    pub fn list(&self) -> Vec<BackupMeta> {
        let mut all: Vec<BackupMeta> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| self.get(&id).ok())
            .collect();
        all.sort_by_key(|b| b.created_unix);
        all
    }

    pub fn verify(&self, id: &str) -> Result<Vec<(MountBackup, VerifyOutcome)>, BackupError> {
        let meta = self.get(id)?;
        let dir = self.dir.join(id);
        meta.mounts
            .into_iter()
            .map(|m| {
                let outcome = archive::verify_mount(&dir.join(&m.archive), &dir.join(&m.manifest))?;
                Ok((m, outcome))
            })
            .collect()
    }

    /// Restores every mount of the backup (or only those whose source is
    /// in `only`) to exactly what the manifest says.
    pub fn restore(
        &self,
        id: &str,
        only: &[String],
    ) -> Result<Vec<(MountBackup, RestoreOutcome)>, BackupError> {
        let meta = self.get(id)?;
        let dir = self.dir.join(id);
        meta.mounts
            .into_iter()
            .filter(|m| {
                only.is_empty() || only.contains(&m.source) || only.contains(&m.destination)
            })
            .map(|m| {
                let outcome = archive::restore_mount(
                    Path::new(&m.source),
                    &dir.join(&m.archive),
                    &dir.join(&m.manifest),
                )?;
                Ok((m, outcome))
            })
            .collect()
    }

    /// Deletes a backup (complete or not). Only a real directory directly
    /// under the backup directory is removed, and nothing is followed out
    /// of it: a symbolic link in its place is refused, links inside it are
    /// removed as links (`remove_dir_all` never follows them).
    pub fn remove(&self, id: &str) -> Result<(), BackupError> {
        if !fleet_core::is_valid_name(id) {
            return Err(BackupError::NotFound(id.to_string()));
        }
        let dir = self.dir.join(id);
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NotFound(id.to_string()));
            }
            Err(e) => return Err(Self::io(&dir)(e)),
        };
        if !meta.is_dir() {
            return Err(BackupError::Damaged {
                id: id.to_string(),
                reason: format!(
                    "{} is not a directory (a symbolic link?); fleet did not write it and left it alone",
                    dir.display()
                ),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(Self::io(&dir))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io(&self.dir))
    }

    /// Deletes backups whose retention has passed; returns their ids.
    pub fn prune_expired(&self) -> Vec<String> {
        let now = now();
        self.list()
            .into_iter()
            .filter(|b| b.expires_unix <= now)
            .filter_map(|b| self.remove(&b.id).ok().map(|()| b.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_never_follows_a_symbolic_link_out_of_the_backup_dir() {
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        let store = BackupStore::new(state.path());
        std::fs::create_dir_all(store.dir()).unwrap();
        // A backup directory that is a link to somewhere else: refused.
        std::os::unix::fs::symlink(outside.path(), store.dir().join("linked")).unwrap();
        assert!(matches!(
            store.remove("linked"),
            Err(BackupError::Damaged { .. })
        ));
        // A real backup with a link inside: the link goes, not its target.
        let real = store.dir().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("backup.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(outside.path(), real.join("sub/escape")).unwrap();
        store.remove("real").unwrap();
        assert!(!real.exists());
        assert_eq!(
            std::fs::read(outside.path().join("precious")).unwrap(),
            b"keep"
        );
        assert!(matches!(
            store.remove("real"),
            Err(BackupError::NotFound(_))
        ));
        assert!(matches!(
            store.remove("../x"),
            Err(BackupError::NotFound(_))
        ));
        assert!(
            store.dir().join("linked").exists(),
            "the link itself is left"
        );
    }
}
