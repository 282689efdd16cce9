//! Who runs an account's Podman API: its systemd user manager where systemd
//! runs the host (`podman.socket`, started through `systemctl --user -M
//! NAME@`), or, where it does not (containers, CI, minimal hosts), the agent
//! itself, which starts `podman system service` as the account with
//! `runuser` and says so. The systemd side only ever issues commands, so it
//! sits behind `Commands`, which the tests replace with a recorder.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::error::RootlessError;
use crate::users::RootlessAccount;

/// How the account's API came up, for the step's notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Through the account's user manager (`podman.socket`).
    UserManager,
    /// The agent runs `podman system service` as the account (no systemd).
    Supervised { pid: u32 },
}

impl Started {
    pub fn describe(&self, account: &str) -> String {
        match self {
            Started::UserManager => format!(
                "{account}'s Podman API runs under its systemd user manager (podman.socket)"
            ),
            Started::Supervised { pid } => format!(
                "systemd does not run this host: the agent runs {account}'s `podman system service` itself (pid {pid}); it does not survive a reboot"
            ),
        }
    }
}

/// Commands a systemd host is driven with; a recorder in the tests.
pub trait Commands: Send + Sync + std::fmt::Debug {
    fn run(&self, program: &str, args: &[String]) -> Result<(), RootlessError>;
}

/// The host's real commands.
#[derive(Debug, Default)]
pub struct HostCommands;

impl Commands for HostCommands {
    fn run(&self, program: &str, args: &[String]) -> Result<(), RootlessError> {
        run_allowing(program, args, &[])
    }
}

/// Runs a host tool; exit codes in `also_fine` (besides 0) are success.
pub(super) fn run_allowing(
    program: &str,
    args: &[String],
    also_fine: &[i32],
) -> Result<(), RootlessError> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| RootlessError::tool(program, args, &e.to_string()))?;
    let code = output.status.code().unwrap_or(-1);
    if output.status.success() || also_fine.contains(&code) {
        Ok(())
    } else {
        Err(RootlessError::tool(
            program,
            args,
            String::from_utf8_lossy(&output.stderr).trim(),
        ))
    }
}

/// The podman the account's engine runs, and its global flags.
#[derive(Debug, Clone)]
pub struct PodmanCommand {
    pub podman: PathBuf,
    /// `--runtime`: the OCI runtime, where the host's default does not work.
    pub runtime: Option<String>,
}

impl PodmanCommand {
    /// The host's podman by absolute path (not the agent's PATH), with the
    /// configured runtime.
    pub fn detect(runtime: Option<String>) -> Self {
        PodmanCommand {
            podman: crate::capabilities::tool("podman")
                .unwrap_or_else(|| PathBuf::from("/usr/bin/podman")),
            runtime,
        }
    }

    /// The global flags every podman call as an account takes. Without
    /// systemd the cgroup manager is cgroupfs: the systemd one needs a user
    /// session that does not exist.
    pub fn global_args(&self, systemd: bool) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(runtime) = &self.runtime {
            args.extend(["--runtime".to_string(), runtime.clone()]);
        }
        if !systemd {
            args.extend(["--cgroup-manager".to_string(), "cgroupfs".to_string()]);
        }
        args
    }
}

#[derive(Debug)]
pub enum UserManager {
    /// systemd runs the host: the account's user manager runs its units.
    Systemd(Box<dyn Commands>),
    /// No systemd: the agent starts the account's API itself.
    Agent,
}

impl UserManager {
    /// systemd if it runs the host, else the agent.
    pub fn detect() -> Self {
        if Path::new("/run/systemd/system").exists() {
            UserManager::Systemd(Box::new(HostCommands))
        } else {
            UserManager::Agent
        }
    }

    pub fn is_systemd(&self) -> bool {
        matches!(self, UserManager::Systemd(_))
    }

    /// Starts the account's API socket; `podman` is what the agent runs
    /// when it must.
    pub fn start_api(
        &self,
        account: &RootlessAccount,
        podman: &PodmanCommand,
        log: &Path,
    ) -> Result<Started, RootlessError> {
        match self {
            UserManager::Systemd(commands) => {
                commands.run(
                    "systemctl",
                    &user_args(account, &["start", "podman.socket"]),
                )?;
                Ok(Started::UserManager)
            }
            UserManager::Agent => supervise(account, podman, log),
        }
    }

    /// Reloads the account's manager and starts `unit` (enabled by its
    /// files: a `default.target` link or Quadlet's `[Install]`; a
    /// generated unit cannot be `systemctl enable`d).
    pub fn start_unit(&self, account: &RootlessAccount, unit: &str) -> Result<(), RootlessError> {
        if let UserManager::Systemd(commands) = self {
            commands.run("systemctl", &user_args(account, &["daemon-reload"]))?;
            commands.run("systemctl", &user_args(account, &["start", unit]))?;
        }
        Ok(())
    }

