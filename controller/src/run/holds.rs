//! One run at a time per container: which containers the live runs hold,
//! and the refusal a new run gets when it touches one.
//!
//! A container is known by its host and by both its id and its name: a
//! migration recreates it under a new id with the same name, so a run
//! stuck after the recreate must still hold it by name.

use crate::error::ControllerError;
use crate::run::model::{ContainerRun, ContainerState};

/// A container some run holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub host: String,
    pub id: String,
    pub name: String,
    pub run: String,
    /// The run has ended: it holds only what it could not put back yet.
    pub finished: bool,
}

/// What `containers` of run `run` hold: everything a run touches until it
/// ends, and after it ends what still waits to be put back.
pub fn holds_of(run: &str, finished: bool, containers: &[ContainerRun]) -> Vec<Hold> {
    containers
        .iter()
        .filter(|c| {
            if finished {
                c.state == ContainerState::NeedsReconcile
            } else {
                c.state != ContainerState::NotMigrated
            }
        })
        .map(|c| Hold {
            host: c.host.clone(),
            id: c.plan.id.clone(),
            name: c.plan.name.clone(),
            run: run.to_string(),
            finished,
        })
        .collect()
}

/// Refuses a new run whose containers another run holds, naming that run.
pub fn refuse_held(holds: &[Hold], containers: &[ContainerRun]) -> Result<(), ControllerError> {
    for c in containers
        .iter()
        .filter(|c| c.state != ContainerState::NotMigrated)
    {
        let Some(hold) = holds
            .iter()
            .find(|h| h.host == c.host && (h.id == c.plan.id || h.name == c.plan.name))
        else {
            continue;
        };
        let run = &hold.run;
        let why = if hold.finished {
            format!(
                "which could not put it back yet (its agent was away); the controller retries until it can (`fleetctl runs show {run}`)"
            )
        } else {
            format!("which has not finished; wait for it (`fleetctl runs watch {run}`) or abort it")
        };
        return Err(ControllerError::FailedPrecondition(format!(
            "container {} on host {} is held by run {run}, {why}",
            c.plan.name, c.host
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, ContainerPlan};

    fn container(host: &str, id: &str, name: &str, state: ContainerState) -> ContainerRun {
        ContainerRun::new(
            format!("{host}/0001"),
            host.into(),
            ContainerPlan {
                name: name.into(),
                id: id.into(),
                image: "busybox".into(),
                fingerprint: String::new(),
                current: "root".into(),
                action: Action::Skip {
                    reason: String::new(),
                },
                class: "stateless".into(),
                order: 1,
                group: Vec::new(),
            },
            state,
        )
    }

    #[test]
    fn a_running_run_holds_what_it_touches_a_finished_one_what_is_stuck() {
        let touched = [
            container("h1", "old-id", "db", ContainerState::Migrated),
            container("h1", "id-2", "web", ContainerState::NotMigrated),
        ];
        let running = holds_of("r1", false, &touched);
        assert_eq!(running.len(), 1);
        let finished = holds_of("r1", true, &touched);
        assert!(finished.is_empty(), "a finished run lets go");
        let stuck = [container(
            "h1",
            "old-id",
            "db",
            ContainerState::NeedsReconcile,
        )];
        assert_eq!(holds_of("r1", true, &stuck).len(), 1);

        // A new run on the recreated container (new id, same name) is
        // refused, and the message says why and what to do.
        let new_run = [container("h1", "new-id", "db", ContainerState::Pending)];
        let err = refuse_held(&holds_of("r1", true, &stuck), &new_run).unwrap_err();
        assert!(
            err.to_string()
                .contains("held by run r1, which could not put it back yet"),
            "{err}"
        );
        let err = refuse_held(&running, &new_run).unwrap_err();
        assert!(err.to_string().contains("which has not finished"), "{err}");
        // Another host's container of the same name is not held.
        let elsewhere = [container("h2", "new-id", "db", ContainerState::Pending)];
        refuse_held(&running, &elsewhere).unwrap();
        // Nor is one the new run does not touch.
        let untouched = [container("h1", "old-id", "db", ContainerState::NotMigrated)];
        refuse_held(&running, &untouched).unwrap();
    }
}
