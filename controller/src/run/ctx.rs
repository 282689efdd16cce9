//! One live run in memory: its header and container records behind locks,
//! every change written (and flushed) to the store before it is acted on,
//! and its events fanned out to watchers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

pub use fleet_core::now_ms;

use crate::agents::AgentPool;
use crate::error::ControllerError;
use crate::inventory::{Host, HostSource};
use crate::run::model::{ContainerRun, EventKind, Overhead, Run, RunEvent, StepKind};
use crate::store::Store;

/// An event before it gets its sequence number.
#[derive(Debug, Clone)]
pub struct Draft {
    pub host: Option<String>,
    pub container: Option<String>,
    pub step: Option<StepKind>,
    pub what: EventKind,
    pub message: String,
}

impl Draft {
    pub fn run(what: EventKind, message: impl Into<String>) -> Self {
        Draft {
            host: None,
            container: None,
            step: None,
            what,
            message: message.into(),
        }
    }

    pub fn host(host: &str, what: EventKind, message: impl Into<String>) -> Self {
        Draft {
            host: Some(host.to_string()),
            ..Draft::run(what, message)
        }
    }

    pub fn container(
        c: &ContainerRun,
        step: Option<StepKind>,
        what: EventKind,
        message: impl Into<String>,
    ) -> Self {
        Draft {
            host: Some(c.host.clone()),
            container: Some(c.plan.name.clone()),
            step,
            what,
            message: message.into(),
        }
    }
}

pub struct RunCtx {
    pub id: String,
    /// The run id the agents journal under (a rollback run undoes the
    /// steps of the run it rolls back).
    pub agent_run: String,
    pub store: Store,
    pub pool: Arc<AgentPool>,
    pub agent_deadline: Duration,
    /// How long the run waits for an agent found out of reach (counted
    /// from then, shared by every call to it) before it ends.
    pub reconcile_grace: Duration,
    /// Hosts found out of reach (a call gave up), and since when.
    away: Mutex<HashMap<String, Instant>>,
    header: Mutex<Run>,
    containers: Mutex<BTreeMap<String, ContainerRun>>,
    seq: AtomicU64,
    events: broadcast::Sender<RunEvent>,
    overhead: Mutex<Overhead>,
}

impl std::fmt::Debug for RunCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCtx").field("id", &self.id).finish()
    }
}

