//! The undo: removing exactly what the step made.

use super::error::UserError;
use super::host_files::lock_accounts;
use super::request::{UserOutcome, UserSettings};
use super::tools::run;

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
