//! Dedicated service users, made with the host's own tools (groupadd,
//! useradd, usermod, loginctl) so that NSS, locking and logs behave as an
//! administrator expects. Idempotent: an existing user with the same ids is
//! success; a name or id taken with other ids is a conflict, never a silent
//! reuse. The undo removes only what the step created.
//!
//! Names derived from a service follow one documented rule
//! (`derive_name`): `silly-tavern` → `svc-silly-tavern`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::id_record::{self, Allocated, Allocation, IdRecordError};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "no free id left in the range {0}-{1} (ids held by an account or group, or given by fleet before, are never reused): widen user_uid_min/user_uid_max in the agent's config"
    )]
    RangeExhausted(u32, u32),
    #[error("`{command}` failed: {output}")]
    Tool { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    IdRecord(#[from] IdRecordError),
}

/// Where ids and homes come from (agent configuration).
#[derive(Debug, Clone)]
pub struct UserSettings {
    pub uid_range: (u32, u32),
    pub home_root: PathBuf,
    /// Subordinate id ranges for rootless targets start at or above this.
    pub subid_base: u32,
    pub subid_count: u32,
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub subuid: PathBuf,
    pub subgid: PathBuf,
    /// The record of every id fleet ever allocated on this host
    /// (`id_record`); beside the passwd file when unset.
    pub id_record: Option<PathBuf>,
}

impl UserSettings {
    pub fn id_record_path(&self) -> PathBuf {
        self.id_record
            .clone()
            .unwrap_or_else(|| self.passwd.with_file_name(".fleet-allocated-ids"))
    }
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            uid_range: (61000, 61999),
            home_root: PathBuf::from("/var/lib/fleet-users"),
            subid_base: 1_000_000,
            subid_count: 65536,
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
            id_record: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Subordinate uid/gid ranges and linger, for a rootless Podman target.
    pub rootless: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOutcome {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub created_user: bool,
    pub created_group: bool,
    pub created_home: bool,
    pub subuids: Option<(u32, u32)>,
    pub subgids: Option<(u32, u32)>,
    pub linger_enabled: bool,
    pub notes: Vec<String>,
}

/// The one naming rule for dedicated users (shared with the controller's
/// planner): see `fleet_core::names`.
pub use fleet_core::names::derive_user_name as derive_name;

/// What useradd accepts (and Debian's default NAME_REGEX), at most 32 chars.
pub fn validate_name(name: &str) -> Result<(), UserError> {
    fleet_core::names::validate_user_name(name).map_err(|reason| UserError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

#[derive(Debug, Clone)]
struct Account {
    name: String,
    id: u32,
    gid: u32,
}

fn read_accounts(path: &Path) -> Result<Vec<Account>, UserError> {
    let text = std::fs::read_to_string(path).map_err(|source| UserError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_string();
            let _ = f.next()?;
            let id = f.next()?.parse().ok()?;
            let gid = f.next().and_then(|g| g.parse().ok()).unwrap_or(id);
            Some(Account { name, id, gid })
        })
        .collect())
}

fn run(program: &str, args: &[&str]) -> Result<(), UserError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| UserError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(UserError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Ranges `start-end` in an /etc/subuid-style file.
fn subordinate_ranges(path: &Path) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let owner = f.next()?.to_string();
            let start: u32 = f.next()?.parse().ok()?;
            let count: u32 = f.next()?.parse().ok()?;
            Some((owner, start, start.saturating_add(count.saturating_sub(1))))
        })
        .collect()
}

/// The first `count` ids at or above `base` that overlap no existing range
/// in either file, nor any range fleet ever gave.
fn free_subordinate_range(settings: &UserSettings, given: &Allocated) -> (u32, u32) {
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

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}

/// The host-wide lock every fleet change to the account databases holds.
///
/// shadow-utils checks that an id is free *before* it takes its own lock
/// (groupadd and useradd look the id up, then lock and write), so two
/// concurrent `groupadd --gid N` can both succeed and leave two groups
/// sharing gid N. Our own read → decide → create must be one critical
/// section across every agent (and thread) on the host. The lock file sits
/// beside the passwd file it protects, so whoever edits that file shares it.
struct AccountsLock {
    _file: std::fs::File,
}

