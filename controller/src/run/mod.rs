//! Runs: durable, resumable migrations (and rollbacks) across the fleet.
//!
//! `Runs` is the one owner of live runs: it starts them (after planning,
//! the saved-plan check and the per-container lock), drives each in its own
//! task, takes operators' pause/resume/abort, starts rollbacks of finished
//! runs, prunes their checkpoints, and on startup resumes every run a
//! crash left unfinished.

mod compare;
pub mod ctx;
pub mod driver;
pub mod holds;
pub mod model;
pub mod outcomes;
pub mod planning;
mod prune;
mod rollback_start;
pub mod saved;
pub mod start;
pub mod unit;
pub mod waves;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::CancellationToken;
use fleet_core::auth::Caller;
use tokio::sync::mpsc;

use crate::agents::AgentPool;
use crate::error::ControllerError;
use crate::run::ctx::{Draft, RunCtx, lock};
use crate::run::model::{
    ContainerRun, ContainerState, Control, EventKind, HostState, Run, RunEvent, RunKind, RunPhase,
    RunSummary, RunView,
};
use crate::store::Store;

pub struct Runs {
    store: Store,
    pool: Arc<AgentPool>,
    /// Per-host audit deadline, for planning.
    pub audit_timeout: Duration,
    agent_deadline: Duration,
    reconcile_grace: Duration,
    live: Mutex<HashMap<String, Arc<RunCtx>>>,
    /// Held across every check-then-act on runs (the container holds,
    /// phase changes, rollback vs prune) so two callers never both pass.
    gate: Mutex<()>,
    /// Runs whose checkpoints are being released.
    pruning: Mutex<std::collections::HashSet<String>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").finish_non_exhaustive()
    }
}

