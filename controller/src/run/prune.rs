//! Pruning a finished run: its checkpoints (old containers, backups)
//! released on every host it touched, refused while a rollback or a
//! reconcile still needs them.

use fleet_core::auth::Caller;

use crate::agents::calls;
use crate::error::ControllerError;
use crate::run::Runs;
use crate::run::ctx::{lock, now_ms};
use crate::run::model::{ContainerState, Pruned, Run, RunKind};

impl Runs {
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
