//! Runtime directories: directories outside the mounts, under the paths a
//! recreate may lose (`/run`, `/tmp`, ...), that the container's root
//! entrypoint created or gave to its user before dropping privileges. The
//! recreated container starts from the image, where they are root's or
//! absent, and a service that no longer starts as root cannot make them:
//! the recreate puts them, empty, into the created container with the
//! target ids before it starts (the archive API, so the engine resolves
//! every path inside the container's root).
//!
//! Why not a tmpfs mount: it would change the container's configuration
//! (a recreate carries it verbatim), hide whatever the image keeps there,
//! and count against the container's memory.

use fleet_core::audit::{FileOwner, RuntimeDir};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::container::{Api, ContainerError};

/// Roots whose content is runtime state (a recreate may lose it). `/proc`,
/// `/sys` and `/dev` are the engine's own and never given.
pub const RUNTIME_ROOTS: &[&str] = &[
    "/tmp",
    "/run",
    "/var/run",
    "/var/tmp",
    "/var/cache",
    "/var/log",
];

/// At most this many directories are carried: a tree of thousands under
/// `/tmp` is content, not runtime directories.
const MAX_DIRS: usize = 64;

/// A directory the recreate puts into the new container before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDirGrant {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

fn under(path: &str, root: &str) -> bool {
    path.strip_prefix(root.trim_end_matches('/'))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a changed path is a candidate: strictly below a runtime root,
/// and neither a mount, below one, nor above one (the engine makes those).
fn candidate(path: &str, mounts: &[String]) -> bool {
    RUNTIME_ROOTS.iter().any(|root| under(path, root))
        && !mounts
            .iter()
            .any(|m| m == path || under(path, m) || under(m, path))
}

/// The owner, mode and kind of one path in a container, from the first
/// header of the engine's archive of it; `None` when it does not exist.
async fn owner_in(
    api: &Api<'_>,
    id: &str,
    path: &str,
) -> Result<Option<(FileOwner, bool)>, ContainerError> {
    let stream = api.connected().docker.download_from_container(
        id,
        Some(bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        }),
    );
    let mut stream = std::pin::pin!(stream);
    let mut head = Vec::new();
    // Only the first header is read; the rest of the stream is dropped.
    while head.len() < 512 {
        match stream.try_next().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) if !message.contains("No such container") => return Ok(None),
            Err(e) => {
                return Err(ContainerError::Engine {
                    call: format!("archive {path}"),
                    status: 0,
                    message: e.to_string(),
                });
            }
        }
    }
    if head.len() < 512 {
        return Ok(None);
    }
    let header = tar::Header::from_byte_slice(&head[..512]);
    let (Ok(uid), Ok(gid), Ok(mode)) = (header.uid(), header.gid(), header.mode()) else {
        return Ok(None);
    };
    let owner = FileOwner {
        uid: uid as u32,
        gid: gid as u32,
        mode: mode & 0o7777,
    };
    Ok(Some((owner, header.entry_type().is_dir())))
}

