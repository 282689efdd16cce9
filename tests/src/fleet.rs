//! A small fleet on this machine: several agents, each scoped to its own
//! set of containers by a label (one engine, several "hosts"), one
//! controller listing them, operator and viewer certificates, and helpers
//! to look at what a run did from the engine's side.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use fleet_core::role::Role;
use fleet_core::tls::TlsFiles;

use crate::cli::{CliOutput, fleetctl};
use crate::engine::{Scope, body, docker, test_image};
use crate::pki::TestPki;
use crate::servers::{
    AgentOptions, RunningAgent, RunningController, start_agent, start_controller_with,
};
use crate::unique;
use fleet_controller::inventory::{Host, HostSource};

/// The label that says which test host a container belongs to.
pub const HOST_LABEL: &str = "fleet.test.host";

pub struct TestFleet {
    pub pki: TestPki,
    pub agents: Vec<RunningAgent>,
    pub controller: RunningController,
    pub operator: TlsFiles,
    pub viewer: TlsFiles,
    pub scope: Scope,
    pub image: String,
    /// Host names, and the label value scoping each one's containers.
    pub hosts: Vec<(String, String)>,
    pub prefix: String,
}

impl TestFleet {
    pub async fn start(hosts: usize) -> Self {
        Self::start_labelled(&vec![&[][..]; hosts]).await
    }

    /// A fleet of `labels.len()` hosts; host `h{i+1}` carries `labels[i]`
    /// in the controller's inventory (for `--selector`).
    pub async fn start_labelled(labels: &[&[(&str, &str)]]) -> Self {
        let hosts = labels.len();
        let docker = docker().await;
        let image = test_image(&docker).await;
        let pki = TestPki::new();
        let prefix = unique("fl");
        let mut agents = Vec::new();
        let mut names = Vec::new();
        for i in 1..=hosts {
            let name = format!("h{i}");
            let label = format!("{prefix}-{name}");
            agents.push(
                start_agent(
                    pki.files("agent"),
                    AgentOptions {
                        hostname: name.clone(),
                        scope: Some((HOST_LABEL.to_string(), label.clone())),
                        ..AgentOptions::default()
                    },
                )
                .await,
            );
            names.push((name, label));
        }
        let listed: Vec<Host> = names
            .iter()
            .zip(&agents)
            .zip(labels)
            .map(|(((name, _), agent), labels)| Host {
                name: name.clone(),
                address: agent.address.clone(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                source: HostSource::Config,
            })
            .collect();
        let controller = start_controller_with(pki.files("controller"), listed).await;
        let operator = pki.issue(Role::Operator, "alice", &[]);
        let viewer = pki.issue(Role::Viewer, "victor", &[]);
        TestFleet {
            scope: Scope::new(&docker),
            pki,
            agents,
            controller,
            operator,
            viewer,
            image,
            hosts: names,
            prefix,
        }
    }

    pub fn docker(&self) -> &Docker {
        self.scope.docker()
    }

    /// `fleetctl ARGS` as the operator alice.
    pub async fn ctl(&self, args: &[&str]) -> CliOutput {
        fleetctl(&self.controller.address, &self.operator, args).await
    }

    /// `fleetctl ARGS` as the viewer victor.
    pub async fn view(&self, args: &[&str]) -> CliOutput {
        fleetctl(&self.controller.address, &self.viewer, args).await
    }

    /// A container of host `host` (1-based), named `{prefix}-h{host}-{role}`,
    /// started; stops within a second (the tests wait for many stops).
    pub async fn container(
        &self,
        host: usize,
        role: &str,
        mut create: ContainerCreateBody,
    ) -> String {
        let (_, label) = &self.hosts[host - 1];
        let name = format!("{}-h{host}-{role}", self.prefix);
        create
            .labels
            .get_or_insert_with(HashMap::new)
            .insert(HOST_LABEL.to_string(), label.clone());
        create.stop_timeout.get_or_insert(1);
        create.image.get_or_insert_with(|| self.image.clone());
        self.scope.run(&name, create).await;
        name
    }

    /// A plain root container running sleep.
    pub async fn sleeper(&self, host: usize, role: &str) -> String {
        self.container(host, role, body(&self.image, &["sleep", "3600"]))
            .await
    }

    /// A named volume `{prefix}-{role}`, labelled and removed with the scope.
    pub async fn volume(&self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        self.docker()
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some([(crate::TEST_LABEL.to_string(), "1".to_string())].into()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create volume {name}: {e}"));
        self.scope.track_volume(&name);
        name
    }

    /// Where a named volume's files are on this host.
    pub async fn volume_path(&self, name: &str) -> std::path::PathBuf {
        self.docker()
            .inspect_volume(name)
            .await
            .unwrap_or_else(|e| panic!("inspect volume {name}: {e}"))
            .mountpoint
            .into()
    }

    /// A root container with `dir` bind-mounted at /data.
    pub async fn with_data(&self, host: usize, role: &str, dir: &Path) -> String {
        self.mounting(host, role, &dir.display().to_string(), &["sleep", "3600"])
            .await
    }

    /// A root container running `cmd` with `source` (a host directory or a
    /// named volume) at /data.
    pub async fn mounting(&self, host: usize, role: &str, source: &str, cmd: &[&str]) -> String {
        self.container(
            host,
            role,
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{source}:/data")]),
                    ..Default::default()
                }),
                ..body(&self.image, cmd)
            },
        )
        .await
    }
}

