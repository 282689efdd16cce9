//! One container's report: who it runs as (configuration, image passwd
//! and the real process ids), its verdict and findings, its mounts, and
//! for planning what a migration would meet.

use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;
use fleet_core::audit::{ContainerReport, Identity, ImageUser, ProcessIdentity, RuntimeDir};

use super::mounts::mount_report;
use super::user_dbs::{DbResult, resolve_user, users_of};
use crate::cache::Cache;
use crate::engine::Connected;
use crate::findings::{FindingInput, findings};
use crate::identity::{self, RootMapping};
use crate::ownership::WalkBounds;
use crate::procfs::ProcessTable;

/// What every report of one inspection shares.
pub(super) struct Shared<'a> {
    pub(super) conn: &'a Connected,
    pub(super) cache: &'a Cache,
    pub(super) bounds: WalkBounds,
    pub(super) table: &'a ProcessTable,
    pub(super) pods: &'a HashMap<String, String>,
    pub(super) skip_ownership: bool,
    /// Planning: the image's users and what a recreate would meet.
    pub(super) with_users: bool,
}

/// The report of the container `doc` describes (`db`: its user database,
/// when this inspection read it).
pub(super) async fn report(
    shared: &Shared<'_>,
    doc: &ContainerInspectResponse,
    db: Option<&DbResult>,
) -> ContainerReport {
    let conn = shared.conn;
    let id = doc.id.clone().unwrap_or_default();
    let config = doc.config.clone().unwrap_or_default();
    let configured_user = config.user.clone().unwrap_or_default();
    let mut errors = Vec::new();

    let resolved = resolve_user(conn, shared.cache, &id, &configured_user, db).await;
    if let Err(e) = &resolved {
        errors.push(e.clone());
    }
    let state = doc.state.clone().unwrap_or_default();
    let running = state.running == Some(true);
    let main_pid = state.pid.unwrap_or(0) as i32;
    let (processes, root_host_uid) = if running && main_pid > 0 {
        processes(shared.table, main_pid)
    } else {
        (Vec::new(), mapped_root(conn, doc))
    };
    let mapping = RootMapping {
        root_host_uid,
        rootless_engine: conn.facts.rootless,
    };
    let verdict = identity::verdict(&resolved, running, main_pid, &processes, mapping);
    let findings = findings(&FindingInput {
        doc,
        configured_user: &configured_user,
        resolved: &resolved,
        verdict: &verdict,
        engine_socket: &conn.canonical_socket,
    });
    let mut mounts = Vec::new();
    for mount in doc.mounts.iter().flatten() {
        mounts.push(mount_report(shared.cache, shared.bounds, mount, shared.skip_ownership).await);
    }
    let labels = config.labels.clone().unwrap_or_default();
    let planned = planning(shared, doc, &id, db).await;
    let (uid, gid, resolution) = match &resolved {
        Ok(r) => (Some(r.uid), Some(r.gid), r.how.clone()),
        Err(e) => (None, None, e.clone()),
    };
    ContainerReport {
        name: doc
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.clone().unwrap_or_default(),
        image_id: doc.image.clone().unwrap_or_default(),
        state: state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        identity: Identity {
            configured_user,
            uid,
            gid,
            resolution,
            processes,
            verdict,
        },
        findings,
        mounts,
        compose_project: labels.get("com.docker.compose.project").cloned(),
        compose_service: labels.get("com.docker.compose.service").cloned(),
        pod: shared.pods.get(&id).cloned(),
        errors,
        config_fingerprint: fingerprint(doc),
        users: planned.users,
        linked: Vec::new(),
        depends_on: Vec::new(),
        auto_remove: doc.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true),
        stop_timeout_secs: config.stop_timeout.unwrap_or(10),
        exposed_ports: exposed_ports(&config),
        runtime_dirs: planned.runtime_dirs,
        layer_loss: planned.foreseen.layer_loss,
        engine_notes: planned.foreseen.notes,
        account: None,
        rootless_blockers: planned.rootless.blockers,
        rootless_changes: planned.rootless.changes,
        id,
    }
}

