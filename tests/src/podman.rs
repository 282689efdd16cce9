//! Podman for the tests: a real `podman system service` (rootful, or
//! rootless as a throwaway user with its own subordinate ids), driven with
//! the real podman CLI. On this machine Podman needs the runc runtime and
//! ulimits below the host's hard limits (crun fails on a resource-limit call).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::TEST_LABEL;

pub const IMAGE: &str = "localhost/fleet-test-busybox:podman";

/// Flags every test container needs here.
pub const RUN_FLAGS: &[&str] = &[
    "--label",
    "fleet-test=1",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    "none",
];

pub struct PodmanService {
    child: Child,
    pub socket: PathBuf,
    /// Set for a rootless service: the user it runs as, and that user's uid.
    pub user: Option<(String, u32)>,
    runtime_dir: Option<PathBuf>,
    _dir: TempDir,
}

fn wait_for_socket(socket: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "podman service socket {} never appeared",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl PodmanService {
    pub fn rootful() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["--runtime", "runc", "system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman is installed (scripts/test.sh installs it)");
        wait_for_socket(&socket);
        let service = PodmanService {
            child,
            socket,
            user: None,
            runtime_dir: None,
            _dir: dir,
        };
        service.build_image();
        service
    }

    /// A rootless service as a new user `name` (created here, removed on drop).
    pub fn rootless(name: &str) -> Self {
        let _ = Command::new("userdel").args(["-r", name]).output();
        let created = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .output()
            .expect("useradd");
        assert!(
            created.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let uid: u32 = String::from_utf8_lossy(
            &Command::new("id")
                .args(["-u", name])
                .output()
                .expect("id")
                .stdout,
        )
        .trim()
        .parse()
        .expect("uid");
        let runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
        std::fs::create_dir_all(&runtime_dir).expect("runtime dir");
        let _ = Command::new("chown")
            .arg(format!("{uid}:{uid}"))
            .arg(&runtime_dir)
            .status();
        let _ = Command::new("chmod").arg("700").arg(&runtime_dir).status();
        let socket = runtime_dir.join("podman/podman.sock");
        let child = Command::new("runuser")
            .args(["-u", name, "--", "env"])
            .arg(format!("XDG_RUNTIME_DIR={}", runtime_dir.display()))
            .args([
                "podman",
                "--runtime",
                "runc",
                "system",
                "service",
                "--time=0",
            ])
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runuser podman");
        wait_for_socket(&socket);
        let service = PodmanService {
            child,
            socket,
            user: Some((name.to_string(), uid)),
            runtime_dir: Some(runtime_dir),
            _dir: tempfile::tempdir().expect("temp dir"),
        };
        service.build_image();
        service
    }

    /// Runs the podman CLI against this service's storage (as its user).
    pub fn podman(&self, args: &[&str]) -> Output {
        let mut command = match (&self.user, &self.runtime_dir) {
            (Some((name, _)), Some(dir)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", name, "--", "env"])
                    .arg(format!("XDG_RUNTIME_DIR={}", dir.display()))
                    .arg("podman");
                c.current_dir("/");
                c
            }
            _ => Command::new("podman"),
        };
        command.args(["--runtime", "runc"]).args(args);
        command.output().expect("podman CLI")
    }

    /// `podman run -d` with the flags this machine needs (no network
    /// unless `extra` names one); returns the id.
    pub fn run(&self, name: &str, extra: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        let networked = extra.contains(&"--network");
        args.extend(
            RUN_FLAGS
                .chunks(2)
                .filter(|flag| !(networked && flag[0] == "--network"))
                .flatten(),
        );
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        let out = self.podman(&args);
        assert!(
            out.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn build_image(&self) {
        let dir = tempfile::Builder::new()
            .prefix("fleet-podman-image")
            .tempdir_in("/tmp")
            .expect("context dir");
        tar::Archive::new(crate::engine::build_context().as_slice())
            .unpack(dir.path())
            .expect("unpack context");
        // The rootless user must be able to read the context.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status();
        let context = dir.path().display().to_string();
        let out = self.podman(&[
            "build",
            // The OCI format drops HEALTHCHECK (and other Docker-only keys).
            "--format",
            "docker",
            "--network",
            "none",
            "--label",
            "fleet-test=1",
            "-t",
            IMAGE,
            &context,
        ]);
        assert!(
            out.status.success(),
            "podman build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let filter = format!("label={TEST_LABEL}");
        let ids = self.podman(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.podman(&args);
        }
        let pods = self.podman(&["pod", "ps", "-q", "--filter", &filter]);
        for pod in String::from_utf8_lossy(&pods.stdout).split_whitespace() {
            let _ = self.podman(&["pod", "rm", "-f", pod]);
        }
        let _ = self.podman(&["rmi", "-f", IMAGE]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((name, _)) = &self.user {
            let _ = Command::new("pkill").args(["-u", name]).status();
            std::thread::sleep(Duration::from_millis(200));
            let _ = Command::new("userdel").args(["-r", name]).output();
            if let Some(dir) = &self.runtime_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
