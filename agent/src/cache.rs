//! An inspection cache kept true by the engine's event stream.
//!
//! Inspect documents and user databases are cached per container id and
//! dropped on every event that can change them. The set of containers is
//! never taken from the cache: every inspection lists (one cheap call), and
//! a cached document is used only when the listing still shows it in the
//! same state under the same name, so an event still in flight cannot hide
//! a new container or a restart. When the stream is down nothing is cached
//! and every inspection asks the engine (correct, only slower). Ownership
//! summaries are not evented by any engine: they are kept for a short TTL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use fleet_core::CancellationToken;
use fleet_core::audit::OwnershipSummary;
use futures::StreamExt;

use crate::engine::Engine;
use crate::identity::UserDb;

#[derive(Debug, Default)]
struct State {
    /// True while the event stream is up: only then may anything be cached.
    warm: bool,
    /// Bumped on every invalidation of an id, so a fetch that raced an event
    /// does not store what the event made stale.
    epochs: HashMap<String, u64>,
    /// Inspect documents with the listing fingerprint they were fetched under.
    docs: HashMap<String, (String, Arc<ContainerInspectResponse>)>,
    user_dbs: HashMap<String, Arc<UserDb>>,
    summaries: HashMap<PathBuf, (Instant, OwnershipSummary)>,
}

#[derive(Debug)]
pub struct Cache {
    enabled: bool,
    summary_ttl: Duration,
    state: Mutex<State>,
}

impl Cache {
    pub fn new(enabled: bool, summary_ttl: Duration) -> Self {
        Cache {
            enabled,
            summary_ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters (each write is one insert); keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_warm(&self) -> bool {
        self.enabled && self.lock().warm
    }

    pub fn epoch(&self, id: &str) -> u64 {
        self.lock().epochs.get(id).copied().unwrap_or(0)
    }

    /// The cached document of `id`, if it was fetched under the same
    /// listing `fingerprint` (state, names, image) as the engine shows now.
    pub fn doc(&self, id: &str, fingerprint: &str) -> Option<Arc<ContainerInspectResponse>> {
        if !self.enabled {
            return None;
        }
        let state = self.lock();
        if !state.warm {
            return None;
        }
        state
            .docs
            .get(id)
            .filter(|(fp, _)| fp == fingerprint)
            .map(|(_, doc)| doc.clone())
    }

    pub fn put_doc(
        &self,
        id: &str,
        epoch: u64,
        fingerprint: &str,
        doc: Arc<ContainerInspectResponse>,
    ) {
        let mut state = self.lock();
        if self.enabled && state.warm && state.epochs.get(id).copied().unwrap_or(0) == epoch {
            state
                .docs
                .insert(id.to_string(), (fingerprint.to_string(), doc));
        }
    }

    pub fn user_db(&self, id: &str) -> Option<Arc<UserDb>> {
        if !self.enabled {
            return None;
        }
        let state = self.lock();
        if !state.warm {
            return None;
        }
        state.user_dbs.get(id).cloned()
    }

    pub fn put_user_db(&self, id: &str, epoch: u64, db: Arc<UserDb>) {
        let mut state = self.lock();
        if self.enabled && state.warm && state.epochs.get(id).copied().unwrap_or(0) == epoch {
            state.user_dbs.insert(id.to_string(), db);
        }
    }

    pub fn summary(&self, path: &PathBuf) -> Option<OwnershipSummary> {
        if !self.enabled {
            return None;
        }
        let state = self.lock();
        state
            .summaries
            .get(path)
            .filter(|(at, _)| at.elapsed() < self.summary_ttl)
            .map(|(_, s)| s.clone())
    }

    pub fn put_summary(&self, path: PathBuf, summary: OwnershipSummary) {
        if self.enabled {
            let mut state = self.lock();
            state
                .summaries
                .retain(|_, (at, _)| at.elapsed() < self.summary_ttl);
            state.summaries.insert(path, (Instant::now(), summary));
        }
    }

    /// Forgets a container that the engine says is gone.
    pub fn forget(&self, id: &str) {
        let mut state = self.lock();
        Self::drop_entries(&mut state, id);
        state.epochs.remove(id);
    }

    fn drop_entries(state: &mut State, id: &str) {
        *state.epochs.entry(id.to_string()).or_default() += 1;
        state.docs.remove(id);
        state.user_dbs.remove(id);
    }

    fn reset(&self, warm: bool) {
        let mut state = self.lock();
        let ids: Vec<String> = state
            .docs
            .keys()
            .chain(state.user_dbs.keys())
            .cloned()
            .collect();
        for id in ids {
            *state.epochs.entry(id).or_default() += 1;
        }
        state.docs.clear();
        state.user_dbs.clear();
        state.warm = warm;
    }

    /// Applies one engine event.
    pub fn apply(&self, event: &EventMessage) {
        if event.typ != Some(EventMessageTypeEnum::CONTAINER) {
            return;
        }
        let Some(id) = event.actor.as_ref().and_then(|a| a.id.clone()) else {
            return;
        };
        let action = event.action.as_deref().unwrap_or_default();
        // Events that change neither the inspect document nor the files we read.
        let harmless = action.starts_with("exec_")
            || matches!(
                action,
                "archive-path" | "top" | "attach" | "resize" | "export" | "commit"
            );
        if harmless {
            return;
        }
        let mut state = self.lock();
        Self::drop_entries(&mut state, &id);
        if action == "destroy" || action == "remove" {
            state.epochs.remove(&id);
        }
    }
}

/// Keeps `cache` warm until `shutdown`: follow the event stream; on any
/// break, go cold (cache nothing) and start over.
pub async fn keep_warm(engine: Arc<Engine>, cache: Arc<Cache>, shutdown: CancellationToken) {
    if !cache.enabled {
        return;
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = follow_once(&engine, &cache, &shutdown).await {
            tracing::warn!(error = %e, "engine event stream interrupted; inspection cache is cold");
        }
        cache.reset(false);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn follow_once(
    engine: &Engine,
    cache: &Cache,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let connected = engine.connected().await.map_err(|e| e.to_string())?;
    // One second of overlap: replayed events only invalidate, never harm.
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0);
    let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
    let mut events = connected.docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    }));
    // Nothing was cached while cold; start clean and warm.
    cache.reset(true);
    tracing::debug!("inspection cache warm");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.next() => match event {
                Some(Ok(event)) => cache.apply(&event),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the engine closed the event stream".into()),
            }
        }
    }
}
