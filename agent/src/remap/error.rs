//! Why a remap or its undo failed, or refused before anything changed.

use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error("{0}")]
    InvalidMapping(String),
    #[error("cannot open {root}: {errno}")]
    Open { root: String, errno: Errno },
    #[error("{root} is on a read-only filesystem: nothing was changed")]
    ReadOnly { root: String },
    #[error(
        "root may not change ownership under {root} ({errno}): an NFS export with root_squash, or a filesystem that refuses chown; nothing was changed"
    )]
    NotPermitted { root: String, errno: Errno },
    #[error("{what} under {root}: {errno}")]
    Io {
        what: String,
        root: String,
        errno: Errno,
    },
    #[error("ownership manifest {path}: {source}")]
    Manifest {
        path: String,
        source: std::io::Error,
    },
    #[error("the manifest {path} belongs to another tree or mapping; refusing to mix them")]
    ManifestMismatch { path: String },
    #[error(
        "{root} has a symbolic link in its path: fleet never follows one (a container could have planted it); point the mount at the real directory"
    )]
    SymlinkInPath { root: String },
    #[error("{root} is a device node: its ownership is never changed")]
    DeviceRoot { root: String },
    #[error(
        "{root} is no longer the directory the step was decided on (it was replaced); nothing was changed"
    )]
    RootReplaced { root: String },
    #[error(
        "{count} entries under {root} kept changing while they were walked (a racing container?): {first}"
    )]
    KeptRacing {
        root: String,
        count: usize,
        first: String,
    },
}
