//! The container engine behind this agent: Docker, rootful Podman or rootless
//! Podman, all through the Docker-compatible API (bollard), plus the few
//! libpod endpoints Podman needs for what its compat API leaves out.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bollard::Docker;
use fleet_core::audit::{EngineFacts, EngineKind};
use tokio::sync::OnceCell;

use crate::flavour::Flavour;
use crate::rawhttp;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no container engine socket found (tried {tried}); start the engine or pass --engine-socket"
    )]
    NoSocket { tried: String },
    #[error("cannot reach the container engine at {socket}: {message}")]
    Unreachable { socket: String, message: String },
    #[error("container {0} does not exist (it may have just been removed)")]
    NoSuchContainer(String),
    #[error("engine call {call} failed: {message}")]
    Api { call: String, message: String },
}

impl EngineError {
    /// Classifies a bollard error from a call about `container`.
    pub fn from_bollard(call: &str, container: &str, error: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match error {
            B::DockerResponseServerError {
                status_code: 404, ..
            } => EngineError::NoSuchContainer(container.to_string()),
            other => EngineError::Api {
                call: call.to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// Which engine to talk to, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    #[default]
    Auto,
    Docker,
    Podman,
    PodmanRootless,
}

impl FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "docker" => Ok(EngineChoice::Docker),
            "podman" => Ok(EngineChoice::Podman),
            "podman-rootless" => Ok(EngineChoice::PodmanRootless),
            other => Err(format!(
                "unknown engine '{other}': expected auto, docker, podman or podman-rootless"
            )),
        }
    }
}

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// The sockets auto-detection tries, in order.
pub fn candidate_sockets(choice: EngineChoice) -> Vec<PathBuf> {
    let rootless = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|dir| PathBuf::from(dir).join("podman/podman.sock"));
    match choice {
        EngineChoice::Docker => vec![PathBuf::from(DOCKER_SOCKET)],
        EngineChoice::Podman => vec![PathBuf::from(PODMAN_SOCKET)],
        EngineChoice::PodmanRootless => rootless.into_iter().collect(),
        EngineChoice::Auto => {
            let mut all = vec![PathBuf::from(DOCKER_SOCKET), PathBuf::from(PODMAN_SOCKET)];
            all.extend(rootless);
            all
        }
    }
}

/// A connected engine: the negotiated client and the facts about it.
#[derive(Debug)]
pub struct Connected {
    pub docker: Docker,
    pub facts: EngineFacts,
    /// The host uid that container uid 0 maps to when the engine does not
    /// run containers as host root (rootless, userns-remap); used for
    /// containers that have no process to read the mapping from.
    pub root_host_uid: Option<u32>,
    /// The socket path with symlinks resolved (/var/run → /run), to spot
    /// containers that mount it under another name.
    pub canonical_socket: PathBuf,
    /// Path prefix of Podman's own API (`/v4.3.1/libpod`).
    pub libpod_prefix: String,
    /// Path prefix of the negotiated compat API (`/v1.41`).
    pub api_prefix: String,
    /// The engine's data root (DockerRootDir, Podman's graph root).
    pub data_root: Option<PathBuf>,
    /// The negotiated compat API version, as (major, minor).
    pub api_version: (u32, u32),
    /// What this engine does differently (`flavour`).
    pub flavour: Flavour,
}

/// The engine, connected on first use and reconnected after a failure.
#[derive(Debug)]
pub struct Engine {
    choice: EngineChoice,
    explicit_socket: Option<PathBuf>,
    connected: OnceCell<Connected>,
}

const ENGINE_TIMEOUT_SECS: u64 = 60;

impl Engine {
    pub fn new(choice: EngineChoice, socket: Option<PathBuf>) -> Self {
        Engine {
            choice,
            explicit_socket: socket,
            connected: OnceCell::new(),
        }
    }

    /// The connected engine; tries again on every call until it succeeds.
    pub async fn connected(&self) -> Result<&Connected, EngineError> {
        self.connected.get_or_try_init(|| self.connect()).await
    }

