//! The durable run records live in `fleet_core::run`, shared with fleetctl;
//! this module adds what only the controller does with them.

pub use fleet_core::run::*;
pub use fleet_core::step::StepKind;

use crate::inventory::{Host, HostSource};

/// The host to call, as the run recorded it when it started.
pub fn host_of(run: &HostRun) -> Host {
    Host {
        name: run.name.clone(),
        address: run.address.clone(),
        labels: Default::default(),
        source: HostSource::Store,
    }
}
