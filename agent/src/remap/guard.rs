//! Which host paths an ownership change may never touch, even when a
//! container has them mounted: the system's own directories, the engine's
//! socket and data root (but for the container's own named volumes), and
//! anything that contains one of those.

use std::path::{Path, PathBuf};

const SENSITIVE: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/sbin",
    "/sys",
    "/usr",
    "/var/spool",
    "/var/mail",
];

/// Directories that hold other people's trees: refused themselves (a
/// project under them is fine).
const SHARED_PARENTS: &[&str] = &[
    "/home", "/var", "/var/lib", "/srv", "/opt", "/mnt", "/media", "/tmp", "/var/tmp",
];

#[derive(Debug, Clone, Default)]
pub struct MountGuard {
    /// The engine's data root (DockerRootDir, /var/lib/containers/storage).
    pub engine_root: Option<PathBuf>,
    /// The engine's API socket.
    pub engine_socket: Option<PathBuf>,
    /// The `_data` directories of the container's own named volumes: the
    /// only places under the engine root that may change.
    pub own_volume_dirs: Vec<PathBuf>,
}

impl MountGuard {
    /// `None` when `path` (canonical) may be remapped, else why not.
    pub fn refusal(&self, path: &Path) -> Option<String> {
        if path == Path::new("/") {
            return Some("it is the host's root directory".into());
        }
        if SHARED_PARENTS.iter().any(|p| path == Path::new(p)) {
            return Some(format!(
                "{} holds other users' or services' files",
                path.display()
            ));
        }
        let mut protected: Vec<PathBuf> = SENSITIVE.iter().map(PathBuf::from).collect();
        protected.extend(self.engine_socket.iter().cloned());
        protected.extend(
            [
                "/var/run/docker.sock",
                "/run/docker.sock",
                "/run/podman/podman.sock",
            ]
            .map(PathBuf::from),
        );
        for p in &protected {
            if path.starts_with(p) {
                return Some(format!("it is a sensitive host path ({})", p.display()));
            }
        }
        for p in protected.iter().chain(self.engine_root.iter()) {
            if p.starts_with(path) {
                return Some(format!("it contains {}", p.display()));
            }
        }
        if let Some(root) = &self.engine_root
            && path.starts_with(root)
            && !self.own_volume_dirs.iter().any(|v| path.starts_with(v))
        {
            return Some(format!(
                "it is inside the engine's data root {} and is not one of the container's own volumes",
                root.display()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_system_paths_engine_internals_and_their_ancestors() {
        let guard = MountGuard {
            engine_root: Some("/var/lib/docker".into()),
            engine_socket: Some("/run/docker.sock".into()),
            own_volume_dirs: vec!["/var/lib/docker/volumes/pgdata/_data".into()],
        };
        for refused in [
            "/",
            "/etc",
            "/etc/ssl",
            "/usr/local",
            "/boot",
            "/dev",
            "/proc",
            "/sys",
            "/lib64",
            "/run/docker.sock",
            "/var",
            "/run",
            "/var/lib/docker",
            "/var/lib/docker/volumes/other/_data",
            "/var/lib/docker/overlay2/x",
        ] {
            assert!(
                guard.refusal(Path::new(refused)).is_some(),
                "{refused} must be refused"
            );
        }
        for allowed in [
            "/srv/app/data",
            "/var/lib/docker/volumes/pgdata/_data",
            "/home/u/data",
            "/opt/x",
        ] {
            assert_eq!(guard.refusal(Path::new(allowed)), None, "{allowed}");
        }
    }
}