    fn socket(&self) -> Result<PathBuf, EngineError> {
        if let Some(socket) = &self.explicit_socket {
            return Ok(socket.clone());
        }
        let tried = candidate_sockets(self.choice);
        tried
            .iter()
            .find(|p| p.exists())
            .cloned()
            .ok_or_else(|| EngineError::NoSocket {
                tried: tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    async fn connect(&self) -> Result<Connected, EngineError> {
        let socket = self.socket()?;
        let socket_text = socket.display().to_string();
        let unreachable = |source: bollard::errors::Error| EngineError::Unreachable {
            socket: socket_text.clone(),
            message: source.to_string(),
        };
        let docker = negotiate(&socket_text).await?;
        let negotiated = docker.client_version();
        let api_version = (
            negotiated.major_version as u32,
            negotiated.minor_version as u32,
        );
        let version = docker.version().await.map_err(unreachable)?;
        let (kind, libpod_version) = identify(&version);
        let libpod_prefix = format!("/v{}/libpod", libpod_version.as_deref().unwrap_or("4.0.0"));
        let info = docker.info().await.map_err(unreachable)?;
        let data_root = info
            .docker_root_dir
            .clone()
            .filter(|d| !d.is_empty())
            .map(|d| std::fs::canonicalize(&d).unwrap_or_else(|_| PathBuf::from(d)));
        let security = info.security_options.unwrap_or_default();
        let userns_remap = security.iter().any(|o| o.contains("name=userns"));
        let rootless = rootless(&security, kind, &socket, &libpod_prefix).await;
        let root_host_uid = if rootless {
            socket_owner(&socket)
        } else if userns_remap {
            subordinate_start(Path::new("/etc/subuid"), "dockremap")
        } else {
            None
        };
        let facts = EngineFacts {
            kind,
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            rootless,
            userns_remap,
            socket: socket_text,
        };
        let flavour = Flavour::new(facts.kind, &facts.version);
        tracing::info!(engine = %facts.kind, version = %facts.version, flavour = %flavour.describe(), socket = %facts.socket, rootless, userns_remap, "connected to the container engine");
        Ok(Connected {
            flavour,
            docker,
            facts,
            root_host_uid,
            canonical_socket: std::fs::canonicalize(&socket).unwrap_or(socket),
            libpod_prefix,
            api_prefix: format!("/v{}.{}", api_version.0, api_version.1),
            data_root,
            api_version,
        })
    }
}

/// A client on the socket, with the API version the engine and bollard
/// both speak (the engine has 10 seconds to answer).
async fn negotiate(socket_text: &str) -> Result<Docker, EngineError> {
    let unreachable = |source: bollard::errors::Error| EngineError::Unreachable {
        socket: socket_text.to_string(),
        message: source.to_string(),
    };
    let docker = Docker::connect_with_unix(
        socket_text,
        ENGINE_TIMEOUT_SECS,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(unreachable)?;
    tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
        .await
        .map_err(|_| EngineError::Unreachable {
            socket: socket_text.to_string(),
            message: "no answer within 10s".into(),
        })?
        .map_err(unreachable)
}

/// Docker or Podman, and Podman's own (libpod) API version: Podman names
/// itself in the components, and versions its libpod API separately from
/// the compat one.
fn identify(version: &bollard::models::SystemVersion) -> (EngineKind, Option<String>) {
    let libpod_version = version
        .components
        .iter()
        .flatten()
        .find(|c| c.name.contains("Podman"))
        .map(|c| {
            c.details
                .as_ref()
                .and_then(|d| d.get("APIVersion").cloned())
                .unwrap_or_else(|| c.version.clone())
        });
    let is_podman = libpod_version.is_some()
        || version
            .platform
            .as_ref()
            .is_some_and(|p| p.name.contains("Podman"));
    let kind = if is_podman {
        EngineKind::Podman
    } else {
        EngineKind::Docker
    };
    (kind, libpod_version)
}

/// Whether the engine runs rootless: its security options say so for
/// Docker; Podman's compat /info does not, its own endpoint does.
async fn rootless(
    security: &[String],
    kind: EngineKind,
    socket: &Path,
    libpod_prefix: &str,
) -> bool {
    let rootless = security.iter().any(|o| o.contains("name=rootless"));
    if kind != EngineKind::Podman {
        return rootless;
    }
    match rawhttp::get_json(socket, &format!("{libpod_prefix}/info")).await {
        Ok(value) => value
            .pointer("/host/security/rootless")
            .and_then(|v| v.as_bool())
            .unwrap_or(rootless),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /libpod/info");
            rootless
        }
    }
}

fn socket_owner(socket: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(socket).ok().map(|m| m.uid())
}

/// The start of the first subordinate id range of `name` in an
/// `/etc/subuid`-style file.
pub fn subordinate_start(file: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.next()?.parse().ok())?
    })
}
