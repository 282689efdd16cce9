//! Named volumes handed to the account: each becomes the account's volume
//! of the same name, created through the account's own API (its record
//! lives in the account's libpod database, ROOTLESS.md §6), and the data
//! itself is renamed into it: instant, exact, and renamed back on undo.
//! Where the two are on different mounts (`/var/lib/docker` on its own
//! filesystem, or bind-mounted, is common) a rename cannot cross: the data
//! is copied with `rsync -aHAXx --numeric-ids` (owners, modes, ACLs, file
//! capabilities, hard links kept; links never followed), the rootful
//! directory stays as it is, and the undo writes the account's data back
//! onto the very same inodes (`--inplace --delete`), so the ownership
//! undo's inode-keyed manifest still fits and what was written while moved
//! comes back too.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bollard::models::VolumeCreateRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RootlessError;
use crate::container::str_at;
use crate::engine::Connected;

/// The label an account's volume made by a move carries: after a crash it
/// tells the undo the record is the move's to remove.
pub const MOVED_LABEL: &str = "fleet.moved-volume";

pub fn made_by_a_move(record: &bollard::models::Volume) -> bool {
    record.labels.contains_key(MOVED_LABEL)
}

/// One named volume's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMove {
    pub name: String,
    /// The rootful engine's `_data`.
    pub from: PathBuf,
    /// The account's `_data`, once its volume exists.
    pub to: Option<PathBuf>,
    /// The data directory's (device, inode): what is renamed back must be
    /// the very directory that was moved.
    pub identity: (u64, u64),
    /// Whether the account's volume record was made by this move.
    pub created: bool,
    /// Copied across mounts rather than renamed.
    #[serde(default)]
    pub copied: bool,
}

/// Beside the account's `_data`, once a copy is complete: the source's
/// identity, so a resumed move does not copy twice.
const COPIED_MARKER: &str = "fleet-copied-from";

/// The container's named volumes, refusing what cannot move: a volume
/// driver other than `local` (rootless cannot mount it), one with mount
/// options (NFS, CIFS, tmpfs), a data directory that is a link.
pub fn named_volumes(doc: &Value) -> Result<Vec<VolumeMove>, RootlessError> {
    let mut moves = Vec::new();
    let mut refusals = Vec::new();
    for mount in doc
        .get("Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        if str_at(mount, "/Type") != "volume" {
            continue;
        }
        let name = str_at(mount, "/Name").to_string();
        let driver = str_at(mount, "/Driver");
        if !driver.is_empty() && driver != "local" {
            refusals.push(format!(
                "volume {name} uses driver {driver}: a rootless account cannot mount it"
            ));
            continue;
        }
        let from = PathBuf::from(str_at(mount, "/Source"));
        match std::fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_dir() => moves.push(VolumeMove {
                name,
                identity: (meta.dev(), meta.ino()),
                from,
                to: None,
                created: false,
                copied: false,
            }),
            Ok(_) => refusals.push(format!(
                "volume {name}: {} is not a directory",
                from.display()
            )),
            Err(e) => refusals.push(format!("volume {name}: {}: {e}", from.display())),
        }
    }
    if refusals.is_empty() {
        Ok(moves)
    } else {
        Err(RootlessError::Refused(refusals.join("; ")))
    }
}

/// Moves one volume into the account's engine; safe to repeat after a
/// crash (a volume already moved is recognised by its identity).
pub async fn hand_over(account: &Connected, volume: &mut VolumeMove) -> Result<(), RootlessError> {
    let existing = account.docker.inspect_volume(&volume.name).await.ok();
    let created = existing.as_ref().is_none_or(made_by_a_move);
    let record = match existing {
        Some(record) => record,
        None => account
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.name.clone()),
                labels: Some([(MOVED_LABEL.to_string(), "1".to_string())].into()),
                // `o=uid=,gid=` sets Podman's no-chown: otherwise its first
                // mount chowns (and chmods) the data's root to the
                // container's user, and the root is no longer exact.
                driver_opts: Some([("o".to_string(), "uid=0,gid=0".to_string())].into()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                RootlessError::Internal(format!(
                    "creating volume {} as the account: {e}",
                    volume.name
                ))
            })?,
    };
    volume.created |= created;
    let to = PathBuf::from(record.mountpoint);
    volume.to = Some(to.clone());
    if identity(&to) == Some(volume.identity) {
        return Ok(()); // moved before a crash
    }
    if identity(&volume.from) != Some(volume.identity) {
        return Err(RootlessError::Refused(format!(
            "volume {}: {} is no longer the directory the step decided on; nothing moved",
            volume.name,
            volume.from.display()
        )));
    }
    if copied_from(&to) == Some(volume.identity) {
        volume.copied = true;
        return Ok(()); // copied before a crash
    }
    // The engine made an empty `_data`; anything in it is not ours to drop.
    match std::fs::remove_dir(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RootlessError::Refused(format!(
                "the account's volume {} already holds data at {} ({e}): remove it or choose another account",
                volume.name,
                to.display()
            )));
        }
    }
    match std::fs::rename(&volume.from, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_over(volume, &to).await,
        Err(e) => Err(RootlessError::io(&volume.from)(e)),
    }
}

