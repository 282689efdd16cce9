//! The inspection: every container of the engine, who it runs as, what it
//! is allowed to do, and what it has mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{ContainerInspectResponse, MountPoint};
use bollard::query_parameters::{
    ContainerArchiveInfoOptions, DownloadFromContainerOptions, ListContainersOptions,
};
use fleet_core::audit::{
    ContainerReport, HostReport, Identity, MountReport, OwnershipSummary, ProcessIdentity,
};
use futures::{StreamExt, TryStreamExt};

use crate::cache::Cache;
use crate::engine::EngineError;
use crate::engine::{Connected, Engine};
use crate::findings::{FindingInput, findings};
use crate::identity::{self, Resolved, RootMapping, UserDb};
use crate::ownership::{WalkBounds, summarize};
use crate::procfs::ProcessTable;
use crate::rawhttp;
use crate::user_files::{self, RootRead};

/// How many engine calls run at once.
const CONCURRENCY: usize = 16;
/// Largest /etc/passwd or /etc/group archive we read from a container
/// (the container may be hostile; its files are untrusted input).
const MAX_USER_FILE: usize = user_files::MAX_USER_FILE;

/// A container's user database, or why it could not be read (worded as the
/// archive read words it).
type DbResult = Result<Arc<UserDb>, String>;

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
        let dbs = self.user_dbs(conn, &selected, options).await;
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
                let db = dbs.get(doc.id.as_deref().unwrap_or_default());
                async move {
                    let mut report = self.report(conn, &doc, &table, pods, db, options).await;
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
        db: Option<&DbResult>,
        options: &InspectOptions,
    ) -> ContainerReport {
        let id = doc.id.clone().unwrap_or_default();
        let config = doc.config.clone().unwrap_or_default();
        let configured_user = config.user.clone().unwrap_or_default();
        let mut errors = Vec::new();

        let resolved = self.resolve_user(conn, &id, &configured_user, db).await;
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
            self.users_of(conn, &id, db).await
        } else {
            Vec::new()
        };
        // Planning only: a plain audit does not pay for the layer diff.
        let runtime_dirs = if options.with_users {
            crate::runtime_dirs::planned(conn, doc).await
        } else {
            Vec::new()
        };
        let foreseen = if options.with_users {
            crate::recreate::foresee(&crate::container::Api::new(conn), &id)
                .await
                .unwrap_or_else(|e| crate::recreate::Foreseen {
                    notes: vec![format!("what a recreate would do cannot be read: {e}")],
                    ..Default::default()
                })
        } else {
            Default::default()
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
            layer_loss: foreseen.layer_loss,
            engine_notes: foreseen.notes,
            id,
        }
    }

    /// The container's own non-root users, from its passwd.
    async fn users_of(
        &self,
        conn: &Connected,
        id: &str,
        known: Option<&DbResult>,
    ) -> Vec<fleet_core::audit::ImageUser> {
        let db = match (known, self.cache.user_db(id)) {
            (Some(Ok(db)), _) => db.clone(),
            (Some(Err(_)), _) => return Vec::new(),
            (None, Some(db)) => db,
            (None, None) => match read_user_db(conn, id).await {
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
        known: Option<&DbResult>,
    ) -> Result<Resolved, String> {
        if !identity::needs_user_db(user) {
            return identity::resolve(user, &UserDb::default());
        }
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot read the container's user database to resolve '{user}': {e}")
        };
        let db = match (known, self.cache.user_db(id)) {
            (Some(Ok(db)), _) => db.clone(),
            (Some(Err(e)), _) => return Err(cannot(e)),
            (None, Some(db)) => db,
            (None, None) => {
                let epoch = self.cache.epoch(id);
                let db = Arc::new(read_user_db(conn, id).await.map_err(|e| cannot(&e))?);
                self.cache.put_user_db(id, epoch, db.clone());
                db
            }
        };
        identity::resolve(user, &db)
    }

    /// The user databases this inspection needs, found without an archive
    /// round trip per container where the answer is already known:
    ///
    /// 1. a running container: its own root through /proc (`user_files`),
    ///    a few system calls instead of two archive calls;
    /// 2. a container whose writable layer provably left /etc/passwd and
    ///    /etc/group alone and that has no mount over them: the image's
    ///    answer, taken from one such container of that image (read through
    ///    /proc when one runs, else through the archive once per image);
    ///    only when that read met no symlink, since a symlink could lead
    ///    into a mount that other containers of the image do not share;
    /// 3. everything else: the archive, concurrently.
    ///
    /// Why not the changes endpoint for step 2: it is one round trip per
    /// container (about a third of the two archive calls, measured), and
    /// the upper directory the engine reports answers the same question
    /// with two or three `stat`s; where that directory is not visible (an
    /// agent in another mount namespace) the container is read on its own.
    async fn user_dbs(
        &self,
        conn: &Connected,
        docs: &[Arc<ContainerInspectResponse>],
        options: &InspectOptions,
    ) -> HashMap<String, DbResult> {
        let mut out = HashMap::new();
        let mut wanted = Vec::new();
        for doc in docs {
            let id = doc.id.clone().unwrap_or_default();
            let user = doc
                .config
                .as_ref()
                .and_then(|c| c.user.as_deref())
                .unwrap_or_default();
            if id.is_empty() || !(options.with_users || identity::needs_user_db(user)) {
                continue;
            }
            if let Some(db) = self.cache.user_db(&id) {
                out.insert(id, Ok(db));
                continue;
            }
            let epoch = self.cache.epoch(&id);
            wanted.push(Wanted::of(doc, id, epoch));
        }
        if wanted.is_empty() {
            return out;
        }
        let proc_root = self.proc_root.clone();
        let probe = wanted.clone();
        let locals = tokio::task::spawn_blocking(move || {
            probe.iter().map(|w| w.local(&proc_root)).collect()
        })
        .await
        .unwrap_or_else(|_| vec![Local::default(); wanted.len()]);

        let mut found: Vec<(Wanted, DbResult)> = Vec::new();
        let mut image_db: HashMap<String, Arc<UserDb>> = HashMap::new();
        let mut rest = Vec::new();
        for (w, local) in wanted.into_iter().zip(locals) {
            match local.proc_read {
                Some(RootRead { db, plain }) => {
                    let db = Arc::new(db);
                    if plain && local.shares_image {
                        image_db
                            .entry(w.image.clone())
                            .or_insert_with(|| db.clone());
                    }
                    found.push((w, Ok(db)));
                }
                None => rest.push((w, local.shares_image)),
            }
        }
        let mut own = Vec::new();
        let mut by_image: HashMap<String, Vec<Wanted>> = HashMap::new();
        for (w, shares_image) in rest {
            match (shares_image, image_db.get(&w.image)) {
                (true, Some(db)) => {
                    let db = db.clone();
                    found.push((w, Ok(db)));
                }
                (true, None) => by_image.entry(w.image.clone()).or_default().push(w),
                (false, _) => own.push(w),
            }
        }
        let mut shared = Vec::new();
        for (_, members) in by_image {
            if members.len() > 1 {
                shared.push(members);
            } else {
                own.extend(members);
            }
        }
        // One archive read per image that no running container answered,
        // and the containers that need their own, all at once.
        let first: Vec<Vec<(Wanted, Option<DbResult>)>> = futures::stream::iter(
            own.into_iter()
                .map(|w| (vec![w], false))
                .chain(shared.into_iter().map(|m| (m, true))),
        )
        .map(|(members, share)| async move {
            if share {
                self.read_for_image(conn, members).await
            } else {
                let mut done = Vec::new();
                for w in members {
                    let db = read_own(conn, &w.id).await;
                    done.push((w, Some(db)));
                }
                done
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
        let mut again = Vec::new();
        for (w, db) in first.into_iter().flatten() {
            match db {
                Some(db) => found.push((w, db)),
                None => again.push(w),
            }
        }
        // Members of an image whose one read could not stand for them.
        let second: Vec<(Wanted, DbResult)> = futures::stream::iter(again)
            .map(|w| async move {
                let db = read_own(conn, &w.id).await;
                (w, db)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        found.extend(second);
        for (w, db) in found {
            if let Ok(db) = &db {
                self.cache.put_user_db(&w.id, w.epoch, db.clone());
            }
            out.insert(w.id, db);
        }
        out
    }

    /// Reads the first member through the archive; when that read met no
    /// symlink (nor does the engine report /etc as one), the answer is the
    /// image's and stands for every member. Otherwise only the first has
    /// its answer and the others (`None`) are read on their own.
    async fn read_for_image(
        &self,
        conn: &Connected,
        members: Vec<Wanted>,
    ) -> Vec<(Wanted, Option<DbResult>)> {
        let mut members = members.into_iter();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let (read, etc_plain) = futures::join!(
            read_user_db_traced(conn, &first.id),
            etc_is_plain(conn, &first.id)
        );
        let mut out = Vec::new();
        match read {
            Ok((db, files_plain)) => {
                let db = Arc::new(db);
                let stands = files_plain && etc_plain;
                for w in members {
                    out.push((w, stands.then(|| Ok(db.clone()))));
                }
                out.push((first, Some(Ok(db))));
            }
            Err(e) => {
                out.extend(members.map(|w| (w, None)));
                out.push((first, Some(Err(e.to_string()))));
            }
        }
        out
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

/// A container that needs its user database, and what the engine says
/// about where its files live.
#[derive(Debug, Clone)]
struct Wanted {
    id: String,
    epoch: u64,
    image: String,
    /// The main process, when running.
    pid: i32,
    merged: Option<PathBuf>,
    driver: String,
    upper: Option<PathBuf>,
    /// A mount over /, /etc, /etc/passwd or /etc/group.
    covered: bool,
}

/// What the agent learnt without the engine.
#[derive(Debug, Clone, Default)]
struct Local {
    proc_read: Option<RootRead>,
    /// The layer left the user files alone and nothing is mounted over
    /// them: the container sees its image's /etc/passwd and /etc/group.
    shares_image: bool,
}

impl Wanted {
    fn of(doc: &ContainerInspectResponse, id: String, epoch: u64) -> Self {
        let state = doc.state.as_ref();
        let running = state.and_then(|s| s.running) == Some(true);
        let pid = state.and_then(|s| s.pid).unwrap_or(0);
        let graph = doc.graph_driver.as_ref();
        let data = |key: &str| graph.and_then(|g| g.data.get(key)).map(PathBuf::from);
        let host = doc.host_config.as_ref();
        let mut destinations: Vec<String> = doc
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| m.destination.clone())
            .collect();
        if let Some(host) = host {
            destinations.extend(
                host.binds
                    .iter()
                    .flatten()
                    .filter_map(|b| b.split(':').nth(1).map(String::from)),
            );
            destinations.extend(
                host.mounts
                    .iter()
                    .flatten()
                    .filter_map(|m| m.target.clone()),
            );
            destinations.extend(host.tmpfs.iter().flat_map(|t| t.keys().cloned()));
        }
        Wanted {
            id,
            epoch,
            image: doc.image.clone().unwrap_or_default(),
            pid: if running && pid > 0 { pid as i32 } else { 0 },
            merged: data("MergedDir"),
            driver: graph.map(|g| g.name.clone()).unwrap_or_default(),
            upper: data("UpperDir"),
            covered: destinations
                .iter()
                .any(|d| user_files::covers_user_files(d)),
        }
    }

    fn local(&self, proc_root: &Path) -> Local {
        let proc_read = (self.pid > 0)
            .then(|| {
                user_files::read_via_proc(proc_root, self.pid, &self.id, self.merged.as_deref())
            })
            .flatten();
        let shares_image = !self.image.is_empty()
            && !self.covered
            && self
                .upper
                .as_deref()
                .is_some_and(|upper| user_files::layer_keeps_user_files(&self.driver, upper));
        Local {
            proc_read,
            shares_image,
        }
    }
}

async fn read_own(conn: &Connected, id: &str) -> DbResult {
    read_user_db(conn, id)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Whether the engine reports the container's /etc as anything but a
/// symlink (or as missing: then /etc/passwd is missing the same way).
async fn etc_is_plain(conn: &Connected, id: &str) -> bool {
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
async fn read_user_db(conn: &Connected, id: &str) -> Result<UserDb, EngineError> {
    Ok(read_user_db_traced(conn, id).await?.0)
}

/// The same, and whether neither file was a symlink.
async fn read_user_db_traced(conn: &Connected, id: &str) -> Result<(UserDb, bool), EngineError> {
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
