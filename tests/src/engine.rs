//! The real engine, as tests use it: a locally built busybox image (there is
//! no registry), and a `Scope` that removes what a test created even when
//! the test panics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, RemoveContainerOptions,
};
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::TEST_LABEL;

/// The engine socket the tests use (Docker unless told otherwise).
pub fn engine_socket() -> PathBuf {
    std::env::var_os("FLEET_TEST_ENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

pub async fn docker() -> Docker {
    let socket = engine_socket();
    Docker::connect_with_unix(
        &socket.display().to_string(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("engine client")
    .negotiate_version()
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the container engine at {} does not answer: {e}",
            socket.display()
        )
    })
}

/// The users of the test image's /etc/passwd.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
toor:x:0:0:second root:/root:/bin/sh
svc:x:999:999:service:/home/svc:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";
pub const GROUP: &str = "root:x:0:
svc:x:999:
app:x:1000:
staff:x:50:app
nogroup:x:65534:
";

const APPLETS: &[&str] = &[
    "sh", "sleep", "su", "id", "cat", "ls", "echo", "touch", "mkdir", "chown", "chmod", "ln", "rm",
    "mv", "nc", "httpd", "wget", "true", "false", "kill", "ps", "stat", "test", "[",
];

fn busybox() -> Vec<u8> {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
    }
    panic!(
        "no static busybox on this machine: install Debian's busybox-static (scripts/test.sh does)"
    );
}

/// The build context of the test image: busybox and a passwd with named
/// users, FROM scratch.
pub fn build_context() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append_data(&mut header, path, data).expect("tar");
    };
    add(
        "Dockerfile",
        0o644,
        b"FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sleep\", \"3600\"]\n",
    );
    add("rootfs/bin/busybox", 0o755, &busybox());
    add("rootfs/etc/passwd", 0o644, PASSWD.as_bytes());
    add("rootfs/etc/group", 0o644, GROUP.as_bytes());
    add("rootfs/etc/shells", 0o644, b"/bin/sh\n");
    add("rootfs/tmp/.keep", 0o644, b"");
    add("rootfs/home/app/.keep", 0o644, b"");
    // A runtime directory the image ships, root's: an entrypoint may give
    // it to its user (the plan's "modified runtime directory").
    add("rootfs/var/cache/app/.keep", 0o644, b"");
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_cksum();
        builder
            .append_link(&mut header, format!("rootfs/bin/{applet}"), "busybox")
            .expect("tar link");
    }
    builder.into_inner().expect("tar")
}

static IMAGE: OnceCell<String> = OnceCell::const_new();

/// Builds the test image once per process (a content-addressed tag, so
/// concurrent test processes agree) and returns its tag.
pub async fn test_image(docker: &Docker) -> String {
    IMAGE
        .get_or_init(|| async {
            let context = build_context();
            let digest = context.iter().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
            });
            let tag = format!("fleet-test/busybox:{digest:016x}");
            if docker.inspect_image(&tag).await.is_ok() {
                return tag;
            }
            let options = BuildImageOptions {
                t: Some(tag.clone()),
                rm: true,
                forcerm: true,
                labels: Some(HashMap::from([(TEST_LABEL.to_string(), "1".to_string())])),
                ..Default::default()
            };
            let mut build =
                docker.build_image(options, None, Some(bollard::body_full(context.into())));
            while let Some(step) = build.next().await {
                let step = step.unwrap_or_else(|e| panic!("building the test image failed: {e}"));
                if let Some(error) = step.error_detail.and_then(|d| d.message) {
                    panic!("building the test image failed: {error}");
                }
            }
            tag
        })
        .await
        .clone()
}

/// Containers (and volumes, and host paths) a test created; all removed on
/// drop, even when the test panics.
pub struct Scope {
    docker: Docker,
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
}

impl Scope {
    pub fn new(docker: &Docker) -> Self {
        Scope {
            docker: docker.clone(),
            containers: Mutex::new(Vec::new()),
            volumes: Mutex::new(Vec::new()),
            networks: Mutex::new(Vec::new()),
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates a container named `name` with the test label; returns its id.
    pub async fn create(&self, name: &str, mut body: ContainerCreateBody) -> String {
        body.labels
            .get_or_insert_with(HashMap::new)
            .insert(TEST_LABEL.to_string(), "1".to_string());
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("creating container {name}: {e}"));
        self.containers
            .lock()
            .expect("lock")
            .push(created.id.clone());
        created.id
    }

    /// Creates and starts.
    pub async fn run(&self, name: &str, body: ContainerCreateBody) -> String {
        let id = self.create(name, body).await;
        self.docker
            .start_container(&id, None)
            .await
            .unwrap_or_else(|e| panic!("starting container {name}: {e}"));
        id
    }

    pub fn track_volume(&self, name: &str) {
        self.volumes.lock().expect("lock").push(name.to_string());
    }

    pub fn track_network(&self, name: &str) {
        self.networks.lock().expect("lock").push(name.to_string());
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let containers =
            std::mem::take(&mut *self.containers.lock().unwrap_or_else(|p| p.into_inner()));
        let volumes = std::mem::take(&mut *self.volumes.lock().unwrap_or_else(|p| p.into_inner()));
        let networks =
            std::mem::take(&mut *self.networks.lock().unwrap_or_else(|p| p.into_inner()));
        let docker = self.docker.clone();
        // Drop cannot await; do the removals on a runtime of their own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                for id in containers {
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(RemoveContainerOptions {
                                force: true,
                                v: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
                for volume in volumes {
                    let _ = docker
                        .remove_volume(
                            &volume,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
                for network in networks {
                    let _ = docker.remove_network(&network).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A container body running `cmd` in the test image.
pub fn body(image: &str, cmd: &[&str]) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}
