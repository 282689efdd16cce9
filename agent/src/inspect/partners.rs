//! A container's partners across the inspected set: the containers it
//! shares a namespace or volumes with, and (Podman) its pod.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bollard::models::ContainerInspectResponse;

use crate::engine::Connected;
use crate::rawhttp;

/// Podman only: pod membership is not in the compat API.
pub(super) async fn pod_names(conn: &Connected) -> HashMap<String, String> {
    if conn.facts.kind != fleet_core::audit::EngineKind::Podman {
        return HashMap::new();
    }
    let path = format!("{}/pods/json", conn.libpod_prefix);
    let pods = match rawhttp::get_json(Path::new(&conn.facts.socket), &path).await {
        Ok(pods) => pods,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list podman pods");
            return HashMap::new();
        }
    };
    let mut by_container = HashMap::new();
    for pod in pods.as_array().into_iter().flatten() {
        let name = pod.get("Name").and_then(|n| n.as_str()).unwrap_or_default();
        for container in pod
            .get("Containers")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(id) = container.get("Id").and_then(|i| i.as_str()) {
                by_container.insert(id.to_string(), name.to_string());
            }
        }
    }
    by_container
}

/// A container's partners: every container it shares a namespace or volumes
/// with, and of those the ones it points at.
#[derive(Debug, Default)]
pub(super) struct Links {
    pub(super) linked: Vec<String>,
    pub(super) depends_on: Vec<String>,
}

/// Which containers share a namespace or volumes, both ways, by name.
pub(super) fn links(docs: &[Arc<ContainerInspectResponse>]) -> HashMap<String, Links> {
    let name_of = |d: &ContainerInspectResponse| {
        d.name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string()
    };
    let find = |target: &str| {
        docs.iter().find(|d| {
            name_of(d) == target
                || d.id
                    .as_deref()
                    .is_some_and(|id| !target.is_empty() && id.starts_with(target))
        })
    };
    let mut out: HashMap<String, Links> = HashMap::new();
    for doc in docs {
        let Some(host) = doc.host_config.as_ref() else {
            continue;
        };
        let mut targets: Vec<String> = [&host.network_mode, &host.ipc_mode, &host.pid_mode]
            .into_iter()
            .flatten()
            .filter_map(|mode| mode.strip_prefix("container:").map(String::from))
            .collect();
        targets.extend(
            host.volumes_from
                .iter()
                .flatten()
                .map(|v| v.split(':').next().unwrap_or_default().to_string()),
        );
        for target in targets {
            if let Some(other) = find(&target) {
                let (a, b) = (
                    doc.id.clone().unwrap_or_default(),
                    other.id.clone().unwrap_or_default(),
                );
                let this = out.entry(a).or_default();
                this.linked.push(name_of(other));
                this.depends_on.push(name_of(other));
                out.entry(b).or_default().linked.push(name_of(doc));
            }
        }
    }
    for links in out.values_mut() {
        for names in [&mut links.linked, &mut links.depends_on] {
            names.sort();
            names.dedup();
        }
    }
    out
}
