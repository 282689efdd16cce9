//! Every account's rootless engine this agent has reached: started on
//! first use (`manager`), connected through bollard like any engine, and
//! listed for the audit, so a moved container is still audited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::error::RootlessError;
use super::manager::{PodmanCommand, Started, UserManager};
use super::unit::UnitDirs;
use crate::engine::{Engine, EngineChoice};
use crate::users::RootlessAccount;

/// How long an account's API has to answer after it is started.
const API_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct AccountEngines {
    podman: PodmanCommand,
    manager: UserManager,
    logs: PathBuf,
    units: UnitDirs,
    engines: Mutex<BTreeMap<String, Reached>>,
}

/// An account's engine, and how the agent started it (`None`: it answered
/// on its socket before the agent came, started by someone else).
#[derive(Debug, Clone)]
pub struct Reached {
    pub engine: Arc<Engine>,
    pub started: Option<Started>,
}

impl AccountEngines {
    pub fn new(podman: PodmanCommand, manager: UserManager, state_dir: &Path) -> Self {
        AccountEngines {
            podman,
            manager,
            logs: state_dir.join("engines"),
            units: UnitDirs::default(),
            engines: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn manager(&self) -> &UserManager {
        &self.manager
    }

    pub fn podman(&self) -> &PodmanCommand {
        &self.podman
    }

    /// Where the root-owned units go.
    pub fn unit_dirs(&self) -> &UnitDirs {
        &self.units
    }

    /// The account's engine: the one already answering on its socket, or
    /// one started now.
    pub async fn reach(&self, account: &RootlessAccount) -> Result<Reached, RootlessError> {
        let mut engines = self.engines.lock().await;
        if let Some(reached) = engines.get(&account.name)
            && reached.engine.connected().await.is_ok()
            && account.api_socket().exists()
        {
            return Ok(reached.clone());
        }
        let socket = account.api_socket();
        let mut started = None;
        if !answers(&socket).await {
            prepare_runtime_dir(account)?;
            std::fs::create_dir_all(&self.logs).map_err(RootlessError::io(&self.logs))?;
            let log = self.logs.join(format!("{}.log", account.name));
            started = Some(self.manager.start_api(account, &self.podman, &log)?);
            wait_for_api(account, &socket, &log).await?;
        }
        let engine = Arc::new(Engine::new(EngineChoice::Podman, Some(socket)));
        engine.connected().await?;
        let reached = Reached { engine, started };
        engines.insert(account.name.clone(), reached.clone());
        Ok(reached)
    }

    /// The engines reached so far, by account.
    pub async fn known(&self) -> Vec<(String, Arc<Engine>)> {
        self.engines
            .lock()
            .await
            .iter()
            .map(|(name, reached)| (name.clone(), reached.engine.clone()))
            .collect()
    }

    /// Forgets the account's engine and ends every process of the account
    /// (its API service, Podman's pause process), before the account is
    /// removed: `userdel` refuses an account with processes.
    pub async fn stop(&self, name: &str, uid: u32) -> Result<(), RootlessError> {
        self.engines.lock().await.remove(name);
        let args = vec!["-KILL".to_string(), "-U".to_string(), uid.to_string()];
        // pkill exits 1 when nothing matched: nothing to end.
        super::manager::run_allowing("pkill", &args, &[1])?;
        let runtime = PathBuf::from(format!("/run/user/{uid}"));
        if runtime.exists() {
            std::fs::remove_dir_all(&runtime).map_err(RootlessError::io(&runtime))?;
        }
        Ok(())
    }
}

/// `/run/user/UID` (and its `podman/`), 0700 and the account's: what a
/// login would have made; the socket's directory must exist before
/// `podman system service` binds it.
fn prepare_runtime_dir(account: &RootlessAccount) -> Result<(), RootlessError> {
    use std::os::unix::fs::PermissionsExt;
    let runtime = account.runtime_dir();
    let podman_dir = runtime.join("podman");
    for dir in [&runtime, &podman_dir] {
        std::fs::create_dir_all(dir).map_err(RootlessError::io(dir))?;
        let meta = std::fs::symlink_metadata(dir).map_err(RootlessError::io(dir))?;
        if meta.file_type().is_symlink() {
            return Err(RootlessError::Refused(format!(
                "{} is a symbolic link: refusing to hand it to {}",
                dir.display(),
                account.name
            )));
        }
        std::os::unix::fs::chown(dir, Some(account.ids.uid), Some(account.ids.gid))
            .map_err(RootlessError::io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(RootlessError::io(dir))?;
    }
    Ok(())
}

async fn answers(socket: &Path) -> bool {
    socket.exists()
        && matches!(
            crate::rawhttp::request(socket, http::Method::GET, "/_ping", None).await,
            Ok((200, _))
        )
}

async fn wait_for_api(
    account: &RootlessAccount,
    socket: &Path,
    log: &Path,
) -> Result<(), RootlessError> {
    let deadline = Instant::now() + API_WAIT;
    while Instant::now() < deadline {
        if answers(socket).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(RootlessError::NoApi {
        account: account.name.clone(),
        socket: socket.display().to_string(),
        secs: API_WAIT.as_secs(),
        detail: std::fs::read_to_string(log)
            .map(|text| text.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
            .unwrap_or_else(|_| {
                "its user manager started podman.socket (see `journalctl --user`)".into()
            }),
    })
}
