//! Installing a rendered unit, and taking it away: written root-owned
//! (mode 0640, the account's group: the environment it carries may hold
//! secrets) by a rename from a fresh file, never through a link, in a
//! directory checked to be a real one; a Quadlet unit checked first by the
//! host's own generator; a user service enabled by its `default.target`
//! link beside it. Where systemd runs, the account's manager (lingering,
//! so it runs without a login) reloads and starts it.

use std::path::Path;

use fleet_core::capabilities::UnitFlavour;

use super::error::RootlessError;
use super::manager::UserManager;
use super::unit::UnitFile;
use crate::users::RootlessAccount;

/// The first line of every unit fleet writes: what is not ours stays.
const OURS: &str = "# Written by fleet:";

/// The host's Quadlet generator, where Podman ships one.
const QUADLET: &str = "/usr/libexec/podman/quadlet";

/// Checks a Quadlet unit with `generator -dryrun -user` on a staged copy:
/// Err with what the generator said.
pub fn validate(unit: &UnitFile, generator: &Path) -> Result<String, RootlessError> {
    let staging = tempfile::tempdir().map_err(RootlessError::io(Path::new("/tmp")))?;
    let name = unit
        .path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let staged = staging.path().join(name);
    std::fs::write(&staged, &unit.text).map_err(RootlessError::io(&staged))?;
    let out = std::process::Command::new(generator)
        .args(["-dryrun", "-user"])
        .env("QUADLET_UNIT_DIRS", staging.path())
        .output()
        .map_err(|e| RootlessError::tool(&generator.display().to_string(), &[], &e.to_string()))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && !said.contains("unsupported key") {
        Ok(said)
    } else {
        Err(RootlessError::Refused(format!(
            "the Quadlet generator {} refused {}: {}",
            generator.display(),
            unit.path.display(),
            said.trim()
        )))
    }
}

/// Writes the unit (and a service's enabling link) and, where systemd
/// runs, starts it under the account's manager. What it says, for notes.
pub fn install(
    unit: &UnitFile,
    account: &RootlessAccount,
    manager: &UserManager,
) -> Result<Vec<String>, RootlessError> {
    // What the create request has that the unit cannot carry is said.
    let mut said = unit.notes.clone();
    if unit.flavour == UnitFlavour::Quadlet && Path::new(QUADLET).exists() {
        validate(unit, Path::new(QUADLET))?;
        said.push(format!(
            "{} passed the host's Quadlet generator",
            unit.path.display()
        ));
    }
    let dir = unit.path.parent().unwrap_or(Path::new("/"));
    real_dir(dir)?;
    // Root's, readable by the account's group only: the environment it
    // carries may hold secrets; a link planted at the path is replaced.
    crate::atomic_file::replace(&unit.path, &unit.text, 0o640, Some((0, account.ids.gid)))
        .map_err(RootlessError::io(&unit.path))?;
    if unit.flavour == UnitFlavour::UserService {
        let wants = dir.join("default.target.wants");
        real_dir(&wants)?;
        let link = wants.join(&unit.service);
        match std::fs::symlink_metadata(&link) {
            Ok(_) => {}
            Err(_) => std::os::unix::fs::symlink(Path::new("..").join(&unit.service), &link)
                .map_err(RootlessError::io(&link))?,
        }
    }
    said.push(format!(
        "unit {} written, enabled for default.target",
        unit.path.display()
    ));
    if manager.is_systemd() {
        manager.linger(account, true)?;
        manager.start_unit(account, &unit.service)?;
        said.push(format!(
            "{} started by {}'s user manager (lingering: it starts at boot)",
            unit.service, account.name
        ));
    } else {
        said.push(format!(
            "systemd does not run this host: {} is not started (the container runs under the agent's podman service for {}) and nothing starts it at boot until a user manager runs",
            unit.service, account.name
        ));
    }
    Ok(said)
}

/// Whether the account's user manager lingers already (before a unit
/// asks it to): what the undo must leave as it found.
pub fn lingers(account: &str) -> bool {
    Path::new("/var/lib/systemd/linger").join(account).exists()
}

