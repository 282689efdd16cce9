//! Making the account: user and group (ids chosen and recorded first),
//! home, and for a rootless target subordinate ranges and linger.
//!
//! `ensure_user` reads the host's files once, under the host-wide lock,
//! and then takes its steps in this order: the account (an existing one
//! adopted, or a new one made), its home, its subordinate ranges, linger.
//! Every id is written to the id record before the tool that uses it runs.

use std::path::Path;

use crate::id_record::{self, Allocated, Allocation};

use super::error::UserError;
use super::host_files::{Account, lock_accounts, read_accounts, subordinate_ranges};
use super::ids::{allocate, free_subordinate_range, record_ids, verify_ids_unique};
use super::request::{UserOutcome, UserRequest, UserSettings, validate_name};
use super::tools::{run, systemd_running};

/// What the host holds when fleet decides: its users and groups, and every
/// id fleet gave before.
struct Taken {
    users: Vec<Account>,
    groups: Vec<Account>,
    given: Allocated,
}

/// Makes sure the user exists with the requested ids; creates what is missing.
pub fn ensure_user(
    request: &UserRequest,
    settings: &UserSettings,
) -> Result<UserOutcome, UserError> {
    validate_name(&request.name)?;
    let _lock = lock_accounts(settings)?;
    let taken = Taken {
        users: read_accounts(&settings.passwd)?,
        groups: read_accounts(&settings.group)?,
        given: id_record::read(&settings.id_record_path())?,
    };
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
    match taken.users.iter().find(|u| u.name == name) {
        Some(existing) => {
            if request.rootless {
                refuse_overlapping_ranges(name, settings)?;
            }
            adopt(request, existing, &mut outcome)?
        }
        None => create_account(request, &taken, &home, settings, &mut outcome)?,
    }
    make_home(&home, &mut outcome)?;
    if request.rootless {
        give_subordinate_ranges(name, &taken.given, settings, &mut outcome)?;
        enable_linger(name, &mut outcome)?;
    }
    Ok(outcome)
}

/// An account of this name exists: it is the one asked for only if it has
/// the requested ids, and a service user never has uid or gid 0.
fn adopt(
    request: &UserRequest,
    existing: &Account,
    outcome: &mut UserOutcome,
) -> Result<(), UserError> {
    let name = request.name.as_str();
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
    Ok(())
}

/// A new account: its ids chosen and checked free, recorded, then its
/// group (unless one of its name has the gid already) and user made.
fn create_account(
    request: &UserRequest,
    taken: &Taken,
    home: &Path,
    settings: &UserSettings,
    outcome: &mut UserOutcome,
) -> Result<(), UserError> {
    let name = request.name.as_str();
    let (uid, gid) = choose_ids(request, taken, settings)?;
    note_ids_given_before(request, uid, gid, &taken.given, &mut outcome.notes);
    let add_group = refuse_taken_ids(name, uid, gid, taken)?;
    record_ids(&settings.id_record_path(), name, uid, gid)?;
    if add_group {
        run("groupadd", &["--system", "--gid", &gid.to_string(), name])?;
        outcome.created_group = true;
    }
    add_user(name, uid, gid, home, settings, outcome)?;
    outcome.uid = uid;
    outcome.gid = gid;
    Ok(())
}

/// The requested ids, else the first free one of the range; the gid is the
/// uid unless it was asked for.
fn choose_ids(
    request: &UserRequest,
    taken: &Taken,
    settings: &UserSettings,
) -> Result<(u32, u32), UserError> {
    let free = || allocate(&taken.users, &taken.groups, &taken.given, settings);
    Ok(match (request.uid, request.gid) {
        (Some(uid), gid) => (uid, gid.unwrap_or(uid)),
        (None, Some(gid)) => (free()?, gid),
        (None, None) => {
            let id = free()?;
            (id, id)
        }
    })
}

/// A requested id fleet gave before is used again (the policy names it),
/// and the outcome says so.
fn note_ids_given_before(
    request: &UserRequest,
    uid: u32,
    gid: u32,
    given: &Allocated,
    notes: &mut Vec<String>,
) {
    for (what, id, asked) in [("uid", uid, request.uid), ("gid", gid, request.gid)] {
        if asked.is_some() && given.contains(id) {
            notes.push(format!(
                "{what} {id} was given by fleet to an earlier account on this host; used again because the policy names it"
            ));
        }
    }
}

