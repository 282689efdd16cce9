//! The exact image a container ran, by ID, carried into an account's own
//! storage: the source engine's export streamed into the account's API
//! (`POST /images/load`), so the write happens as the account and nothing
//! of the account's storage is touched by root (ROOTLESS.md §5). The ID is
//! checked after the load and the name Docker meant is given to it, fully
//! qualified: a short name resolves differently under the account.

use bollard::query_parameters::{ImportImageOptions, RemoveImageOptions, TagImageOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::error::RootlessError;
use crate::engine::Connected;

/// What the load left in the account's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedImage {
    /// `sha256:…`, the same on both sides.
    pub id: String,
    /// The fully qualified name given to it, when the container ran a named
    /// image.
    pub name: Option<String>,
    /// Whether this load put it there (an image the account had already
    /// is left on undo).
    pub loaded: bool,
    pub bytes: u64,
}

/// `sha256:` + hex, whichever form an engine reports.
pub fn image_id(id: &str) -> String {
    if id.starts_with("sha256:") {
        id.to_string()
    } else {
        format!("sha256:{id}")
    }
}

/// The fully qualified reference Docker means by `reference`:
/// `postgres:16` → `docker.io/library/postgres:16`, `acme/web` →
/// `docker.io/acme/web:latest`; a reference with a registry stays. An ID
/// is no name.
pub fn fully_qualified(reference: &str) -> Option<String> {
    if reference.is_empty() || reference.starts_with("sha256:") {
        return None;
    }
    let (first, _) = reference.split_once('/').unwrap_or(("", reference));
    let has_registry =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut name = match (has_registry, reference.contains('/')) {
        (true, _) => reference.to_string(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        name.push_str(":latest");
    }
    Some(name)
}

/// Loads image `id` from `source` into `account`'s engine and names it.
pub async fn load(
    source: &Connected,
    account: &Connected,
    id: &str,
    name: Option<&str>,
) -> Result<LoadedImage, RootlessError> {
    let id = image_id(id);
    let present = account.docker.inspect_image(&id).await.is_ok();
    let mut bytes = 0u64;
    if !present {
        let export = source.docker.export_image(&id);
        let mut answers = account.docker.import_image_stream(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            export,
            None,
        );
        while let Some(answer) = answers.next().await {
            let answer = answer.map_err(|e| load_failed(&id, &e.to_string()))?;
            if let Some(error) = answer.error_detail.and_then(|d| d.message) {
                return Err(load_failed(&id, &error));
            }
        }
        bytes = account
            .docker
            .inspect_image(&id)
            .await
            .ok()
            .and_then(|i| i.size)
            .unwrap_or(0) as u64;
    }
    let loaded_id = account
        .docker
        .inspect_image(&id)
        .await
        .map_err(|e| load_failed(&id, &format!("not there after the load: {e}")))?
        .id
        .unwrap_or_default();
    if loaded_id != id {
        return Err(load_failed(
            &id,
            &format!("the account's engine holds it as {loaded_id}"),
        ));
    }
    // A digest pins the image already; only a tag is given again.
    let name = name.and_then(fully_qualified).filter(|n| !n.contains('@'));
    if let Some(name) = &name {
        let (repo, tag) = split_tag(name);
        account
            .docker
            .tag_image(
                &id,
                Some(TagImageOptions {
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(|e| load_failed(&id, &format!("tagging it {name}: {e}")))?;
    }
    Ok(LoadedImage {
        id,
        name,
        loaded: !present,
        bytes,
    })
}

/// Removes what `load` put in the account's storage (nothing when the
/// image was there before).
pub async fn unload(account: &Connected, image: &LoadedImage) -> Result<(), RootlessError> {
    if !image.loaded {
        return Ok(());
    }
    match account
        .docker
        .remove_image(
            &image.id,
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(RootlessError::Internal(format!(
            "removing image {} from the account: {e}",
            image.id
        ))),
    }
}

fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

fn load_failed(id: &str, why: &str) -> RootlessError {
    // Podman's own words, when a file's owner is beyond the account's
    // subordinate range: "(requested 100000:100000 for /big)".
    if let Some(rest) = why
        .split("insufficient UIDs or GIDs available in user namespace (requested ")
        .nth(1)
        && let Some((ids, path)) = rest.split_once(" for ")
    {
        let path = path.split(')').next().unwrap_or(path);
        return RootlessError::Refused(format!(
            "image {id} cannot be held by the account: its file {path} is owned by {ids}, beyond the ids the account's namespace maps (65,536 by default): give the account a larger subordinate range or change the file's owner in the image; nothing was stopped"
        ));
    }
    RootlessError::Refused(format!(
        "image {id} could not be loaded into the account's storage: {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_as_docker_means_them() {
        for (short, full) in [
            ("postgres:16", "docker.io/library/postgres:16"),
            ("postgres", "docker.io/library/postgres:latest"),
            ("acme/web:2", "docker.io/acme/web:2"),
            ("fleet-test/bb:1", "docker.io/fleet-test/bb:1"),
            ("localhost/x:1", "localhost/x:1"),
            (
                "registry.example:5000/a/b",
                "registry.example:5000/a/b:latest",
            ),
            ("quay.io/a/b@sha256:ab", "quay.io/a/b@sha256:ab"),
        ] {
            assert_eq!(fully_qualified(short).as_deref(), Some(full), "{short}");
        }
        assert_eq!(fully_qualified("sha256:abc"), None);
        assert_eq!(
            split_tag("registry.example:5000/a/b:2"),
            ("registry.example:5000/a/b", "2")
        );
        assert_eq!(image_id("abc"), "sha256:abc");
    }
}
