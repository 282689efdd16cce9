//! Files read out of a container through the engine's archive API (the
//! one way that works for a stopped container, or an image without a
//! shell): its `/etc/passwd` and `/etc/group`, bounded, a symlink
//! followed once inside the container's own filesystem.

use std::path::Path;

use bollard::query_parameters::{ContainerArchiveInfoOptions, DownloadFromContainerOptions};
use futures::TryStreamExt;

use crate::engine::Connected;
use crate::engine::EngineError;
use crate::identity::UserDb;
use crate::user_files;

/// Largest /etc/passwd or /etc/group archive we read from a container
/// (the container may be hostile; its files are untrusted input).
const MAX_USER_FILE: usize = user_files::MAX_USER_FILE;

/// Whether the engine reports the container's /etc as anything but a
/// symlink (or as missing: then /etc/passwd is missing the same way).
pub(super) async fn etc_is_plain(conn: &Connected, id: &str) -> bool {
    const GO_MODE_SYMLINK: u32 = 1 << 27;
    match conn
        .docker
        .get_container_archive_info(
            id,
            Some(ContainerArchiveInfoOptions {
                path: "/etc".to_string(),
            }),
        )
        .await
    {
        Ok(stat) => stat.link_target.is_empty() && stat.file_mode & GO_MODE_SYMLINK == 0,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => true,
        Err(_) => false,
    }
}

/// Reads `/etc/passwd` and `/etc/group` through the engine's archive API, so
/// it works for stopped containers and images without a shell.
pub(super) async fn read_user_db(conn: &Connected, id: &str) -> Result<UserDb, EngineError> {
    Ok(read_user_db_traced(conn, id).await?.0)
}

/// The same, and whether neither file was a symlink.
pub(super) async fn read_user_db_traced(
    conn: &Connected,
    id: &str,
) -> Result<(UserDb, bool), EngineError> {
    let (passwd, passwd_plain) = read_file(conn, id, "/etc/passwd").await?;
    let (group, group_plain) = read_file(conn, id, "/etc/group").await?;
    Ok((
        UserDb {
            passwd: passwd.map(|t| UserDb::parse_passwd(&t)),
            group: group.map(|t| UserDb::parse_group(&t)),
        },
        passwd_plain && group_plain,
    ))
}

/// One small text file of a container; `None` when it does not exist.
/// Follows a symlink once, inside the container's own filesystem; the flag
/// says no symlink was met at the file itself.
async fn read_file(
    conn: &Connected,
    id: &str,
    path: &str,
) -> Result<(Option<String>, bool), EngineError> {
    let mut path = path.to_string();
    let mut plain = true;
    for _ in 0..2 {
        match read_archive_entry(conn, id, &path).await? {
            None => return Ok((None, plain)),
            Some(ArchiveEntry::File(text)) => return Ok((Some(text), plain)),
            Some(ArchiveEntry::Link(target)) => {
                plain = false;
                path = if target.starts_with('/') {
                    target
                } else {
                    let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
                    parent.join(target).display().to_string()
                };
            }
        }
    }
    Ok((None, false))
}

/// What the archive of a path holds: a file's text, or a symlink's target.
enum ArchiveEntry {
    File(String),
    Link(String),
}

/// The first member of the archive of `path`; `None` when the container
/// has no such path (or it is neither a file nor a symlink).
async fn read_archive_entry(
    conn: &Connected,
    id: &str,
    path: &str,
) -> Result<Option<ArchiveEntry>, EngineError> {
    let stream = conn.docker.download_from_container(
        id,
        Some(DownloadFromContainerOptions {
            path: path.to_string(),
        }),
    );
    let mut archive = Vec::new();
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                archive.extend_from_slice(&chunk);
                if archive.len() > MAX_USER_FILE + 64 * 1024 {
                    return Err(EngineError::Api {
                        call: format!("archive {path}"),
                        message: format!("{path} is larger than {MAX_USER_FILE} bytes"),
                    });
                }
            }
            Ok(None) => break,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) if !message.contains("No such container") => return Ok(None),
            Err(e) => return Err(EngineError::from_bollard("archive", id, e)),
        }
    }
    let mut tar = tar::Archive::new(archive.as_slice());
    let entries = tar.entries().map_err(|e| EngineError::Api {
        call: format!("archive {path}"),
        message: e.to_string(),
    })?;
    if let Some(entry) = entries.flatten().next() {
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Ok(Some(ArchiveEntry::Link(target)));
        }
        if kind.is_file() {
            let mut text = String::new();
            use std::io::Read;
            let mut limited = entry.take(MAX_USER_FILE as u64);
            let mut raw = Vec::new();
            limited
                .read_to_end(&mut raw)
                .map_err(|e| EngineError::Api {
                    call: format!("archive {path}"),
                    message: e.to_string(),
                })?;
            text.push_str(&String::from_utf8_lossy(&raw));
            return Ok(Some(ArchiveEntry::File(text)));
        }
    }
    Ok(None)
}