/// The copy across mounts: into a fresh directory beside the account's
/// `_data`, swapped in by a rename once complete, then marked.
async fn copy_over(volume: &mut VolumeMove, to: &Path) -> Result<(), RootlessError> {
    let incoming = to.with_file_name("_data.fleet-incoming");
    match std::fs::symlink_metadata(&incoming) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(&incoming).map_err(RootlessError::io(&incoming))?
        }
        Ok(_) => std::fs::remove_file(&incoming).map_err(RootlessError::io(&incoming))?,
        Err(_) => {}
    }
    std::fs::create_dir(&incoming).map_err(RootlessError::io(&incoming))?;
    rsync(&[], &volume.from, &incoming).await?;
    std::fs::rename(&incoming, to).map_err(RootlessError::io(&incoming))?;
    let marker = to.with_file_name(COPIED_MARKER);
    // create_new: never through a link the account planted.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .map_err(RootlessError::io(&marker))?;
    std::io::Write::write_all(
        &mut file,
        format!("{}:{}", volume.identity.0, volume.identity.1).as_bytes(),
    )
    .map_err(RootlessError::io(&marker))?;
    volume.copied = true;
    Ok(())
}

/// The identity a completed copy into `to` was made from.
fn copied_from(to: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let marker = to.with_file_name(COPIED_MARKER);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(marker)
        .ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).ok()?;
    let (dev, ino) = text.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// `rsync -aHAXx --numeric-ids` of the contents of `from` into `to`: both
/// must be real directories (a trailing slash would follow a link).
async fn rsync(extra: &[&str], from: &Path, to: &Path) -> Result<(), RootlessError> {
    for dir in [from, to] {
        if identity(dir).is_none() {
            return Err(RootlessError::Refused(format!(
                "{} is not a directory (or is a link): nothing copied",
                dir.display()
            )));
        }
    }
    // -x: never into another filesystem mounted inside, as the walk never goes.
    let mut args: Vec<String> = ["-aHAXx", "--numeric-ids", "--sparse"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("{}/", from.display()));
    args.push(format!("{}/", to.display()));
    let output = tokio::process::Command::new("rsync")
        .args(&args)
        .output()
        .await
        .map_err(|e| {
            RootlessError::tool(
                "rsync",
                &args,
                &format!("{e} (install rsync: apt-get install rsync)"),
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RootlessError::tool(
            "rsync",
            &args,
            String::from_utf8_lossy(&output.stderr).trim(),
        ))
    }
}

/// Renames (or copies) the data back to the rootful engine's volume and
/// removes the account's record if the move made it. Refuses to rename
/// back anything but the directory that was moved: the account controls
/// its storage.
pub async fn hand_back(
    account: Option<&Connected>,
    volume: &VolumeMove,
) -> Result<(), RootlessError> {
    if let Some(to) = &volume.to
        && copied_from(to) == Some(volume.identity)
    {
        if identity(&volume.from) != Some(volume.identity) {
            return Err(RootlessError::Refused(format!(
                "volume {}: {} is no longer the directory the data was copied from: restore it from the run's checkpoint backup",
                volume.name,
                volume.from.display()
            )));
        }
        // Onto the same inodes: the ownership undo's manifest still fits.
        rsync(&["--inplace", "--delete"], to, &volume.from).await?;
        let marker = to.with_file_name(COPIED_MARKER);
        std::fs::remove_file(&marker).map_err(RootlessError::io(&marker))?;
    } else if let Some(to) = &volume.to
        && identity(&volume.from) != Some(volume.identity)
    {
        match identity(to) {
            Some(found) if found == volume.identity => {
                std::fs::rename(to, &volume.from).map_err(RootlessError::io(to))?;
                // The account's record keeps an empty data directory until removed.
                let _ = std::fs::create_dir(to);
            }
            _ => {
                return Err(RootlessError::Refused(format!(
                    "volume {}: the data is neither at {} nor at {}: restore it from the run's checkpoint backup",
                    volume.name,
                    volume.from.display(),
                    to.display()
                )));
            }
        }
    }
    if volume.created
        && let Some(account) = account
    {
        match account
            .docker
            .remove_volume(
                &volume.name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(RootlessError::Internal(format!(
                    "removing the account's volume {}: {e}",
                    volume.name
                )));
            }
        }
    }
    Ok(())
}

/// A directory's (device, inode), never through a link.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}
