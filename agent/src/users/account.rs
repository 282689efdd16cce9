//! A rootless target's account as the host's files say it is now: its
//! uid, primary gid, home and subordinate ranges, read afresh for every
//! step so no step works from a stale copy.

use std::path::{Path, PathBuf};

use fleet_core::userns::AccountIds;

use super::error::UserError;
use super::host_files::subordinate_ranges;
use super::request::UserSettings;

/// An account a rootless Podman runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootlessAccount {
    pub name: String,
    pub home: PathBuf,
    pub ids: AccountIds,
}

impl RootlessAccount {
    /// `/run/user/UID`: where its engine's socket and runtime state live.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/user/{}", self.ids.uid))
    }

    pub fn api_socket(&self) -> PathBuf {
        self.runtime_dir().join("podman/podman.sock")
    }
}

/// The account `name`, with both subordinate ranges: an account without
/// them cannot run rootless Podman, which the error says with the fix.
pub fn rootless_account(name: &str, settings: &UserSettings) -> Result<RootlessAccount, UserError> {
    let (uid, gid, home) = passwd_entry(&settings.passwd, name)?;
    let range = |path: &Path| {
        subordinate_ranges(path)
            .into_iter()
            .find(|(owner, _, _)| owner == name)
            .map(|(_, start, end)| (start, end - start + 1))
    };
    let missing = |path: &Path| {
        UserError::Conflict(format!(
            "'{name}' has no subordinate range in {}: a rootless account needs one (let fleet make the account, or `usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST {name}`)",
            path.display()
        ))
    };
    let (subuid_start, uid_count) =
        range(&settings.subuid).ok_or_else(|| missing(&settings.subuid))?;
    let (subgid_start, gid_count) =
        range(&settings.subgid).ok_or_else(|| missing(&settings.subgid))?;
    Ok(RootlessAccount {
        name: name.to_string(),
        home,
        ids: AccountIds {
            uid,
            gid,
            subuid_start,
            subgid_start,
            count: uid_count.min(gid_count),
        },
    })
}

fn passwd_entry(passwd: &Path, name: &str) -> Result<(u32, u32, PathBuf), UserError> {
    let text = std::fs::read_to_string(passwd).map_err(|source| UserError::Io {
        path: passwd.display().to_string(),
        source,
    })?;
    text.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0] != name {
                return None;
            }
            Some((
                fields[2].parse().ok()?,
                fields[3].parse().ok()?,
                PathBuf::from(fields[5]),
            ))
        })
        .ok_or_else(|| {
            UserError::Conflict(format!(
                "no account '{name}' in {}: the user step makes it first",
                passwd.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_read_with_its_own_gid_home_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let settings = UserSettings {
            passwd: write(
                "passwd",
                "root:x:0:0::/root:/bin/sh\nsvc-web:x:999:995::/var/lib/fleet-users/svc-web:/usr/sbin/nologin\n",
            ),
            subuid: write("subuid", "other:100000:65536\nsvc-web:300000:65536\n"),
            subgid: write("subgid", "svc-web:400000:70000\n"),
            ..UserSettings::default()
        };
        let account = rootless_account("svc-web", &settings).unwrap();
        assert_eq!(
            account.ids,
            AccountIds {
                uid: 999,
                gid: 995,
                subuid_start: 300000,
                subgid_start: 400000,
                count: 65536
            }
        );
        assert_eq!(account.home, PathBuf::from("/var/lib/fleet-users/svc-web"));
        assert_eq!(
            account.api_socket(),
            PathBuf::from("/run/user/999/podman/podman.sock")
        );
        let error = rootless_account("other", &settings)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no account 'other'"), "{error}");
        std::fs::write(&settings.passwd, "other:x:1000:1000::/home/other:/bin/sh\n").unwrap();
        let error = rootless_account("other", &settings)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no subordinate range") && error.contains("subgid"),
            "{error}"
        );
    }
}