impl Runs {
    pub fn new(
        store: Store,
        pool: Arc<AgentPool>,
        audit_timeout: Duration,
        agent_deadline: Duration,
        reconcile_grace: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Runs {
            store,
            pool,
            audit_timeout,
            agent_deadline,
            reconcile_grace,
            live: Mutex::new(HashMap::new()),
            gate: Mutex::new(()),
            pruning: Mutex::new(Default::default()),
            shutdown,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn pool(&self) -> &AgentPool {
        &self.pool
    }

    /// After a restart: every run that was running resumes where its
    /// journal says it stands; paused runs wait for `resume`.
    pub fn resume_all(self: &Arc<Self>) -> Result<usize, ControllerError> {
        let mut resumed = 0;
        for run in self.store.runs()? {
            let containers = self.store.containers(&run.id)?;
            if run.phase.is_terminal() {
                let stuck = containers
                    .iter()
                    .any(|c| c.state == ContainerState::NeedsReconcile)
                    || run
                        .hosts
                        .iter()
                        .any(|h| h.state == HostState::NeedsReconcile);
                if stuck {
                    tracing::info!(run = %run.id, "a finished run still has containers to put back: reconciling");
                    let ctx = self.adopt(run, containers)?;
                    self.spawn(ctx);
                }
                continue;
            }
            let running = run.phase == RunPhase::Running;
            let id = run.id.clone();
            let ctx = self.adopt(run, containers)?;
            if running {
                tracing::info!(run = %id, "resuming a run the controller was driving when it stopped");
                self.spawn(ctx);
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    fn adopt(
        &self,
        run: Run,
        containers: Vec<ContainerRun>,
    ) -> Result<Arc<RunCtx>, ControllerError> {
        let ctx = Arc::new(RunCtx::new(
            run,
            containers,
            self.store.clone(),
            self.pool.clone(),
            self.agent_deadline,
            self.reconcile_grace,
        )?);
        lock(&self.live).insert(ctx.id.clone(), ctx.clone());
        Ok(ctx)
    }

    fn spawn(self: &Arc<Self>, ctx: Arc<RunCtx>) {
        let runs = self.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            driver::drive(ctx.clone(), shutdown.clone()).await;
            if !ctx.header().phase.is_terminal() {
                return;
            }
            let settled = driver::reconcile(ctx.clone(), shutdown.clone()).await;
            // What is still stuck (a store error) stays held until a restart.
            if settled {
                lock(&runs.live).remove(&ctx.id);
            }
        });
    }

    fn live(&self, id: &str) -> Option<Arc<RunCtx>> {
        lock(&self.live).get(id).cloned()
    }

    fn logged<T>(
        &self,
        who: &Caller,
        action: &str,
        target: &str,
        result: Result<T, ControllerError>,
    ) -> Result<T, ControllerError> {
        self.store.logged(who, action, target, result)
    }

    /// Refuses containers another run holds, naming that run.
    fn refuse_held(&self, containers: &[ContainerRun]) -> Result<(), ControllerError> {
        let holds: Vec<holds::Hold> = lock(&self.live)
            .values()
            .flat_map(|ctx| {
                let finished = ctx.with_header(|r| r.phase.is_terminal());
                holds::holds_of(&ctx.id, finished, &ctx.containers())
            })
            .collect();
        holds::refuse_held(&holds, containers)
    }

    /// Starts (or with `dry_run`, shows) a migration run.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        request: start::StartRequest,
    ) -> Result<RunView, ControllerError> {
        let dry_run = request.dry_run;
        let result = async {
            let mut view = start::build(self, caller, request).await?;
            let _gate = lock(&self.gate);
            self.refuse_held(&view.containers)?;
            if dry_run {
                return Ok(view);
            }
            view.run.id = self.fresh_id()?;
            self.launch(view.run.clone(), view.containers.clone(), "run started")?;
            Ok(view)
        }
        .await;
        if dry_run {
            return result;
        }
        let target = result
            .as_ref()
            .map_or("(not started)".to_string(), |v| v.run.id.clone());
        self.logged(caller, "run.start", &target, result)
    }

    /// A run id no stored run has (ids are per second plus 16 random bits).
    fn fresh_id(&self) -> Result<String, ControllerError> {
        loop {
            let id = start::new_run_id();
            if self.store.run(&id)?.is_none() {
                return Ok(id);
            }
        }
    }

    fn launch(
        self: &Arc<Self>,
        run: Run,
        containers: Vec<ContainerRun>,
        message: &str,
    ) -> Result<(), ControllerError> {
        for c in &containers {
            self.store.put_container(&run.id, c, None)?;
        }
        self.store.put_run(&run)?;
        let ctx = self.adopt(run, containers)?;
        ctx.emit(Draft::run(EventKind::RunStarted, message))?;
        self.spawn(ctx);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<RunView, ControllerError> {
        if let Some(ctx) = self.live(id) {
            return Ok(RunView {
                run: ctx.header(),
                containers: ctx.containers(),
            });
        }
        let run = self.find(id)?;
        Ok(RunView {
            containers: self.store.containers(&run.id)?,
            run,
        })
    }

    fn find(&self, id: &str) -> Result<Run, ControllerError> {
        self.store.run(id)?.ok_or_else(|| {
            ControllerError::NotFound(format!(
                "no run '{id}' (list them with `fleetctl runs list`)"
            ))
        })
    }

    pub fn list(&self, limit: usize) -> Result<Vec<RunSummary>, ControllerError> {
        let mut runs: Vec<RunSummary> = self
            .store
            .runs()?
            .into_iter()
            .map(|r| {
                self.live(&r.id)
                    .map_or(r.summary(), |ctx| ctx.header().summary())
            })
            .collect();
        runs.sort_by(|a, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(b.id.cmp(&a.id))
        });
        runs.truncate(limit.max(1));
        Ok(runs)
    }

    /// The run's events after `after`, then live ones until it ends or pauses.
    pub fn watch(&self, id: &str, after: u64) -> Result<mpsc::Receiver<RunEvent>, ControllerError> {
        // Subscribe and read the phase before the stored events: whatever
        // happens after is then either in the store or on the channel.
        let live = self.live(id);
        let mut rx = live.as_ref().map(|ctx| ctx.subscribe());
        let running = live
            .as_ref()
            .is_some_and(|ctx| ctx.header().phase == RunPhase::Running);
        // Asked for what comes after the run's end while it still puts
        // containers back: follow that until it says they are back.
        let reconciling = live.as_ref().is_some_and(|ctx| {
            let header = ctx.header();
            header.phase.is_terminal()
                && header.finished_seq.is_some_and(|seq| after >= seq)
                && ctx
                    .containers()
                    .iter()
                    .any(|c| c.state == ContainerState::NeedsReconcile)
        });
        let still_going = running || reconciling;
        let last = move |event: &RunEvent| {
            if reconciling {
                event.what == EventKind::Reconciled && event.container.is_none()
            } else {
                matches!(event.what, EventKind::RunFinished | EventKind::Paused)
            }
        };
        let run = self.find(id)?;
        let stored = self.store.events(&run.id, after)?;
        let store = self.store.clone();
        let (tx, out) = mpsc::channel(1024);
        tokio::spawn(async move {
            // Events are numbered before they are sent, so parallel hosts
            // may deliver them out of order: remember what was forwarded.
            let mut sent = std::collections::BTreeSet::new();
            for event in stored {
                sent.insert(event.seq);
                let end = if reconciling {
                    last(&event)
                } else {
                    matches!(event.what, EventKind::RunFinished)
                };
                if tx.send(event).await.is_err() || end {
                    return;
                }
            }
            let Some(rx) = rx.as_mut().filter(|_| still_going) else {
                return;
            };
            loop {
                let batch = match rx.recv().await {
                    Ok(event) => vec![event],
                    // A slow watcher missed live events: all but progress
                    // are in the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match store.events(&run.id, after) {
                            Ok(events) => events,
                            // Not an empty list: the watcher would miss
                            // what it lagged over. Ending the stream makes
                            // it ask again from the last event it has.
                            Err(e) => {
                                tracing::warn!(run = %run.id, error = %e, "cannot replay events a lagging watcher missed; ending its stream");
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for event in batch {
                    if event.seq != 0 && (event.seq <= after || !sent.insert(event.seq)) {
                        continue;
                    }
                    let end = last(&event);
                    if tx.send(event).await.is_err() || end {
                        return;
                    }
                }
            }
        });
        Ok(out)
    }

    pub fn control(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        control: Option<Control>,
    ) -> Result<Run, ControllerError> {
        let action = match control {
            Some(Control::Pause) => "run.pause",
            Some(Control::Abort) => "run.abort",
            None => "run.resume",
        };
        let result = self.apply_control(id, control);
        self.logged(caller, action, id, result)
    }

    fn apply_control(
        self: &Arc<Self>,
        id: &str,
        control: Option<Control>,
    ) -> Result<Run, ControllerError> {
        let run = self.find(id)?;
        let not = |what: &str| {
            ControllerError::FailedPrecondition(format!(
                "run {id} is {}: {what}",
                self.live(id).map_or(run.phase, |c| c.header().phase).name()
            ))
        };
        let _gate = lock(&self.gate);
        let ctx = self.live(id).ok_or_else(|| not("it has ended"))?;
        if matches!(ctx.header().kind, RunKind::Rollback { .. }) {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} is a rollback: it runs to its end (no pause, resume or abort)"
            )));
        }
        let phase = ctx.header().phase;
        match (control, phase) {
            (Some(Control::Pause), RunPhase::Running) => {
                ctx.update_header(|r| r.control = Some(Control::Pause))
            }
            (Some(Control::Pause), _) => Err(not("only a running run can be paused")),
            (None, RunPhase::Paused) => {
                let run = ctx.update_header(|r| {
                    r.phase = RunPhase::Running;
                    r.control = None;
                })?;
                ctx.emit(Draft::run(EventKind::Resumed, "resumed by an operator"))?;
                self.spawn(ctx);
                Ok(run)
            }
            (None, _) => Err(not("only a paused run can be resumed")),
            (Some(Control::Abort), RunPhase::Running) => {
                ctx.update_header(|r| r.control = Some(Control::Abort))
            }
            (Some(Control::Abort), RunPhase::Paused) => {
                let run = ctx.update_header(|r| {
                    r.phase = RunPhase::Running;
                    r.control = None;
                    r.stopping = Some(RunPhase::Aborted);
                    r.note = Some("aborted by an operator".into());
                })?;
                self.spawn(ctx);
                Ok(run)
            }
            (Some(Control::Abort), _) => Err(not("it has already ended")),
        }
    }
}
