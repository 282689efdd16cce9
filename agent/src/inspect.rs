//! The inspection: every container of the engine, who it runs as, what it
//! is allowed to do, and what it has mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{ContainerInspectResponse, MountPoint};
use bollard::query_parameters::{DownloadFromContainerOptions, ListContainersOptions};
use fleet_core::audit::{
    ContainerReport, HostReport, Identity, MountReport, OwnershipSummary, ProcessIdentity,
};
use futures::{StreamExt, TryStreamExt};

use crate::cache::Cache;
use crate::engine::{Connected, Engine};
use crate::error::EngineError;
use crate::findings::{FindingInput, findings};
use crate::identity::{self, Resolved, RootMapping, UserDb};
use crate::ownership::{WalkBounds, summarize};
use crate::procfs::ProcessTable;
use crate::rawhttp;

/// How many engine calls run at once.
const CONCURRENCY: usize = 16;
/// Largest /etc/passwd or /etc/group archive we read from a container
/// (the container may be hostile; its files are untrusted input).
const MAX_USER_FILE: usize = 1024 * 1024;

/// A container to inspect, and whether a cached document may stand in.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    use_cache: bool,
}

#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Names or id prefixes; empty means all.
    pub containers: Vec<String>,
    pub skip_ownership: bool,
    /// Also list each container's own non-root users (planning needs them).
    pub with_users: bool,
}

#[derive(Debug)]
pub struct Inspector {
    engine: Arc<Engine>,
    cache: Arc<Cache>,
    bounds: WalkBounds,
    hostname: String,
    proc_root: PathBuf,
    /// `key=value` label a container must carry to be this agent's.
    scope: Option<(String, String)>,
    /// One inspection of everything at a time; see `inspect`.
    flight: tokio::sync::Mutex<()>,
    last_flight: std::sync::Mutex<Option<(Instant, bool, Arc<HostReport>)>>,
}

impl Inspector {
    pub fn new(
        engine: Arc<Engine>,
        cache: Arc<Cache>,
        bounds: WalkBounds,
        hostname: String,
        scope: Option<(String, String)>,
    ) -> Self {
        Inspector {
            engine,
            cache,
            bounds,
            hostname,
            proc_root: PathBuf::from("/proc"),
            scope,
            flight: tokio::sync::Mutex::new(()),
            last_flight: std::sync::Mutex::new(None),
        }
    }

    /// Inspects every container (or those `options` names). Requests that
    /// arrive while an inspection of everything is under way share the next
    /// one to start: a result computed after a request arrived is as fresh
    /// as that request can ask for, and a fleet-wide audit that reaches many
    /// agents on one engine costs the engine one inspection, not hundreds.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// The `key=value` label that makes a container this agent's, if any.
    pub fn scope(&self) -> Option<&(String, String)> {
        self.scope.as_ref()
    }

