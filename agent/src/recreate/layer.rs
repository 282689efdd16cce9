//! What a recreate loses from the writable layer, and what it would do
//! differently, decided from the running container (for the plan) as the
//! recreate itself decides it.

use serde_json::{Value, json};

use crate::container::{Api, ContainerError, str_at};
use crate::runtime_dirs;

/// The engine's own paths in the writable layer; with the runtime roots,
/// the changes a recreate may lose.
const ENGINE_OWN: &[&str] = &["/dev", "/proc", "/sys"];

fn is_ephemeral(path: &str, mounts: &[String], engine_files: &[&str]) -> bool {
    let under =
        |root: &str| path == root || path.starts_with(&format!("{}/", root.trim_end_matches('/')));
    // The engine creates mount points (and their parents) in the layer, and
    // a change below a runtime root copies its parents up (`/var` for
    // `/var/cache/app`): a parent listed for that holds nothing of its own.
    let above = |below: &str| below.starts_with(&format!("{}/", path.trim_end_matches('/')));
    runtime_dirs::RUNTIME_ROOTS
        .iter()
        .chain(ENGINE_OWN)
        .chain(engine_files)
        .any(|r| under(r) || above(r))
        || mounts.iter().any(|m| under(m) || above(m))
}

/// What a recreate of a container would refuse or do differently, known
/// from the running container before anything changes: the plan shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Foreseen {
    /// Writable-layer paths a recreate loses (refused unless the policy
    /// allows the loss).
    pub layer_loss: Vec<String>,
    /// What the engine makes the run do differently.
    pub notes: Vec<String>,
}

pub async fn foresee(api: &Api<'_>, id: &str) -> Result<Foreseen, ContainerError> {
    let old = api.inspect(id).await?;
    let flavour = api.connected().flavour;
    let restart_policy = old
        .pointer("/HostConfig/RestartPolicy")
        .cloned()
        .unwrap_or(json!({"Name": "no"}));
    let mut notes = Vec::new();
    let policy = str_at(&restart_policy, "/Name");
    if !flavour.updates_restart_policy() && !matches!(policy, "" | "no") {
        notes.push(format!(
            "the kept checkpoint keeps restart policy {policy} ({} cannot change it): it was stopped by its user, which Podman never restarts{}",
            flavour.describe(),
            match flavour.checkpoint_boot_guard(policy) {
                Some(guard) => format!(
                    ", and {} keeps podman-restart.service from starting it at boot",
                    guard.path.display()
                ),
                None => String::new(),
            }
        ));
    }
    if has_healthcheck(&old) && !flavour.runs_healthchecks() {
        notes.push(format!(
            "{} runs no healthcheck: fleet-agent runs it while verify waits",
            flavour.describe()
        ));
    }
    Ok(Foreseen {
        layer_loss: lost_content(api, str_at(&old, "/Id"), &mount_destinations(&old)).await,
        notes,
    })
}

pub fn has_healthcheck(doc: &Value) -> bool {
    doc.pointer("/Config/Healthcheck/Test")
        .and_then(|t| t.as_array())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE")
}

/// Where the container's mounts and tmpfs mounts are.
pub(super) fn mount_destinations(doc: &Value) -> Vec<String> {
    let mut mounts: Vec<String> = doc
        .pointer("/Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("Destination")?.as_str().map(String::from))
        .collect();
    mounts.extend(
        doc.pointer("/HostConfig/Tmpfs")
            .and_then(|t| t.as_object())
            .into_iter()
            .flat_map(|t| t.keys().cloned()),
    );
    mounts
}

/// Writable-layer paths with content of their own that a recreate loses.
pub(super) async fn lost_content(api: &Api<'_>, id: &str, mounts: &[String]) -> Vec<String> {
    let engine_files = api.connected().flavour.own_layer_files();
    let lost: Vec<(String, i64)> = api
        .changes(id)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(path, kind)| *kind != 2 && !is_ephemeral(path, mounts, engine_files))
        .collect();
    // A directory listed as modified because a child changed holds nothing
    // of its own: the child is listed too.
    let holds_a_listed_change = |dir: &str| {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        lost.iter().any(|(other, _)| other.starts_with(&prefix))
    };
    lost.iter()
        .filter(|(path, kind)| !(*kind == 0 && holds_a_listed_change(path)))
        .map(|(path, _)| path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_state_mount_points_and_the_parents_they_copy_up_are_not_lost_content() {
        let mounts = vec!["/srv/data".to_string()];
        for path in [
            "/run/app",
            "/tmp/x",
            "/var",
            "/var/cache/app",
            "/srv",
            "/srv/data/f",
        ] {
            assert!(is_ephemeral(path, &mounts, &[]), "{path}");
        }
        for path in [
            "/etc",
            "/etc/app.conf",
            "/var/lib/db",
            "/srv/other",
            "/varnish",
        ] {
            assert!(!is_ephemeral(path, &mounts, &[]), "{path}");
        }
        // Podman's own mount-point files leave their parent listed.
        let podman = crate::flavour::Flavour::new(fleet_core::audit::EngineKind::Podman, "4.3.1");
        for path in ["/etc", "/etc/hosts", "/etc/mtab", "/run"] {
            assert!(
                is_ephemeral(path, &mounts, podman.own_layer_files()),
                "{path}"
            );
        }
        for path in ["/etc/app.conf", "/etc/passwd", "/etcetera"] {
            assert!(
                !is_ephemeral(path, &mounts, podman.own_layer_files()),
                "{path}"
            );
        }
    }
}
