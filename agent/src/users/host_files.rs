//! The host's account files as fleet reads them to decide (passwd, group,
//! subuid, subgid), and the host-wide lock held while it reads, decides
//! and creates.

use std::path::Path;

use super::error::UserError;
use super::request::UserSettings;

#[derive(Debug, Clone)]
pub(super) struct Account {
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) gid: u32,
}

pub(super) fn read_accounts(path: &Path) -> Result<Vec<Account>, UserError> {
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

/// Ranges `start-end` in an /etc/subuid-style file.
pub(super) fn subordinate_ranges(path: &Path) -> Vec<(String, u32, u32)> {
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

/// The host-wide lock every fleet change to the account databases holds.
///
/// shadow-utils checks that an id is free *before* it takes its own lock
/// (groupadd and useradd look the id up, then lock and write), so two
/// concurrent `groupadd --gid N` can both succeed and leave two groups
/// sharing gid N. Our own read → decide → create must be one critical
/// section across every agent (and thread) on the host. The lock file sits
/// beside the passwd file it protects, so whoever edits that file shares it.
pub(super) struct AccountsLock {
    _file: std::fs::File,
}

pub(super) fn lock_accounts(settings: &UserSettings) -> Result<AccountsLock, UserError> {
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