/// A poisoned lock still holds consistent data here (every change is
/// written to the store under it first), so take it anyway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunCtx {
    pub fn new(
        run: Run,
        containers: Vec<ContainerRun>,
        store: Store,
        pool: Arc<AgentPool>,
        agent_deadline: Duration,
        reconcile_grace: Duration,
    ) -> Result<Self, ControllerError> {
        let seq = store.last_event_seq(&run.id)?;
        let agent_run = match &run.kind {
            crate::run::model::RunKind::Migrate => run.id.clone(),
            crate::run::model::RunKind::Rollback { of } => of.clone(),
        };
        let (events, _) = broadcast::channel(4096);
        let agent_deadline = match run.options.agent_deadline_secs {
            0 => agent_deadline,
            secs => Duration::from_secs(u64::from(secs)),
        };
        Ok(RunCtx {
            id: run.id.clone(),
            agent_run,
            store,
            pool,
            agent_deadline,
            reconcile_grace,
            away: Mutex::new(HashMap::new()),
            header: Mutex::new(run),
            containers: Mutex::new(containers.into_iter().map(|c| (c.key.clone(), c)).collect()),
            seq: AtomicU64::new(seq),
            events,
            overhead: Mutex::new(Overhead::default()),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.events.subscribe()
    }

    fn stamp(&self, draft: Draft) -> RunEvent {
        self.stamp_as(draft, self.seq.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn stamp_as(&self, draft: Draft, seq: u64) -> RunEvent {
        RunEvent {
            seq,
            unix_ms: now_ms(),
            host: draft.host,
            container: draft.container,
            step: draft.step,
            what: draft.what,
            message: draft.message,
            entries: 0,
            changed: 0,
            bytes: 0,
        }
    }

    /// A durable event (flushed), then fanned out.
    pub fn emit(&self, draft: Draft) -> Result<(), ControllerError> {
        self.emit_numbered(draft).map(|_| ())
    }

    /// The same, returning the event's sequence number.
    pub fn emit_numbered(&self, draft: Draft) -> Result<u64, ControllerError> {
        let event = self.stamp(draft);
        let seq = event.seq;
        self.store.append_event(&self.id, &event)?;
        let _ = self.events.send(event);
        Ok(seq)
    }

    /// A progress event: live only (watchers see it; the journal keeps the
    /// step's outcome, not every counter on the way).
    pub fn progress(&self, draft: Draft, entries: u64, changed: u64, bytes: u64) {
        // Progress takes no durable sequence number (seq 0).
        let mut event = self.stamp_as(draft, 0);
        event.entries = entries;
        event.changed = changed;
        event.bytes = bytes;
        let _ = self.events.send(event);
    }

    pub fn header(&self) -> Run {
        lock(&self.header).clone()
    }

    /// Reads the header without copying it.
    pub fn with_header<T>(&self, read: impl FnOnce(&Run) -> T) -> T {
        read(&lock(&self.header))
    }

    /// Changes the header and writes it before anything acts on it.
    pub fn update_header(&self, change: impl FnOnce(&mut Run)) -> Result<Run, ControllerError> {
        let mut header = lock(&self.header);
        change(&mut header);
        // A prune and a rollback run record themselves on this run's record
        // directly: keep what they wrote.
        if let Some(stored) = self.store.run(&self.id)? {
            header.pruned = header.pruned.take().or(stored.pruned);
            for by in stored.rolled_back_by {
                if !header.rolled_back_by.contains(&by) {
                    header.rolled_back_by.push(by);
                }
            }
        }
        self.store.put_run(&header)?;
        Ok(header.clone())
    }

    /// Appends to the audit log in the name of whoever started the run.
    pub fn log(&self, action: &str, target: &str, result: &str) -> Result<(), ControllerError> {
        let who = self.with_header(|r| r.created_by.clone());
        self.store.append_log(&crate::store::LogEntry::new(
            &who, "operator", action, target, result,
        ))
    }

    pub fn container(&self, key: &str) -> Option<ContainerRun> {
        lock(&self.containers).get(key).cloned()
    }

    pub fn containers(&self) -> Vec<ContainerRun> {
        lock(&self.containers).values().cloned().collect()
    }

    /// Changes a container's record and writes it, with its event, in one
    /// flush — before the caller asks any agent to act on it.
    pub fn update_container(
        &self,
        key: &str,
        change: impl FnOnce(&mut ContainerRun) -> Option<Draft>,
    ) -> Result<ContainerRun, ControllerError> {
        let mut containers = lock(&self.containers);
        let container = containers.get_mut(key).ok_or_else(|| {
            ControllerError::Store(format!("run {} has no container {key}", self.id))
        })?;
        let event = change(container).map(|d| self.stamp(d));
        self.store
            .put_container(&self.id, container, event.as_ref())?;
        let snapshot = container.clone();
        drop(containers);
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
        Ok(snapshot)
    }

    pub fn host(&self, name: &str) -> Host {
        self.with_header(|r| {
            r.hosts
                .iter()
                .find(|h| h.name == name)
                .map(crate::run::model::host_of)
                .unwrap_or_else(|| Host {
                    name: name.to_string(),
                    address: String::new(),
                    labels: Default::default(),
                    source: HostSource::Store,
                })
        })
    }

    /// How long a call to `host` may wait for it: the agent deadline; once
    /// the host was found out of reach, what is left of the grace counted
    /// from then (zero: one attempt), so that a vanished agent holds the
    /// run up for one deadline and one grace, not a deadline per call.
    pub fn call_deadline(&self, host: &str) -> Duration {
        match lock(&self.away).get(host) {
            Some(since) => self.reconcile_grace.saturating_sub(since.elapsed()),
            None => self.agent_deadline,
        }
    }

    /// When the grace for `host` ends, if it was found out of reach.
    pub fn grace_ends(&self, host: &str) -> Option<Instant> {
        lock(&self.away)
            .get(host)
            .map(|since| *since + self.reconcile_grace)
    }

    /// Calls `host` (retrying while it is out of reach, for `deadline`),
    /// and records whether it answered.
    pub async fn call<T, F, Fut>(
        &self,
        host: &str,
        deadline: Duration,
        attempt: F,
    ) -> Result<T, crate::agents::calls::CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::agents::calls::CallError>>,
    {
        let result = crate::agents::calls::with_deadline(deadline, attempt).await;
        let mut away = lock(&self.away);
        match &result {
            Err(crate::agents::calls::CallError::Unreachable(_)) => {
                away.entry(host.to_string()).or_insert_with(Instant::now);
            }
            _ => {
                away.remove(host);
            }
        }
        result
    }

    pub fn record_overhead(&self, us: u64) {
        let mut o = lock(&self.overhead);
        o.steps += 1;
        o.total_us += us;
        o.max_us = o.max_us.max(us);
    }

    pub fn overhead(&self) -> Overhead {
        *lock(&self.overhead)
    }
}
