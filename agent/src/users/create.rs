//! Making the account: user and group (ids chosen and recorded first),
//! home, and for a rootless target subordinate ranges and linger.

use std::path::Path;

use crate::id_record::{self, Allocation};

use super::error::UserError;
use super::host_files::{lock_accounts, read_accounts, subordinate_ranges};
use super::ids::{allocate, free_subordinate_range, record_ids, verify_ids_unique};
use super::request::{UserOutcome, UserRequest, UserSettings, validate_name};
use super::tools::{run, systemd_running};

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
