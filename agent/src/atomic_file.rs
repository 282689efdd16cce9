//! A root-owned file replaced whole: written to a fresh sibling (created
//! exclusively, never through a link someone planted), synced, given its
//! owner and mode, renamed over the path, the directory synced. A reader
//! sees the old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `contents`, mode `mode`, owned by `owner` (uid,
/// gid) when given.
pub fn replace(
    path: &Path,
    contents: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut partial = path.as_os_str().to_owned();
    partial.push(".fleet-partial");
    let partial = std::path::PathBuf::from(partial);
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    // The umask may have narrowed the mode asked at create.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&partial, path)?;
    std::fs::File::open(dir)?.sync_all()
}