    /// Only containers carrying the configured label are this agent's
    /// (several agents may share one engine, each with its own set).
    pub fn in_scope(&self, doc: &ContainerInspectResponse) -> bool {
        let Some((key, value)) = &self.scope else {
            return true;
        };
        doc.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(key))
            .is_some_and(|v| v == value)
    }

    pub async fn inspect(&self, options: &InspectOptions) -> Result<HostReport, EngineError> {
        if !options.containers.is_empty() {
            return self.inspect_now(options).await;
        }
        let requested_at = Instant::now();
        let _turn = self.flight.lock().await;
        if let Some((started, skip, report)) =
            &*self.last_flight.lock().unwrap_or_else(|p| p.into_inner())
            && *started >= requested_at
            && *skip == options.skip_ownership
            && !options.with_users
        {
            return Ok((**report).clone());
        }
        let started = Instant::now();
        let report = self.inspect_now(options).await?;
        *self.last_flight.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((started, options.skip_ownership, Arc::new(report.clone())));
        Ok(report)
    }

    async fn inspect_now(&self, options: &InspectOptions) -> Result<HostReport, EngineError> {
        let conn = self.engine.connected().await?;
        let ids = match self.cache.current_ids(conn).await {
            Some(ids) => ids,
            None => conn
                .docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    ..Default::default()
                }))
                .await
                .map_err(|e| EngineError::Unreachable {
                    socket: conn.facts.socket.clone(),
                    message: e.to_string(),
                })?
                .into_iter()
                .filter_map(|c| c.id)
                .collect(),
        };
        let listed = ids
            .into_iter()
            .map(|id| Listed {
                id,
                use_cache: true,
            })
            .collect();
        self.inspect_listed(listed, options).await
    }

    /// Inspects the given containers, bypassing the cache. A container
    /// named here but gone by the time it is inspected is a warning, not an
    /// error: the others go on.
    pub async fn inspect_ids(
        &self,
        ids: Vec<String>,
        options: &InspectOptions,
    ) -> Result<HostReport, EngineError> {
        let listed = ids
            .into_iter()
            .map(|id| Listed {
                id,
                use_cache: false,
            })
            .collect();
        self.inspect_listed(listed, options).await
    }

    async fn inspect_listed(
        &self,
        listed: Vec<Listed>,
        options: &InspectOptions,
    ) -> Result<HostReport, EngineError> {
        let conn = self.engine.connected().await?;
        let mut warnings = Vec::new();
        let docs: Vec<Result<Arc<ContainerInspectResponse>, (String, EngineError)>> =
            futures::stream::iter(listed)
                .map(|listed| async move {
                    self.inspect_doc(conn, &listed)
                        .await
                        .map_err(|e| (listed.id.clone(), e))
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut selected = Vec::new();
        for doc in docs {
            match doc {
                Ok(doc) if !self.in_scope(&doc) => {}
                Ok(doc) => selected.push(doc),
                Err((id, EngineError::NoSuchContainer(_))) => {
                    self.cache.forget(&id);
                    warnings.push(format!(
                        "container {} disappeared during inspection",
                        short(&id)
                    ));
                }
                Err((id, e)) => warnings.push(format!("container {}: {e}", short(&id))),
            }
        }
        if !options.containers.is_empty() {
            for wanted in &options.containers {
                if !selected.iter().any(|d| matches_name(d, wanted)) {
                    warnings.push(format!("no container named or with id '{wanted}'"));
                }
            }
            selected.retain(|d| options.containers.iter().any(|w| matches_name(d, w)));
        }
        let linked = links(&selected);
        let pods = self.pod_names(conn).await;
        let proc_root = self.proc_root.clone();
        let main_pids: Vec<i32> = selected
            .iter()
            .filter_map(|d| d.state.as_ref()?.pid)
            .filter(|pid| *pid > 0)
            .map(|pid| pid as i32)
            .collect();
        let table = Arc::new(
            tokio::task::spawn_blocking(move || ProcessTable::of_trees(&proc_root, &main_pids))
                .await
                .unwrap_or_default(),
        );
        let mut containers: Vec<ContainerReport> = futures::stream::iter(selected)
            .map(|doc| {
                let table = table.clone();
                let pods = &pods;
                let linked = &linked;
                async move {
                    let mut report = self.report(conn, &doc, &table, pods, options).await;
                    if let Some(links) = linked.get(&report.id) {
                        report.linked = links.linked.clone();
                        report.depends_on = links.depends_on.clone();
                    }
                    report
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let accounts = crate::host_accounts::for_planning(options.with_users, &mut warnings);
        Ok(HostReport {
            hostname: self.hostname.clone(),
            engine: conn.facts.clone(),
            containers,
            warnings,
            inspected_at_unix_ms: fleet_core::now_ms(),
            host_users: accounts.users,
            host_groups: accounts.groups,
        })
    }

    async fn inspect_doc(
        &self,
        conn: &Connected,
        listed: &Listed,
    ) -> Result<Arc<ContainerInspectResponse>, EngineError> {
        let id = listed.id.as_str();
        if listed.use_cache
            && let Some(doc) = self.cache.doc(id)
        {
            return Ok(doc);
        }
        let epoch = self.cache.epoch(id);
        let doc = conn
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| EngineError::from_bollard("inspect", id, e))?;
        let doc = Arc::new(doc);
        self.cache.put_doc(id, epoch, doc.clone());
        Ok(doc)
    }

    /// Podman only: pod membership is not in the compat API.
    async fn pod_names(&self, conn: &Connected) -> HashMap<String, String> {
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

    async fn report(
        &self,
        conn: &Connected,
        doc: &ContainerInspectResponse,
        table: &ProcessTable,
        pods: &HashMap<String, String>,
        options: &InspectOptions,
    ) -> ContainerReport {
        let id = doc.id.clone().unwrap_or_default();
        let config = doc.config.clone().unwrap_or_default();
        let configured_user = config.user.clone().unwrap_or_default();
        let mut errors = Vec::new();

        let resolved = self.resolve_user(conn, &id, &configured_user).await;
        if let Err(e) = &resolved {
            errors.push(e.clone());
        }
        let state = doc.state.clone().unwrap_or_default();
        let running = state.running == Some(true);
        let main_pid = state.pid.unwrap_or(0) as i32;
        let (processes, root_host_uid) = if running && main_pid > 0 {
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
        } else {
            let shares_host_userns = doc
                .host_config
                .as_ref()
                .and_then(|h| h.userns_mode.as_deref())
                == Some("host");
            let mapped = if shares_host_userns {
                None
            } else {
                conn.root_host_uid
            };
            (Vec::new(), mapped)
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
            mounts.push(self.mount_report(mount, options.skip_ownership).await);
        }
        let labels = config.labels.clone().unwrap_or_default();
        let users = if options.with_users {
            self.users_of(conn, &id).await
        } else {
            Vec::new()
        };
        // Planning only: a plain audit does not pay for the layer diff.
        let runtime_dirs = if options.with_users {
            crate::runtime_dirs::planned(conn, doc).await
        } else {
            Vec::new()
        };
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
            pod: pods.get(&id).cloned(),
            errors,
            config_fingerprint: fingerprint(doc),
            users,
            linked: Vec::new(),
            depends_on: Vec::new(),
            auto_remove: doc.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true),
            stop_timeout_secs: config.stop_timeout.unwrap_or(10),
            exposed_ports: exposed_ports(&config),
            runtime_dirs,
            id,
        }
    }

    /// The container's own non-root users, from its passwd.
    async fn users_of(&self, conn: &Connected, id: &str) -> Vec<fleet_core::audit::ImageUser> {
        let db = match self.cache.user_db(id) {
            Some(db) => db,
            None => match read_user_db(conn, id).await {
                Ok(db) => Arc::new(db),
                Err(_) => return Vec::new(),
            },
        };
        db.passwd
            .iter()
            .flatten()
            .filter(|e| e.uid != 0 && e.uid < 65534)
            .map(|e| fleet_core::audit::ImageUser {
                name: e.name.clone(),
                uid: e.uid,
                gid: e.gid,
            })
            .collect()
    }

    async fn resolve_user(
        &self,
        conn: &Connected,
        id: &str,
        user: &str,
    ) -> Result<Resolved, String> {
        if !identity::needs_user_db(user) {
            return identity::resolve(user, &UserDb::default());
        }
        let db = match self.cache.user_db(id) {
            Some(db) => db,
            None => {
                let epoch = self.cache.epoch(id);
                let db = Arc::new(read_user_db(conn, id).await.map_err(|e| {
                    format!("cannot read the container's user database to resolve '{user}': {e}")
                })?);
                self.cache.put_user_db(id, epoch, db.clone());
                db
            }
        };
        identity::resolve(user, &db)
    }

    async fn mount_report(&self, mount: &MountPoint, skip_ownership: bool) -> MountReport {
        let kind = mount.typ.clone().unwrap_or_else(|| "unknown".into());
        let source = mount.source.clone().unwrap_or_default();
        let walkable = matches!(kind.as_str(), "bind" | "volume") && !source.is_empty();
        let ownership = if skip_ownership || !walkable {
            OwnershipSummary {
                skipped: true,
                ..Default::default()
            }
        } else {
            let path = PathBuf::from(&source);
            match self.cache.summary(&path) {
                Some(summary) => summary,
                None => {
                    let bounds = self.bounds;
                    let walk_path = path.clone();
                    let summary =
                        tokio::task::spawn_blocking(move || summarize(&walk_path, bounds))
                            .await
                            .unwrap_or_else(|e| OwnershipSummary {
                                error: Some(format!("ownership walk failed: {e}")),
                                ..Default::default()
                            });
                    self.cache.put_summary(path, summary.clone());
                    summary
                }
            }
        };
        MountReport {
            kind,
            source,
            destination: mount.destination.clone().unwrap_or_default(),
            read_only: mount.rw == Some(false),
            volume_name: mount.name.clone().filter(|n| !n.is_empty()),
            ownership,
        }
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

/// Which containers share a namespace or volumes, both ways, by name.
/// A container's partners: every container it shares a namespace or volumes
/// with, and of those the ones it points at.
#[derive(Debug, Default)]
struct Links {
    linked: Vec<String>,
    depends_on: Vec<String>,
}

fn links(docs: &[Arc<ContainerInspectResponse>]) -> HashMap<String, Links> {
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

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn matches_name(doc: &ContainerInspectResponse, wanted: &str) -> bool {
    let wanted = wanted.trim_start_matches('/');
    let name = doc
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/');
    let id = doc.id.as_deref().unwrap_or_default();
    name == wanted || (wanted.len() >= 4 && id.starts_with(wanted))
}

/// Reads `/etc/passwd` and `/etc/group` through the engine's archive API, so
/// it works for stopped containers and images without a shell.
async fn read_user_db(conn: &Connected, id: &str) -> Result<UserDb, EngineError> {
    Ok(UserDb {
        passwd: read_file(conn, id, "/etc/passwd")
            .await?
            .map(|t| UserDb::parse_passwd(&t)),
        group: read_file(conn, id, "/etc/group")
            .await?
            .map(|t| UserDb::parse_group(&t)),
    })
}

/// One small text file of a container; `None` when it does not exist.
/// Follows a symlink once, inside the container's own filesystem.
async fn read_file(conn: &Connected, id: &str, path: &str) -> Result<Option<String>, EngineError> {
    let mut path = path.to_string();
    for _ in 0..2 {
        match read_archive_entry(conn, id, &path).await? {
            None => return Ok(None),
            Some(ArchiveEntry::File(text)) => return Ok(Some(text)),
            Some(ArchiveEntry::Link(target)) => {
                path = if target.starts_with('/') {
                    target
                } else {
                    let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
                    parent.join(target).display().to_string()
                };
            }
        }
    }
    Ok(None)
}

enum ArchiveEntry {
    File(String),
    Link(String),
}

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

/// `Config.ExposedPorts` (`6379/tcp`, ...), sorted.
fn exposed_ports(config: &bollard::models::ContainerConfig) -> Vec<String> {
    let mut ports = config.exposed_ports.clone().unwrap_or_default();
    ports.sort();
    ports
}