/// Refuses uid or gid 0 and an id another account or group holds; says
/// whether the group is still to be made (false: a group of this name has
/// the gid already).
fn refuse_taken_ids(name: &str, uid: u32, gid: u32, taken: &Taken) -> Result<bool, UserError> {
    if uid == 0 || gid == 0 {
        return Err(UserError::Conflict(
            "a service user never gets uid or gid 0".into(),
        ));
    }
    if let Some(other) = taken.users.iter().find(|u| u.id == uid) {
        return Err(UserError::Conflict(format!(
            "uid {uid} already belongs to user '{}'; fleet never reuses another user's id",
            other.name
        )));
    }
    match taken.groups.iter().find(|g| g.id == gid) {
        Some(g) if g.name != name => Err(UserError::Conflict(format!(
            "gid {gid} already belongs to group '{}'; fleet never reuses another group's id",
            g.name
        ))),
        Some(_) => Ok(false),
        None => match taken.groups.iter().find(|g| g.name == name) {
            Some(g) => Err(UserError::Conflict(format!(
                "group '{name}' exists with gid {}, not {gid}",
                g.id
            ))),
            None => Ok(true),
        },
    }
}

/// useradd, then the check that no one else got the same ids at the same
/// moment; on failure the user and group this step made are removed.
fn add_user(
    name: &str,
    uid: u32,
    gid: u32,
    home: &Path,
    settings: &UserSettings,
    outcome: &mut UserOutcome,
) -> Result<(), UserError> {
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
    Ok(())
}

/// The home, made (owned by the account, mode 0750) only when missing.
fn make_home(home: &Path, outcome: &mut UserOutcome) -> Result<(), UserError> {
    if home.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(home).map_err(|source| UserError::Io {
        path: home.display().to_string(),
        source,
    })?;
    std::os::unix::fs::chown(home, Some(outcome.uid), Some(outcome.gid)).map_err(|source| {
        UserError::Io {
            path: home.display().to_string(),
            source,
        }
    })?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o750));
    outcome.created_home = true;
    Ok(())
}

/// An existing account's subordinate ranges must be its own: refused,
/// before anything changes, when they overlap another account's.
fn refuse_overlapping_ranges(name: &str, settings: &UserSettings) -> Result<(), UserError> {
    for path in [&settings.subuid, &settings.subgid] {
        if let Some(overlap) = super::ids::overlap_of(name, path) {
            return Err(UserError::Conflict(format!(
                "{overlap}: the accounts would own each other's files; give '{name}' a range of its own (usermod --del-subuids/--add-subuids) or choose another account"
            )));
        }
    }
    Ok(())
}

/// Subordinate uid and gid ranges for a rootless target, unless it has
/// both already: a free range, recorded before usermod gives it.
fn give_subordinate_ranges(
    name: &str,
    given: &Allocated,
    settings: &UserSettings,
    outcome: &mut UserOutcome,
) -> Result<(), UserError> {
    let has = |path: &Path| {
        subordinate_ranges(path)
            .into_iter()
            .any(|(owner, _, _)| owner == name)
    };
    if has(&settings.subuid) && has(&settings.subgid) {
        outcome
            .notes
            .push(format!("'{name}' already has subordinate id ranges"));
        return Ok(());
    }
    let (start, end) = free_subordinate_range(settings, given);
    id_record::append(
        &settings.id_record_path(),
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
    Ok(())
}

/// Linger, so a rootless target's services run without a login; only
/// where systemd runs the host.
fn enable_linger(name: &str, outcome: &mut UserOutcome) -> Result<(), UserError> {
    if !systemd_running() {
        outcome
            .notes
            .push("systemd is not running on this host: linger skipped (start the user's services another way)".into());
    } else if Path::new("/var/lib/systemd/linger").join(name).exists() {
        outcome.notes.push("linger already enabled".into());
    } else {
        run("loginctl", &["enable-linger", name])?;
        outcome.linger_enabled = true;
    }
    Ok(())
}
