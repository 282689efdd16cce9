//! The target of a container moved under its own account's rootless
//! Podman: the account (named by the rule or after the service), how its
//! ids sit on the account's namespace, the user inside; refused with every
//! reason the host or the container gives (the host's missing tools, a low
//! port, host networking, a device...), and the changes rootless forces,
//! said in the plan.

use std::num::NonZeroU32;

use fleet_core::audit::{ContainerReport, HostReport};
use fleet_core::target::{Target, TargetUser};
use fleet_core::userns::UsernsMode;

use crate::policy::UsernsChoice;

/// The rootless target, and the notes the plan shows with it.
pub(super) struct RootlessTarget {
    pub target: Target,
    pub notes: Vec<String>,
}

/// `user` is what the strategy chose: a user of the image or explicit ids
/// become the user inside; a dedicated user is the account itself.
pub(super) fn target(
    c: &ContainerReport,
    host: &HostReport,
    account: Option<&str>,
    userns: UsernsChoice,
    user: TargetUser,
    service: &str,
) -> Result<RootlessTarget, Vec<String>> {
    let needs = host.capabilities.rootless_needs();
    let mut blockers = needs.blockers.clone();
    blockers.extend(c.rootless_blockers.iter().cloned());
    let (name, uid, gid, inside) = match user {
        TargetUser::Dedicated { name, uid, gid } => (name, uid, gid, None),
        TargetUser::ImageUser { ids, .. } | TargetUser::Explicit { ids } => (
            fleet_core::names::derive_user_name(service),
            None::<NonZeroU32>,
            None::<NonZeroU32>,
            Some((ids.uid(), ids.gid())),
        ),
    };
    let name = account.map_or(name, str::to_string);
    // An account that exists keeps its ids: one asked for that differs is
    // the operator's mistake, said before anything changes.
    if let Some(existing) = host.host_users.iter().find(|a| a.name == name)
        && let Some(asked) = uid.filter(|u| u.get() != existing.id)
    {
        blockers.push(format!(
            "account {name} exists on the host with uid {}, but the rule asks for uid {asked}: drop `uid` to use the account as it is, or name another account",
            existing.id
        ));
    }
    for (kind, ranges) in [("uids", &host.host_subuids), ("gids", &host.host_subgids)] {
        for own in ranges.iter().filter(|r| r.owner == name) {
            if let Some(other) = ranges.iter().find(|r| r.owner != name && r.overlaps(own)) {
                blockers.push(format!(
                    "account {name}'s subordinate {kind} {}-{} overlap {}'s {}-{}: the accounts would own each other's files; give {name} a range of its own or name another account",
                    own.start,
                    own.end(),
                    other.owner,
                    other.start,
                    other.end()
                ));
            }
        }
    }
    if let Some(user) = host
        .host_users
        .iter()
        .find(|a| Some(a.id) == uid.map(NonZeroU32::get) && a.name != name)
    {
        blockers.push(format!(
            "uid {} is {}'s on the host: the account {name} cannot have it; drop `uid` (the agent allocates one) or give a free one",
            user.id, user.name
        ));
    }
    let userns = match (userns, inside) {
        (UsernsChoice::Default, _) => UsernsMode::Default,
        (UsernsChoice::KeepId, Some((uid, gid))) => UsernsMode::KeepId { uid, gid },
        (UsernsChoice::KeepId, None) => {
            blockers.push("userns = \"keep-id\" makes the container's user the account, and this container would run as root inside: give it a non-root user (strategy = \"image-user\" or \"UID:GID\") or use userns = \"default\"".into());
            UsernsMode::Default
        }
    };
    if !blockers.is_empty() {
        return Err(blockers);
    }
    let mut notes = needs.notes;
    notes.extend(c.rootless_changes.iter().cloned());
    if !c.runtime_dirs.is_empty() {
        notes.push(format!(
            "{} runtime director{} of the writable layer start from the image under the account: the container must recreate {} itself",
            c.runtime_dirs.len(),
            if c.runtime_dirs.len() == 1 { "y" } else { "ies" },
            if c.runtime_dirs.len() == 1 { "it" } else { "them" },
        ));
    }
    Ok(RootlessTarget {
        target: Target::Rootless {
            account: TargetUser::Dedicated { name, uid, gid },
            userns,
            inside,
        },
        notes,
    })
}
