//! Starting a rollback of a finished run: which of its containers go back
//! (a linked group as one), refused while it runs, after a prune, or while
//! a prune releases its checkpoints.

use std::sync::Arc;

use fleet_core::auth::Caller;

use crate::error::ControllerError;
use crate::run::Runs;
use crate::run::ctx::lock;
use crate::run::model::{
    ContainerRun, ContainerState, HostRun, HostState, Run, RunKind, RunOptions, RunView,
};

impl Runs {
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
        let chosen = self.to_roll_back(&of, hosts, containers)?;
        let _gate = lock(&self.gate);
        if lock(&self.pruning).contains(id) || self.find(id)?.pruned.is_some() {
            return Err(ControllerError::FailedPrecondition(format!(
                "run {id} is being pruned: its checkpoints are going away"
            )));
        }
        self.refuse_held(&chosen)?;
        let hosts = rollback_hosts(&of, &chosen);
        // One wave: every host at once (bounded by max-parallel).
        let waves = vec![hosts.iter().map(|h| h.name.clone()).collect()];
        let run = Run::started(
            self.fresh_id()?,
            RunKind::Rollback { of: id.to_string() },
            caller.name.clone(),
            rollback_options(&of, max_parallel),
            hosts,
            waves,
            0,
        );
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

    /// The containers of `of` a rollback of `hosts`/`containers` puts
    /// back, or why it cannot.
    fn to_roll_back(
        &self,
        of: &Run,
        hosts: &[String],
        containers: &[String],
    ) -> Result<Vec<ContainerRun>, ControllerError> {
        let id = of.id.as_str();
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
        Ok(chosen)
    }
}

/// The run's options for its rollback: no canary or pause; its own
/// max-parallel if given.
fn rollback_options(of: &Run, max_parallel: u32) -> RunOptions {
    let mut options = of.options.clone();
    options.canary = 0;
    options.pause_after_canary = false;
    if max_parallel > 0 {
        options.max_parallel = max_parallel;
    }
    options
}

/// One host record per host of the chosen containers, in their order.
fn rollback_hosts(of: &Run, chosen: &[ContainerRun]) -> Vec<HostRun> {
    let mut host_runs: Vec<HostRun> = Vec::new();
    for c in chosen {
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
    host_runs
}
