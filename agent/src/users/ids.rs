//! Choosing ids: the first free id of the range, the first free
//! subordinate range, the record of what fleet gave (synced before the
//! account is made), and the check after creation that no one else got the
//! same ids at the same moment.

use std::path::Path;

use crate::id_record::{self, Allocated, Allocation};

use super::error::UserError;
use super::host_files::{Account, read_accounts, subordinate_ranges};
use super::request::UserSettings;

/// The first id of the range that no account or group holds and fleet
/// never gave before.
pub(super) fn allocate(
    users: &[Account],
    groups: &[Account],
    given: &Allocated,
    settings: &UserSettings,
) -> Result<u32, UserError> {
    let (low, high) = settings.uid_range;
    (low..=high)
        .find(|id| {
            !users.iter().any(|u| u.id == *id)
                && !groups.iter().any(|g| g.id == *id)
                && !given.contains(*id)
        })
        .ok_or(UserError::RangeExhausted(low, high))
}

/// The first `count` ids at or above `base` that overlap no existing range
/// in either file, nor any range fleet ever gave.
pub(super) fn free_subordinate_range(settings: &UserSettings, given: &Allocated) -> (u32, u32) {
    let mut taken: Vec<(u32, u32)> = subordinate_ranges(&settings.subuid)
        .into_iter()
        .chain(subordinate_ranges(&settings.subgid))
        .map(|(_, s, e)| (s, e))
        .chain(given.ranges.iter().copied())
        .collect();
    taken.sort();
    let mut start = settings.subid_base;
    for (s, e) in taken {
        let end = start + settings.subid_count - 1;
        if e < start || s > end {
            continue;
        }
        start = start.max(e + 1);
    }
    (start, start + settings.subid_count - 1)
}

/// Records the ids of an account about to be created (synced first).
pub(super) fn record_ids(record: &Path, name: &str, uid: u32, gid: u32) -> Result<(), UserError> {
    id_record::append(
        record,
        &Allocation::Ids {
            name: name.to_string(),
            uid,
            gid,
            unix_ms: fleet_core::now_ms(),
        },
    )?;
    Ok(())
}

/// After a creation: the new ids must belong to exactly one account each.
/// Someone outside fleet (an administrator's useradd) can still race us;
/// this check catches it instead of leaving two accounts sharing an id.
pub(super) fn verify_ids_unique(
    uid: u32,
    gid: u32,
    settings: &UserSettings,
) -> Result<(), UserError> {
    let owners = |accounts: Vec<Account>, id: u32| -> Vec<String> {
        accounts
            .into_iter()
            .filter(|a| a.id == id)
            .map(|a| a.name)
            .collect()
    };
    let users = owners(read_accounts(&settings.passwd)?, uid);
    let groups = owners(read_accounts(&settings.group)?, gid);
    if users.len() > 1 || groups.len() > 1 {
        return Err(UserError::Conflict(format!(
            "uid {uid} is held by [{}] and gid {gid} by [{}] after creation: another tool created an account at the same moment; fleet removed its own and refuses to share an id",
            users.join(", "),
            groups.join(", ")
        )));
    }
    Ok(())
}

/// Where `name`'s subordinate range in `path` overlaps another owner's:
/// overlapping ranges give accounts each other's files, the very isolation
/// a rootless move is for (ROOTLESS.md §2).
pub(super) fn overlap_of(name: &str, path: &Path) -> Option<String> {
    let ranges = super::host_files::subordinate_ranges(path);
    let own: Vec<&(String, u32, u32)> = ranges.iter().filter(|(o, _, _)| o == name).collect();
    for (_, start, end) in own {
        if let Some((other, s, e)) = ranges
            .iter()
            .find(|(o, s, e)| o != name && s <= end && start <= e)
        {
            return Some(format!(
                "'{name}' has subordinate ids {start}-{end} in {}, which overlap {other}'s {s}-{e}",
                path.display()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_range_that_overlaps_another_accounts_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let subuid = dir.path().join("subuid");
        std::fs::write(
            &subuid,
            "alice:1000000:65536
svc-web:1060000:65536
bob:2000000:65536
",
        )
        .unwrap();
        let said = overlap_of("svc-web", &subuid).unwrap();
        assert!(
            said.contains("1060000-1125535") && said.contains("alice's 1000000-1065535"),
            "{said}"
        );
        assert_eq!(overlap_of("bob", &subuid), None);
    }

    #[test]
    fn subordinate_ranges_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let subuid = dir.path().join("subuid");
        let subgid = dir.path().join("subgid");
        std::fs::write(&subuid, "alice:1000000:65536\nbob:1100000:65536\n").unwrap();
        std::fs::write(&subgid, "carol:1065536:10\n").unwrap();
        let settings = UserSettings {
            subuid,
            subgid,
            ..Default::default()
        };
        assert_eq!(
            free_subordinate_range(&settings, &Allocated::default()),
            (1165536, 1165536 + 65535)
        );
        // A range fleet gave before is never given again, even once its
        // owner's lines are gone from both files.
        let given = Allocated {
            ranges: vec![(1165536, 1165536 + 65535)],
            ..Default::default()
        };
        assert_eq!(
            free_subordinate_range(&settings, &given),
            (1231072, 1231072 + 65535)
        );
    }
}