/// The image's owners of `paths`, read from a created, never started,
/// container of the image (removed again).
async fn image_owners(
    api: &Api<'_>,
    image: &str,
    paths: &[&str],
) -> Result<Vec<Option<FileOwner>>, ContainerError> {
    let body = json!({
        "Image": image,
        "Entrypoint": ["/fleet-never-started"],
        "Cmd": [],
        "Labels": { "fleet.probe": "image-owners" },
        "NetworkDisabled": true,
    });
    let probe = api.create("", &body).await?;
    let mut owners = Vec::with_capacity(paths.len());
    let mut failure = None;
    for path in paths {
        match owner_in(api, &probe, path).await {
            Ok(found) => owners.push(found.map(|(owner, _)| owner)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    api.remove(&probe).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(owners),
    }
}

/// The runtime directories of container `id` (image `image`, mounts at
/// `mounts`): directories it created under a runtime root, and existing
/// ones whose owner or mode it changed from the image's.
pub async fn find(
    api: &Api<'_>,
    id: &str,
    image: &str,
    mounts: &[String],
) -> Result<Vec<RuntimeDir>, ContainerError> {
    let mut changed: Vec<(String, i64)> = api
        .changes(id)
        .await?
        .into_iter()
        .filter(|(path, kind)| *kind != 2 && candidate(path, mounts))
        .collect();
    changed.sort();
    let mut found = Vec::new();
    let mut modified = Vec::new();
    for (path, kind) in changed {
        if found.len() + modified.len() >= MAX_DIRS {
            break;
        }
        let Some((now, true)) = owner_in(api, id, &path).await? else {
            continue;
        };
        if kind == 1 {
            found.push(RuntimeDir {
                why: format!("created by the container, owned by {}:{}", now.uid, now.gid),
                path,
                now,
                image: None,
            });
        } else {
            modified.push((path, now));
        }
    }
    if !modified.is_empty() {
        let paths: Vec<&str> = modified.iter().map(|(p, _)| p.as_str()).collect();
        let in_image = image_owners(api, image, &paths).await?;
        for ((path, now), image) in modified.into_iter().zip(in_image) {
            if image == Some(now) {
                continue;
            }
            let why = match image {
                Some(i) => format!(
                    "given to {}:{} mode {:o} by the container (the image has {}:{} mode {:o})",
                    now.uid, now.gid, now.mode, i.uid, i.gid, i.mode
                ),
                None => format!("owned by {}:{}", now.uid, now.gid),
            };
            found.push(RuntimeDir {
                path,
                now,
                image,
                why,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// The runtime directories the plan shows for an inspected container;
/// a failure to read them is logged and shows as none (the recreate reads
/// them again, and verify catches a service that cannot start).
pub async fn planned(
    conn: &crate::engine::Connected,
    doc: &bollard::models::ContainerInspectResponse,
) -> Vec<RuntimeDir> {
    let id = doc.id.as_deref().unwrap_or_default();
    let image = doc.image.as_deref().unwrap_or_default();
    let mounts: Vec<String> = doc
        .mounts
        .iter()
        .flatten()
        .filter_map(|m| m.destination.clone())
        .chain(
            doc.host_config
                .as_ref()
                .and_then(|h| h.tmpfs.as_ref())
                .into_iter()
                .flat_map(|t| t.keys().cloned()),
        )
        .collect();
    match find(&Api::new(conn), id, image, &mounts).await {
        Ok(dirs) => dirs,
        Err(e) => {
            tracing::warn!(container = id, error = %e, "runtime directories could not be read");
            Vec::new()
        }
    }
}

/// What the recreate gives: each directory, with its mode now, to the
/// target ids.
pub fn grants(dirs: &[RuntimeDir], uid: u32, gid: u32) -> Vec<RuntimeDirGrant> {
    dirs.iter()
        .map(|d| RuntimeDirGrant {
            path: d.path.clone(),
            uid,
            gid,
            mode: d.now.mode,
        })
        .collect()
}

/// A tar of the directory entries alone (no content), parents first, to
/// be extracted at `/` of the created container.
fn archive(grants: &[RuntimeDirGrant]) -> Result<Vec<u8>, std::io::Error> {
    let mut sorted: Vec<&RuntimeDirGrant> = grants.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut builder = tar::Builder::new(Vec::new());
    for grant in sorted {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_uid(u64::from(grant.uid));
        header.set_gid(u64::from(grant.gid));
        header.set_mode(grant.mode);
        header.set_mtime(0);
        builder.append_data(
            &mut header,
            grant.path.trim_start_matches('/'),
            std::io::empty(),
        )?;
    }
    builder.into_inner()
}

/// Puts the directories into the created (not yet started) container.
pub async fn give(
    api: &Api<'_>,
    container: &str,
    grants: &[RuntimeDirGrant],
) -> Result<(), ContainerError> {
    if grants.is_empty() {
        return Ok(());
    }
    let tar = archive(grants).map_err(|e| ContainerError::Engine {
        call: "runtime directories archive".into(),
        status: 0,
        message: e.to_string(),
    })?;
    api.connected()
        .docker
        .upload_to_container(
            container,
            Some(bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            }),
            bollard::body_full(tar.into()),
        )
        .await
        .map_err(|e| ContainerError::Engine {
            call: "put runtime directories".into(),
            status: 0,
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_strictly_below_a_runtime_root_and_clear_of_mounts_count() {
        let mounts = vec!["/run/db/data".to_string(), "/tmp/shared".to_string()];
        assert!(candidate("/run/app", &mounts));
        assert!(candidate("/var/run/app/locks", &mounts));
        assert!(
            !candidate("/run", &mounts),
            "the root itself is the image's"
        );
        assert!(!candidate("/etc/app", &mounts), "not a runtime root");
        assert!(!candidate("/runner/x", &mounts), "a prefix is not a parent");
        assert!(!candidate("/tmp/shared/x", &mounts), "inside a mount");
        assert!(
            !candidate("/run/db", &mounts),
            "above a mount: the engine's"
        );
        assert!(!candidate("/proc/1", &mounts));
    }

    #[test]
    fn the_archive_holds_each_directory_with_its_new_owner_parents_first() {
        let grants = vec![
            RuntimeDirGrant {
                path: "/run/app/sock".into(),
                uid: 1000,
                gid: 1001,
                mode: 0o700,
            },
            RuntimeDirGrant {
                path: "/run/app".into(),
                uid: 1000,
                gid: 1001,
                mode: 0o755,
            },
        ];
        let tar = archive(&grants).unwrap();
        let mut reader = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u64, u64, u32)> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("run/app".into(), 1000, 1001, 0o755),
                ("run/app/sock".into(), 1000, 1001, 0o700),
            ]
        );
    }
}