impl Drop for TestFleet {
    /// A migrated container has a new id the `Scope` never saw: remove
    /// every container labelled for this fleet's hosts too.
    fn drop(&mut self) {
        let docker = self.docker().clone();
        let labels: Vec<String> = self
            .hosts
            .iter()
            .map(|(_, l)| format!("{HOST_LABEL}={l}"))
            .collect();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                for label in labels {
                    let filters = HashMap::from([("label".to_string(), vec![label])]);
                    let Ok(found) = docker
                        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                            all: true,
                            filters: Some(filters),
                            ..Default::default()
                        }))
                        .await
                    else {
                        continue;
                    };
                    for c in found {
                        if let Some(id) = c.id {
                            let _ = docker
                                .remove_container(
                                    &id,
                                    Some(bollard::query_parameters::RemoveContainerOptions {
                                        force: true,
                                        ..Default::default()
                                    }),
                                )
                                .await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// What the engine says a container is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub user: String,
    pub running: bool,
    /// Real uid of the container's main process (from /proc), if running.
    pub process_uid: Option<u32>,
}

impl Seen {
    /// Running, and its main process is not uid 0 (read from /proc).
    pub fn is_non_root(&self) -> bool {
        self.running && self.process_uid.is_some_and(|u| u != 0)
    }
}

pub async fn seen(docker: &Docker, name: &str) -> Seen {
    let doc = docker
        .inspect_container(name, None)
        .await
        .unwrap_or_else(|e| panic!("inspect {name}: {e}"));
    let state = doc.state.unwrap_or_default();
    let running = state.running == Some(true);
    let process_uid = state.pid.filter(|p| running && *p > 0).and_then(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
    });
    Seen {
        id: doc.id.unwrap_or_default(),
        user: doc.config.and_then(|c| c.user).unwrap_or_default(),
        running,
        process_uid,
    }
}

/// The host-wide lock every agent holds while it changes the account
/// databases (`/etc/.fleet-users.lock`, beside `/etc/passwd`): held, no
/// fleet agent on this machine adds or removes a user. Released on drop.
pub struct AccountsLock(#[allow(dead_code)] std::fs::File);

pub fn lock_accounts() -> AccountsLock {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/etc/.fleet-users.lock")
        .unwrap_or_else(|e| panic!("/etc/.fleet-users.lock: {e}"));
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("locking /etc/.fleet-users.lock: {e}"));
    AccountsLock(file)
}

/// Whether the host has a user of that name.
pub fn user_exists(name: &str) -> bool {
    std::process::Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap_or_else(|e| panic!("getent: {e}"))
        .status
        .success()
}

/// Runs as root; exits at once as anyone else: its migration fails at the
/// health gate, on purpose.
pub fn root_only(image: &str) -> ContainerCreateBody {
    body(
        image,
        &[
            "sh",
            "-c",
            "[ \"$(id -u)\" = 0 ] && exec sleep 3600; exit 3",
        ],
    )
}

/// Removes a test account even when its engine still runs (userdel
/// refuses an account with processes).
pub struct AccountCleanup(pub String);

impl Drop for AccountCleanup {
    fn drop(&mut self) {
        let uid = std::process::Command::new("id")
            .args(["-u", &self.0])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            });
        if let Some(uid) = uid {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-U", &uid.to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = std::fs::remove_dir_all(format!("/run/user/{uid}"));
        }
        let _ = std::process::Command::new("userdel")
            .args(["-r", &self.0])
            .output();
        let _ = std::process::Command::new("groupdel").arg(&self.0).output();
    }
}

/// Removes the users a run created (by name), even when a test fails,
/// under the agents' accounts lock (never in the middle of an agent's
/// read → decide → create).
pub struct UsersCleanup(pub Vec<String>);

impl Drop for UsersCleanup {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let _lock = lock_accounts();
        for user in &self.0 {
            let _ = std::process::Command::new("userdel").arg(user).output();
            let _ = std::process::Command::new("groupdel").arg(user).output();
        }
    }
}

/// The container records of a run document (`-o json` of migrate, runs show).
pub fn run_containers(view: &serde_json::Value) -> Vec<serde_json::Value> {
    view["containers"].as_array().cloned().unwrap_or_default()
}

/// The users a run's plan creates, by name.
pub fn users_of(view: &serde_json::Value) -> Vec<String> {
    run_containers(view)
        .iter()
        .filter_map(|c| {
            let user = &c["plan"]["action"]["target"]["user"];
            (user["kind"] == "dedicated")
                .then(|| user["name"].as_str().map(str::to_string))
                .flatten()
        })
        .collect()
}

/// Writes `text` as `dir/policy.toml`.
pub fn write_policy(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
