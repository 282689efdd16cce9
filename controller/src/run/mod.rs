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
use crate::agents::calls;
use crate::error::ControllerError;
use crate::run::ctx::{Draft, RunCtx, lock, now_ms};
use crate::run::model::{
    ContainerRun, ContainerState, Control, EventKind, HostRun, HostState, Pruned, Run, RunEvent,
    RunKind, RunPhase, RunSummary, RunView,
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
                        store.events(&run.id, after).unwrap_or_default()
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

    /// Rolls back a finished run (all of it, or some hosts or containers).
    pub fn rollback(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        hosts: &[String],
        containers: &[String],
        max_parallel: u32,
    ) -> Result<RunView, ControllerError> {
        let result = self.start_rollback(caller, id, hosts, containers, max_parallel);
        let target = match &result {
            Ok(view) => format!("{id} (rollback run {})", view.run.id),
            Err(_) => id.to_string(),
        };
        self.logged(caller, "run.rollback", &target, result)
    }

    fn start_rollback(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        hosts: &[String],
        containers: &[String],
        max_parallel: u32,
    ) -> Result<RunView, ControllerError> {
        let of = self.find(id)?;
        if let RunKind::Rollback { of: original } = &of.kind {
            return Err(ControllerError::InvalidArgument(format!(
                "{id} is a rollback run (of {original}); roll back the migration run itself"
            )));
        }
        let phase = self.live(id).map_or(of.phase, |c| c.header().phase);
        if !phase.is_terminal() {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} is {}: abort it first (`fleetctl runs abort {id}`), then roll it back",
                phase.name()
            )));
        }
        if let Some(pruned) = &of.pruned {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} was pruned by {} at {} ms since the epoch: its checkpoints (old containers and backups) are gone, so it cannot be rolled back",
                pruned.by, pruned.unix_ms
            )));
        }
        for host in hosts {
            if !of.hosts.iter().any(|h| &h.name == host) {
                return Err(ControllerError::NotFound(format!(
                    "run {id} did not touch host '{host}' (its hosts: {})",
                    of.hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let all = self.store.containers(id)?;
        for name in containers {
            if !all.iter().any(|c| crate::policy::glob(name, &c.plan.name)) {
                return Err(ControllerError::NotFound(format!(
                    "run {id} has no container matching '{name}'"
                )));
            }
        }
        let picked = |c: &ContainerRun| {
            (hosts.is_empty() || hosts.contains(&c.host))
                && (containers.is_empty()
                    || containers
                        .iter()
                        .any(|g| crate::policy::glob(g, &c.plan.name)))
        };
        // A linked group goes back as one: a dependent put back alone
        // would join its partner's stopped checkpoint.
        let chosen: Vec<ContainerRun> = all
            .iter()
            .filter(|c| {
                matches!(
                    c.state,
                    ContainerState::Migrated | ContainerState::NeedsReconcile
                )
            })
            .filter(|c| {
                picked(c)
                    || all.iter().any(|p| {
                        p.host == c.host && p.plan.group.contains(&c.plan.name) && picked(p)
                    })
            })
            .cloned()
            .collect();
        if chosen.is_empty() {
            return Err(ControllerError::FailedPrecondition(format!(
                "nothing to roll back: run {id} has no migrated container{} (see `fleetctl runs show {id}`)",
                if hosts.is_empty() && containers.is_empty() {
                    ""
                } else {
                    " matching the selection"
                }
            )));
        }
        let _gate = lock(&self.gate);
        if lock(&self.pruning).contains(id) || self.find(id)?.pruned.is_some() {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} is being pruned: its checkpoints are going away"
            )));
        }
        self.refuse_held(&chosen)?;
        let mut host_runs: Vec<HostRun> = Vec::new();
        for c in &chosen {
            match host_runs.iter_mut().find(|h| h.name == c.host) {
                Some(h) => h.containers.push(c.key.clone()),
                None => host_runs.push(HostRun {
                    name: c.host.clone(),
                    address: of
                        .hosts
                        .iter()
                        .find(|h| h.name == c.host)
                        .map(|h| h.address.clone())
                        .unwrap_or_default(),
                    state: HostState::Pending,
                    error: None,
                    containers: vec![c.key.clone()],
                }),
            }
        }
        let mut options = of.options.clone();
        options.canary = 0;
        options.pause_after_canary = false;
        if max_parallel > 0 {
            options.max_parallel = max_parallel;
        }
        let run = Run {
            id: self.fresh_id()?,
            kind: RunKind::Rollback { of: id.to_string() },
            created_by: caller.name.clone(),
            created_unix_ms: now_ms(),
            finished_unix_ms: None,
            options,
            phase: RunPhase::Running,
            control: None,
            waves: vec![host_runs.iter().map(|h| h.name.clone()).collect()],
            waves_done: 0,
            hosts: host_runs,
            budget: 0,
            failed_hosts: 0,
            note: None,
            stopping: None,
            overhead: Default::default(),
            pruned: None,
            rolled_back_by: Vec::new(),
            finished_seq: None,
        };
        self.launch(
            run.clone(),
            chosen.clone(),
            &format!("rollback of run {id} started"),
        )?;
        Ok(RunView {
            run,
            containers: chosen,
        })
    }

    /// Releases a finished run's checkpoints on every host it touched.
    pub async fn prune(&self, caller: &Caller, id: &str) -> Result<Run, ControllerError> {
        let result = self.prune_run(caller, id).await;
        self.logged(caller, "run.prune", id, result)
    }

    async fn prune_run(&self, caller: &Caller, id: &str) -> Result<Run, ControllerError> {
        let run = self.find(id)?;
        if let RunKind::Rollback { of } = &run.kind {
            return Err(ControllerError::InvalidArgument(format!(
                "{id} is a rollback run; prune the migration run {of}"
            )));
        }
        if self
            .live(id)
            .is_some_and(|c| !c.header().phase.is_terminal())
        {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} has not finished; prune releases the checkpoints of a finished run"
            )));
        }
        if run.pruned.is_some() {
            return Ok(run);
        }
        {
            let _gate = lock(&self.gate);
            let rolling_back = lock(&self.live).values().find_map(|ctx| {
                let h = ctx.header();
                (h.kind == RunKind::Rollback { of: id.to_string() } && !h.phase.is_terminal())
                    .then(|| h.id.clone())
            });
            if let Some(rollback) = rolling_back {
                return Err(ControllerError::FailedPrecondition(format!(
                    "run {id} is being rolled back by run {rollback}; prune it after that finishes"
                )));
            }
            // Its checkpoints are what puts a stuck container back.
            let stuck = lock(&self.live).values().find_map(|ctx| {
                (ctx.agent_run == id
                    && ctx
                        .containers()
                        .iter()
                        .any(|c| c.state == ContainerState::NeedsReconcile))
                .then(|| ctx.id.clone())
            });
            if let Some(holder) = stuck {
                return Err(ControllerError::FailedPrecondition(format!(
                    "run {holder} has not put every container of run {id} back yet (its agent was away); prune after it has (`fleetctl runs show {holder}`)"
                )));
            }
            if !lock(&self.pruning).insert(id.to_string()) {
                return Err(ControllerError::FailedPrecondition(format!(
                    "run {id} is already being pruned"
                )));
            }
        }
        let result = self.release_checkpoints(&run).await;
        lock(&self.pruning).remove(id);
        result?;
        // Re-read: a rollback may have recorded itself meanwhile.
        let mut run = self.find(id)?;
        run.pruned = Some(Pruned {
            unix_ms: now_ms(),
            by: caller.name.clone(),
        });
        self.store.put_run(&run)?;
        Ok(run)
    }

    async fn release_checkpoints(&self, run: &Run) -> Result<(), ControllerError> {
        let id = run.id.as_str();
        let containers = self.store.containers(id)?;
        let touched = run.hosts.iter().filter(|h| {
            containers
                .iter()
                .any(|c| c.host == h.name && !c.steps.is_empty())
        });
        for host_run in touched {
            let (name, host) = (&host_run.name, crate::run::model::host_of(host_run));
            calls::prune(&self.pool, &host, id).await.map_err(|e| {
                ControllerError::FailedPrecondition(format!(
                    "prune stopped at host {name}: {e}; nothing is marked pruned, run it again when the agent answers"
                ))
            })?;
        }
        Ok(())
    }
}
