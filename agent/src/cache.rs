//! An inspection cache kept true by the engine's event stream.
//!
//! The set of containers, their inspect documents and their user databases
//! are kept from the stream: a listing when the stream (re)connects, then
//! every event invalidates what it can change. Before an inspection trusts
//! the cache it asks the engine for the events up to *now* (a bounded
//! `/events?since&until` call, as cheap as a ping): whatever the stream has
//! not delivered yet arrives that way, so a container created a moment
//! before the inspection is never missed. When the stream is down, nothing
//! is cached and every inspection asks the engine (correct, only slower).
//! Ownership summaries are not evented by any engine: they live for a TTL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use fleet_core::CancellationToken;
use fleet_core::audit::OwnershipSummary;
use futures::StreamExt;

use crate::engine::{Connected, Engine};
use crate::identity::UserDb;

/// Docker keeps the last 256 events for replay; a catch-up that returns
/// this many may have lost some, and then the cache is not trusted.
const ENGINE_EVENT_BUFFER: usize = 256;

#[derive(Debug, Default)]
struct State {
    /// True while the event stream is up: only then may anything be cached.
    warm: bool,
    known: HashSet<String>,
    /// Bumped on every invalidation of an id, so a fetch that raced an event
    /// does not store what the event made stale.
    epochs: HashMap<String, u64>,
    docs: HashMap<String, Arc<ContainerInspectResponse>>,
    user_dbs: HashMap<String, Arc<UserDb>>,
    summaries: HashMap<PathBuf, (Instant, OwnershipSummary)>,
    /// Time of the newest event applied, in engine nanoseconds.
    last_event_nanos: i64,
}

#[derive(Debug)]
pub struct Cache {
    enabled: bool,
    summary_ttl: Duration,
    state: Mutex<State>,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn engine_time(nanos: i64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
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
        // Each write is one map operation: a panic elsewhere cannot leave
        // the state half-updated in a way that matters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the cache up to the engine's present and returns the complete
    /// set of container ids, or `None` when the cache cannot be trusted
    /// (stream down, catch-up failed) and the caller must list.
    pub async fn current_ids(&self, conn: &Connected) -> Option<Vec<String>> {
        if !self.enabled {
            return None;
        }
        let since = {
            let state = self.lock();
            if !state.warm {
                return None;
            }
            // One second of overlap: replayed events only invalidate.
            state.last_event_nanos - 1_000_000_000
        };
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let mut events = conn.docker.events(Some(EventsOptions {
            since: Some(engine_time(since)),
            until: Some(engine_time(now_nanos())),
            filters: Some(filters),
        }));
        let mut caught_up = 0;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    self.apply(&event);
                    caught_up += 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event catch-up failed; listing instead");
                    return None;
                }
            }
        }
        if caught_up >= ENGINE_EVENT_BUFFER {
            return None;
        }
        let state = self.lock();
        state.warm.then(|| state.known.iter().cloned().collect())
    }

    pub fn epoch(&self, id: &str) -> u64 {
        self.lock().epochs.get(id).copied().unwrap_or(0)
    }

    pub fn doc(&self, id: &str) -> Option<Arc<ContainerInspectResponse>> {
        let state = self.lock();
        if !self.enabled || !state.warm {
            return None;
        }
        state.docs.get(id).cloned()
    }

    pub fn put_doc(&self, id: &str, epoch: u64, doc: Arc<ContainerInspectResponse>) {
        let mut state = self.lock();
        if self.enabled && state.warm && state.epochs.get(id).copied().unwrap_or(0) == epoch {
            state.docs.insert(id.to_string(), doc);
        }
    }

    pub fn user_db(&self, id: &str) -> Option<Arc<UserDb>> {
        let state = self.lock();
        if !self.enabled || !state.warm {
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
        self.lock()
            .summaries
            .get(path)
            .filter(|(at, _)| at.elapsed() < self.summary_ttl)
            .map(|(_, s)| s.clone())
    }

    pub fn put_summary(&self, path: PathBuf, summary: OwnershipSummary) {
        if self.enabled {
            let mut state = self.lock();
            let ttl = self.summary_ttl;
            state.summaries.retain(|_, (at, _)| at.elapsed() < ttl);
            state.summaries.insert(path, (Instant::now(), summary));
        }
    }

    /// Forgets a container that the engine says is gone.
    pub fn forget(&self, id: &str) {
        let mut state = self.lock();
        Self::drop_entries(&mut state, id);
        state.known.remove(id);
    }

    fn drop_entries(state: &mut State, id: &str) {
        *state.epochs.entry(id.to_string()).or_default() += 1;
        state.docs.remove(id);
        state.user_dbs.remove(id);
    }

    fn reset(&self, warm: bool, known: HashSet<String>, since_nanos: i64) {
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
        state.known = known;
        state.warm = warm;
        state.last_event_nanos = since_nanos;
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
        let mut state = self.lock();
        if let Some(nanos) = event.time_nano {
            state.last_event_nanos = state.last_event_nanos.max(nanos);
        }
        // Events that change neither the inspect document nor the files we read.
        let harmless = action.starts_with("exec_")
            || matches!(
                action,
                "archive-path" | "top" | "attach" | "resize" | "export" | "commit"
            );
        if harmless {
            return;
        }
        Self::drop_entries(&mut state, &id);
        if action == "destroy" || action == "remove" {
            state.known.remove(&id);
        } else {
            state.known.insert(id);
        }
    }
}

/// Keeps `cache` warm until `shutdown`: list, then follow the event stream
/// from just before the listing; on any break, go cold and start over.
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
        cache.reset(false, HashSet::new(), 0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

impl Cache {
    /// Lists the engine's containers and marks the cache warm from there;
    /// returns the engine time (nanoseconds) from which events must be
    /// followed so that nothing after the listing is missed.
    pub async fn warm_from_listing(&self, conn: &Connected) -> Result<i64, String> {
        let since = now_nanos() - 1_000_000_000;
        let listed = conn
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?;
        let known = listed.into_iter().filter_map(|c| c.id).collect();
        self.reset(true, known, since);
        Ok(since)
    }
}

async fn follow_once(
    engine: &Engine,
    cache: &Cache,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let connected = engine.connected().await.map_err(|e| e.to_string())?;
    let since = cache.warm_from_listing(connected).await?;
    let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
    // Events since just before the listing replay on this stream, and the
    // catch-up before each inspection covers what is still in flight.
    let mut events = connected.docker.events(Some(EventsOptions {
        since: Some(engine_time(since)),
        until: None,
        filters: Some(filters),
    }));
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