fn lock_accounts(settings: &UserSettings) -> Result<AccountsLock, UserError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = settings.passwd.with_file_name(".fleet-users.lock");
    let io = |source| UserError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    Ok(AccountsLock { _file: file })
}

/// After a creation: the new ids must belong to exactly one account each.
/// Someone outside fleet (an administrator's useradd) can still race us;
/// this check catches it instead of leaving two accounts sharing an id.
fn verify_ids_unique(uid: u32, gid: u32, settings: &UserSettings) -> Result<(), UserError> {
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

/// Makes sure the user exists with the requested ids; creates what is missing.
pub fn ensure_user(
    request: &UserRequest,
    settings: &UserSettings,
) -> Result<UserOutcome, UserError> {
    validate_name(&request.name)?;
    let _lock = lock_accounts(settings)?;
    let users = read_accounts(&settings.passwd)?;
    let groups = read_accounts(&settings.group)?;
    let record = settings.id_record_path();
    let given = id_record::read(&record)?;
    let name = request.name.as_str();
    let home = settings.home_root.join(name);
    let mut outcome = UserOutcome {
        name: name.to_string(),
        uid: 0,
        gid: 0,
        home: home.display().to_string(),
        created_user: false,
        created_group: false,
        created_home: false,
        subuids: None,
        subgids: None,
        linger_enabled: false,
        notes: Vec::new(),
    };

    if let Some(existing) = users.iter().find(|u| u.name == name) {
        if request.uid.is_some_and(|uid| uid != existing.id)
            || request.gid.is_some_and(|gid| gid != existing.gid)
        {
            return Err(UserError::Conflict(format!(
                "user '{name}' exists with uid {} gid {}, not the requested {}:{}; choose another name or those ids",
                existing.id,
                existing.gid,
                request.uid.map_or("-".into(), |u| u.to_string()),
                request.gid.map_or("-".into(), |g| g.to_string()),
            )));
        }
        if existing.id == 0 || existing.gid == 0 {
            return Err(UserError::Conflict(format!(
                "user '{name}' exists with uid {} gid {}: a service user never has uid or gid 0; choose another name",
                existing.id, existing.gid
            )));
        }
        outcome.uid = existing.id;
        outcome.gid = existing.gid;
        outcome.notes.push(format!(
            "user '{name}' already exists with {}:{}",
            existing.id, existing.gid
        ));
    } else {
        let (uid, gid) = match (request.uid, request.gid) {
            (Some(uid), gid) => (uid, gid.unwrap_or(uid)),
            (None, Some(gid)) => (allocate(&users, &groups, &given, settings)?, gid),
            (None, None) => {
                let id = allocate(&users, &groups, &given, settings)?;
                (id, id)
            }
        };
        for (what, id, asked) in [("uid", uid, request.uid), ("gid", gid, request.gid)] {
            if asked.is_some() && given.contains(id) {
                outcome.notes.push(format!(
                    "{what} {id} was given by fleet to an earlier account on this host; used again because the policy names it"
                ));
            }
        }
        if uid == 0 || gid == 0 {
            return Err(UserError::Conflict(
                "a service user never gets uid or gid 0".into(),
            ));
        }
        if let Some(other) = users.iter().find(|u| u.id == uid) {
            return Err(UserError::Conflict(format!(
                "uid {uid} already belongs to user '{}'; fleet never reuses another user's id",
                other.name
            )));
        }
        match groups.iter().find(|g| g.id == gid) {
            Some(g) if g.name != name => {
                return Err(UserError::Conflict(format!(
                    "gid {gid} already belongs to group '{}'; fleet never reuses another group's id",
                    g.name
                )));
            }
            Some(_) => {}
            None => {
                if let Some(g) = groups.iter().find(|g| g.name == name) {
                    return Err(UserError::Conflict(format!(
                        "group '{name}' exists with gid {}, not {gid}",
                        g.id
                    )));
                }
                record_ids(&record, name, uid, gid)?;
                run("groupadd", &["--system", "--gid", &gid.to_string(), name])?;
                outcome.created_group = true;
            }
        }
        if !outcome.created_group {
            record_ids(&record, name, uid, gid)?;
        }
        let created = run(
            "useradd",
            &[
                "--system",
                "--uid",
                &uid.to_string(),
                "--gid",
                &gid.to_string(),
                "--home-dir",
                &home.display().to_string(),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "fleet service user",
                name,
            ],
        );
        let created = created.and_then(|()| {
            outcome.created_user = true;
            verify_ids_unique(uid, gid, settings)
        });
        if let Err(e) = created {
            if outcome.created_user {
                let _ = run("userdel", &[name]);
            }
            if outcome.created_group {
                let _ = run("groupdel", &[name]);
            }
            return Err(e);
        }
        outcome.uid = uid;
        outcome.gid = gid;
    }

    if !home.exists() {
        std::fs::create_dir_all(&home).map_err(|source| UserError::Io {
            path: home.display().to_string(),
            source,
        })?;
        std::os::unix::fs::chown(&home, Some(outcome.uid), Some(outcome.gid)).map_err(
            |source| UserError::Io {
                path: home.display().to_string(),
                source,
            },
        )?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750));
        outcome.created_home = true;
    }

    if request.rootless {
        let has = |path: &Path| {
            subordinate_ranges(path)
                .into_iter()
                .any(|(owner, _, _)| owner == name)
        };
        if has(&settings.subuid) && has(&settings.subgid) {
            outcome
                .notes
                .push(format!("'{name}' already has subordinate id ranges"));
        } else {
            let (start, end) = free_subordinate_range(settings, &given);
            id_record::append(
                &record,
                &Allocation::Subordinate {
                    name: name.to_string(),
                    start,
                    end,
                    unix_ms: fleet_core::now_ms(),
                },
            )?;
            let range = format!("{start}-{end}");
            run(
                "usermod",
                &["--add-subuids", &range, "--add-subgids", &range, name],
            )?;
            outcome.subuids = Some((start, end));
            outcome.subgids = Some((start, end));
        }
        if systemd_running() {
            if Path::new("/var/lib/systemd/linger").join(name).exists() {
                outcome.notes.push("linger already enabled".into());
            } else {
                run("loginctl", &["enable-linger", name])?;
                outcome.linger_enabled = true;
            }
        } else {
            outcome
                .notes
                .push("systemd is not running on this host: linger skipped (start the user's services another way)".into());
        }
    }
    Ok(outcome)
}

