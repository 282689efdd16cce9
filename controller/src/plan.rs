//! Policy → plan: for every selected container of every host, what it
//! becomes (or why not), in the order a careful runbook would move them:
//! stateless services first, then caches and queues, then databases (and
//! other containers with data); containers that share namespaces or
//! volumes move together.

pub mod class;
mod groups;
pub mod host_ids;
mod migration;
mod rootless;
mod runtime;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use fleet_core::audit::{ContainerReport, HostReport};

use crate::inventory::Host;
use crate::policy::{Policy, glob};

use class::class_rank;
pub use class::image_base;
pub use fleet_core::migration::MountPlan;
pub use fleet_core::plan::{Action, ContainerPlan, HostPlan, Migration, Plan};

/// What the planner is told to look at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Container name globs; all if empty.
    pub containers: Vec<String>,
    /// Plan pod members too (they are refused otherwise).
    pub include_pods: bool,
    /// `--target rootless`: the default placement, where no rule names one.
    pub rootless: bool,
}

/// Plans one host: every selected container, ordered. Linked containers
/// (shared namespaces or volumes) form a group that moves as one: if any of
/// them cannot move, none does; within it a container comes after the ones
/// it points at; the group takes its members' latest class.
pub fn plan_host(
    host: &Host,
    report: &HostReport,
    policy: &Policy,
    selection: &Selection,
) -> HostPlan {
    let selected = |c: &&ContainerReport| {
        selection.containers.is_empty() || selection.containers.iter().any(|g| glob(g, &c.name))
    };
    let reports: Vec<&ContainerReport> = report.containers.iter().filter(selected).collect();
    let mut containers: Vec<ContainerPlan> = reports
        .iter()
        .map(|c| migration::plan_container(c, host, report, policy, selection))
        .collect();
    groups::refuse_left_out(report, &reports, &mut containers);
    let groups = groups::linked_groups(&reports);
    let mut position: BTreeMap<String, (u32, String, usize)> = BTreeMap::new();
    for group in &groups {
        let members: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
        if members.len() > 1 {
            groups::group_rules(&mut containers, &members);
        }
        let rank = members
            .iter()
            .map(|m| class_rank(&containers[*m].class))
            .max()
            .unwrap_or(25);
        let class = members
            .iter()
            .map(|m| containers[*m].class.clone())
            .find(|c| class_rank(c) == rank)
            .unwrap_or_default();
        let leader = containers[members[0]].name.clone();
        for (i, depth) in group {
            containers[*i].class = class.clone();
            position.insert(containers[*i].name.clone(), (rank, leader.clone(), *depth));
        }
    }
    containers.sort_by(|a, b| {
        let key = |c: &ContainerPlan| {
            let (rank, leader, depth) = position.get(&c.name).cloned().unwrap_or_default();
            (rank, leader, depth, c.name.clone())
        };
        key(a).cmp(&key(b))
    });
    for (position, container) in containers.iter_mut().enumerate() {
        container.order = position as u32 + 1;
    }
    HostPlan {
        host: host.name.clone(),
        address: host.address.clone(),
        error: None,
        containers,
    }
}