    /// Stops `unit`; a unit already gone is not an error.
    pub fn stop_unit(&self, account: &RootlessAccount, unit: &str) -> Result<(), RootlessError> {
        if let UserManager::Systemd(commands) = self {
            match commands.run("systemctl", &user_args(account, &["stop", unit])) {
                Err(RootlessError::Tool { output, .. })
                    if output.contains("not loaded") || output.contains("does not exist") => {}
                other => other?,
            }
        }
        Ok(())
    }

    pub fn reload(&self, account: &RootlessAccount) -> Result<(), RootlessError> {
        if let UserManager::Systemd(commands) = self {
            commands.run("systemctl", &user_args(account, &["daemon-reload"]))?;
        }
        Ok(())
    }

    /// `loginctl enable-linger` (or disable): the account's manager runs
    /// without a login, and at boot.
    pub fn linger(&self, account: &RootlessAccount, on: bool) -> Result<(), RootlessError> {
        if let UserManager::Systemd(commands) = self {
            let verb = if on {
                "enable-linger"
            } else {
                "disable-linger"
            };
            commands.run("loginctl", &[verb.to_string(), account.name.clone()])?;
        }
        Ok(())
    }
}

/// `systemctl --user -M NAME@ ARGS`: the account's own manager, reached
/// without a login session or `XDG_RUNTIME_DIR` (systemd ≥ 248).
fn user_args(account: &RootlessAccount, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "--user".to_string(),
        "-M".to_string(),
        format!("{}@", account.name),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// `runuser -u NAME -- env HOME=… XDG_RUNTIME_DIR=… podman … system
/// service --time=0 unix://SOCKET`, detached from the agent's session, its
/// output in `log`. A crash of the agent leaves it running; the next agent
/// finds the socket answering and uses it.
fn supervise(
    account: &RootlessAccount,
    podman: &PodmanCommand,
    log: &Path,
) -> Result<Started, RootlessError> {
    let io = |source| RootlessError::Io {
        path: log.display().to_string(),
        source,
    };
    let out = std::fs::File::create(log).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let mut command = std::process::Command::new("runuser");
    command
        .args(["-u", &account.name, "--", "env"])
        .arg(format!("HOME={}", account.home.display()))
        .arg(format!(
            "XDG_RUNTIME_DIR={}",
            account.runtime_dir().display()
        ))
        .arg(&podman.podman)
        .args(podman.global_args(false))
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", account.api_socket().display()))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a signal to the agent's group spares it.
        command.process_group(0);
    }
    let child = command.spawn().map_err(|e| {
        RootlessError::tool(
            "runuser",
            std::slice::from_ref(&account.name),
            &e.to_string(),
        )
    })?;
    Ok(Started::Supervised { pid: child.id() })
}

#[cfg(test)]
pub(crate) mod recording {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records every command instead of running it: systemd cannot run
    /// here, so its side is checked by what would have been asked of it.
    #[derive(Debug, Default, Clone)]
    pub struct Recorder(pub Arc<Mutex<Vec<String>>>);

    impl Commands for Recorder {
        fn run(&self, program: &str, args: &[String]) -> Result<(), RootlessError> {
            self.0
                .lock()
                .map_err(|_| RootlessError::Internal("recorder poisoned".into()))?
                .push(format!("{program} {}", args.join(" ")));
            Ok(())
        }
    }

    #[test]
    fn the_systemd_side_asks_the_accounts_own_manager() {
        let recorder = Recorder::default();
        let manager = UserManager::Systemd(Box::new(recorder.clone()));
        let account = RootlessAccount {
            name: "svc-web".into(),
            home: "/var/lib/fleet-users/svc-web".into(),
            ids: fleet_core::userns::AccountIds {
                uid: 999,
                gid: 995,
                subuid_start: 300000,
                subgid_start: 300000,
                count: 65536,
            },
        };
        let podman = PodmanCommand {
            podman: "/usr/bin/podman".into(),
            runtime: None,
        };
        let started = manager
            .start_api(&account, &podman, Path::new("/nonexistent"))
            .unwrap();
        assert_eq!(started, Started::UserManager);
        manager.linger(&account, true).unwrap();
        manager.start_unit(&account, "fleet-web.service").unwrap();
        manager.stop_unit(&account, "fleet-web.service").unwrap();
        manager.reload(&account).unwrap();
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "systemctl --user -M svc-web@ start podman.socket",
                "loginctl enable-linger svc-web",
                "systemctl --user -M svc-web@ daemon-reload",
                "systemctl --user -M svc-web@ start fleet-web.service",
                "systemctl --user -M svc-web@ stop fleet-web.service",
                "systemctl --user -M svc-web@ daemon-reload",
            ]
        );
        assert!(manager.is_systemd());
        assert!(started.describe("svc-web").contains("user manager"));
    }
}
