//! The inspection: every container of the engine, who it runs as, what it
//! is allowed to do, and what it has mounted.
//!
//! This file is the entry point: which containers (the cache's set, the
//! agent's scope, the names asked for), their inspect documents, and one
//! inspection of everything shared by the requests that arrive while it
//! runs. Each container's report is `report`'s; its user database is
//! found by `user_dbs` (through /proc, shared by an image, or read through
//! the engine's archive API in `archive`); `mounts` sums up who owns what
//! a mount holds; `partners` links containers that share namespaces,
//! volumes or a pod.

mod archive;
mod mounts;
mod partners;
mod report;
mod user_dbs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::ListContainersOptions;
use fleet_core::audit::{ContainerReport, HostReport};
use futures::StreamExt;

use crate::cache::Cache;
use crate::engine::EngineError;
use crate::engine::{Connected, Engine};
use crate::ownership::WalkBounds;
use crate::procfs::ProcessTable;
use partners::{links, pod_names};
use report::{Shared, report};
use user_dbs::{CONCURRENCY, user_dbs};

/// A container to inspect, and whether a cached document may stand in.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    use_cache: bool,
}

/// What to inspect, and how much.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Names or id prefixes; empty means all.
    pub containers: Vec<String>,
    pub skip_ownership: bool,
    /// Also list each container's own non-root users (planning needs them).
    pub with_users: bool,
}

/// The agent's one inspector: the engine, the event-driven cache, and the
/// single flight of whole-engine inspections.
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

    /// An inspector of another engine on this host (a rootless account's),
    /// with the same bounds and host name and no cache of its own.
    pub fn for_engine(&self, engine: Arc<Engine>) -> Inspector {
        Inspector::new(
            engine,
            Arc::new(Cache::new(false, std::time::Duration::ZERO)),
            self.bounds,
            self.hostname.clone(),
            None,
        )
    }

    /// An inspector of an account's engine for the audit: scoped as this
    /// one is (a moved container keeps its labels).
    pub fn for_account_engine(&self, engine: Arc<Engine>) -> Inspector {
        let mut inspector = self.for_engine(engine);
        inspector.scope = self.scope.clone();
        inspector
    }

    /// The engine this agent inspects.
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

    /// Inspects every container (or those `options` names). Requests that
    /// arrive while an inspection of everything is under way share the next
    /// one to start: a result computed after a request arrived is as fresh
    /// as that request can ask for, and a fleet-wide audit that reaches many
    /// agents on one engine costs the engine one inspection, not hundreds.
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
        let selected = self.select(docs, options, &mut warnings);
        let dbs = user_dbs(
            conn,
            &self.cache,
            &self.proc_root,
            &selected,
            options.with_users,
        )
        .await;
        let linked = links(&selected);
        let pods = pod_names(conn).await;
        let proc_root = self.proc_root.clone();
        let main_pids: Vec<i32> = selected
            .iter()
            .filter_map(|d| d.state.as_ref()?.pid)
            .filter(|pid| *pid > 0)
            .map(|pid| pid as i32)
            .collect();
        let table =
            tokio::task::spawn_blocking(move || ProcessTable::of_trees(&proc_root, &main_pids))
                .await
                .unwrap_or_default();
        let shared = Shared {
            conn,
            cache: &self.cache,
            bounds: self.bounds,
            table: &table,
            pods: &pods,
            skip_ownership: options.skip_ownership,
            with_users: options.with_users,
        };
        let mut containers: Vec<ContainerReport> = futures::stream::iter(selected)
            .map(|doc| {
                let shared = &shared;
                let linked = &linked;
                let db = dbs.get(doc.id.as_deref().unwrap_or_default());
                async move {
                    let mut report = report(shared, &doc, db).await;
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
            host_subuids: accounts.subuids,
            host_subgids: accounts.subgids,
            host_groups: accounts.groups,
            capabilities: crate::capabilities::current().await,
        })
    }

    /// The documents that are this agent's and were asked for; a container
    /// gone meanwhile, or one asked for that is not there, is a warning.
    fn select(
        &self,
        docs: Vec<Result<Arc<ContainerInspectResponse>, (String, EngineError)>>,
        options: &InspectOptions,
        warnings: &mut Vec<String>,
    ) -> Vec<Arc<ContainerInspectResponse>> {
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
        selected
    }

    /// One container's inspect document, from the cache when it may stand in.
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
}

/// A container id as the engine's own tools show it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Whether `wanted` names the container (its name, or an id prefix of at
/// least four characters).
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