/// The first id of the range that no account or group holds and fleet
/// never gave before.
fn allocate(
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

/// Records the ids of an account about to be created (synced first).
fn record_ids(record: &Path, name: &str, uid: u32, gid: u32) -> Result<(), UserError> {
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

/// Removes exactly what `outcome` says was created.
pub fn undo_user(outcome: &UserOutcome, settings: &UserSettings) -> Result<(), UserError> {
    let _lock = lock_accounts(settings)?;
    let name = outcome.name.as_str();
    if outcome.linger_enabled {
        run("loginctl", &["disable-linger", name])?;
    }
    if let (Some((s, e)), Some((gs, ge))) = (outcome.subuids, outcome.subgids)
        && !outcome.created_user
    {
        run(
            "usermod",
            &[
                "--del-subuids",
                &format!("{s}-{e}"),
                "--del-subgids",
                &format!("{gs}-{ge}"),
                name,
            ],
        )?;
    }
    if outcome.created_user {
        // userdel also drops the user's subordinate ranges.
        match run("userdel", &[name]) {
            Err(UserError::Tool { output, .. }) if output.contains("does not exist") => {}
            other => other?,
        }
    }
    if outcome.created_group {
        // userdel may already have removed a same-named primary group.
        match run("groupdel", &[name]) {
            Err(UserError::Tool { output, .. }) if output.contains("does not exist") => {}
            other => other?,
        }
    }
    if outcome.created_home {
        let _ = std::fs::remove_dir_all(&outcome.home);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        assert_eq!(derive_name("silly-tavern"), "svc-silly-tavern");
        assert_eq!(derive_name("My App_2!"), "svc-my-app_2");
        assert_eq!(derive_name("--"), "svc-service");
        let long = derive_name("a-very-long-service-name-that-goes-on-and-on");
        assert!(
            long.len() <= 32 && long.starts_with("svc-a-very-long-service"),
            "{long}"
        );
        assert_eq!(
            long,
            derive_name("a-very-long-service-name-that-goes-on-and-on"),
            "stable"
        );
        for name in ["svc-silly-tavern", "_x", "a1-b_c"] {
            validate_name(name).unwrap();
        }
        for bad in ["", "1abc", "Root", "a b", "a/b", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
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