/// Stops the unit (where systemd runs) and removes what `install` wrote,
/// ending the linger it began; a file that is not fleet's is left alone.
pub fn remove(
    unit: &UnitFile,
    account: Option<&RootlessAccount>,
    manager: &UserManager,
    lingered_before: bool,
) -> Result<(), RootlessError> {
    if let Some(account) = account
        && manager.is_systemd()
    {
        manager.stop_unit(account, &unit.service)?;
        if !lingered_before {
            manager.linger(account, false)?;
        }
    }
    let dir = unit.path.parent().unwrap_or(Path::new("/"));
    let link = dir.join("default.target.wants").join(&unit.service);
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&link).map_err(RootlessError::io(&link))?;
    }
    match std::fs::read_to_string(&unit.path) {
        Ok(text) if text.starts_with(OURS) => {
            std::fs::remove_file(&unit.path).map_err(RootlessError::io(&unit.path))?
        }
        _ => {}
    }
    if let Some(account) = account
        && manager.is_systemd()
    {
        manager.reload(account)?;
    }
    Ok(())
}

/// Creates `dir` (root's, 0755) and refuses a link anywhere on the way.
fn real_dir(dir: &Path) -> Result<(), RootlessError> {
    std::fs::create_dir_all(dir).map_err(RootlessError::io(dir))?;
    let mut at = dir.to_path_buf();
    loop {
        let meta = std::fs::symlink_metadata(&at).map_err(RootlessError::io(&at))?;
        if meta.file_type().is_symlink() {
            return Err(RootlessError::Refused(format!(
                "{} is a symbolic link: a unit is never written through one",
                at.display()
            )));
        }
        if !at.pop() || at.as_os_str().is_empty() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootless::manager::recording::Recorder;
    use crate::rootless::unit::{UnitDirs, UnitSource, render};
    use std::os::unix::fs::MetadataExt;

    fn account() -> RootlessAccount {
        RootlessAccount {
            name: "svc-web".into(),
            home: "/var/lib/fleet-users/svc-web".into(),
            ids: fleet_core::userns::AccountIds {
                uid: 61000,
                gid: 61000,
                subuid_start: 300000,
                subgid_start: 300000,
                count: 65536,
            },
        }
    }

    #[test]
    fn where_systemd_runs_the_accounts_manager_lingers_starts_it_and_the_undo_ends_both() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = UnitDirs {
            systemd_user: dir.path().join("user"),
            quadlet_users: dir.path().join("q"),
        };
        let body = serde_json::json!({"Image": "docker.io/library/web:1", "Cmd": ["httpd"], "HostConfig": {}});
        let unit = render(
            UnitFlavour::UserService,
            &UnitSource {
                name: "web",
                account: "svc-web",
                uid: 61000,
                podman: Path::new("/usr/bin/podman"),
                global_args: Vec::new(),
                body: &body,
                restart_policy: "always",
                stop_timeout: None,
                release: (4, 3),
            },
            &dirs,
        );
        let recorder = Recorder::default();
        let manager = UserManager::Systemd(Box::new(recorder.clone()));
        // A link planted where the unit goes is replaced, never followed.
        std::fs::create_dir_all(&dirs.systemd_user).unwrap();
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, &unit.path).unwrap();
        let said = install(&unit, &account(), &manager).unwrap();
        assert!(said.iter().any(|s| s.contains("lingering")), "{said:?}");
        assert!(!target.exists(), "nothing written through the link");
        let meta = std::fs::symlink_metadata(&unit.path).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, 61000, 0o640)
        );
        let link = dirs
            .systemd_user
            .join("default.target.wants/fleet-web.service");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../fleet-web.service")
        );
        remove(&unit, Some(&account()), &manager, false).unwrap();
        assert!(!unit.path.exists() && std::fs::symlink_metadata(&link).is_err());
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "loginctl enable-linger svc-web",
                "systemctl --user -M svc-web@ daemon-reload",
                "systemctl --user -M svc-web@ start fleet-web.service",
                "systemctl --user -M svc-web@ stop fleet-web.service",
                "loginctl disable-linger svc-web",
                "systemctl --user -M svc-web@ daemon-reload",
            ]
        );
    }
}