/// The process tree of a running container's main process, its ids as
/// seen inside and on the host; and the host uid of its root.
fn processes(table: &ProcessTable, main_pid: i32) -> (Vec<ProcessIdentity>, Option<u32>) {
    let uid_map = table.uid_map(main_pid);
    let gid_map = table.gid_map(main_pid);
    let processes: Vec<ProcessIdentity> = table
        .tree(main_pid)
        .into_iter()
        .map(|p| ProcessIdentity {
            pid: p.pid,
            ppid: p.ppid,
            command: p.name.clone(),
            uids: p.uids.map(|u| uid_map.to_inside(u)),
            gids: p.gids.map(|g| gid_map.to_inside(g)),
            host_uids: p.uids,
        })
        .collect();
    (processes, uid_map.to_host(0))
}

/// A container that does not run: its root's host uid is the engine's
/// mapping, unless it shares the host's user namespace.
fn mapped_root(conn: &Connected, doc: &ContainerInspectResponse) -> Option<u32> {
    let shares_host_userns = doc
        .host_config
        .as_ref()
        .and_then(|h| h.userns_mode.as_deref())
        == Some("host");
    if shares_host_userns {
        None
    } else {
        conn.root_host_uid
    }
}

/// What only a plan needs: the image's own users, the runtime
/// directories of the writable layer, and what a recreate would do.
struct Planning {
    users: Vec<ImageUser>,
    runtime_dirs: Vec<RuntimeDir>,
    foreseen: crate::recreate::Foreseen,
    rootless: crate::rootless::place::Differences,
}

async fn planning(
    shared: &Shared<'_>,
    doc: &ContainerInspectResponse,
    id: &str,
    db: Option<&DbResult>,
) -> Planning {
    let conn = shared.conn;
    if !shared.with_users {
        return Planning {
            users: Vec::new(),
            runtime_dirs: Vec::new(),
            foreseen: Default::default(),
            rootless: Default::default(),
        };
    }
    let users = users_of(conn, shared.cache, id, db).await;
    // Planning only: a plain audit does not pay for the layer diff.
    let runtime_dirs = crate::runtime_dirs::planned(conn, doc).await;
    let foreseen = crate::recreate::foresee(&crate::container::Api::new(conn), id)
        .await
        .unwrap_or_else(|e| crate::recreate::Foreseen {
            notes: vec![format!("what a recreate would do cannot be read: {e}")],
            ..Default::default()
        });
    // What a rootless move would meet, off the same document the place
    // step creates from (and refuses on).
    let caps = crate::capabilities::current().await;
    let rootless = match serde_json::to_value(doc) {
        Ok(value) => crate::rootless::place::differences(
            &value,
            crate::rootless::place::HostFacts::of(&caps),
        ),
        Err(e) => crate::rootless::place::Differences {
            blockers: vec![format!(
                "its inspect document cannot be read for a rootless move: {e}"
            )],
            changes: Vec::new(),
        },
    };
    Planning {
        users,
        runtime_dirs,
        foreseen,
        rootless,
    }
}

/// A digest of what a migration plan depends on: the configuration, the
/// host configuration, the image and the name (JSON objects serialize with
/// sorted keys, so the digest is stable).
fn fingerprint(doc: &ContainerInspectResponse) -> String {
    use sha2::Digest;
    let value = serde_json::json!({
        "config": doc.config,
        "host_config": doc.host_config,
        "image": doc.image,
        "name": doc.name,
    });
    hex::encode(sha2::Sha256::digest(value.to_string().as_bytes()))[..16].to_string()
}

/// `Config.ExposedPorts` (`6379/tcp`, ...), sorted.
fn exposed_ports(config: &bollard::models::ContainerConfig) -> Vec<String> {
    let mut ports = config.exposed_ports.clone().unwrap_or_default();
    ports.sort();
    ports
}
