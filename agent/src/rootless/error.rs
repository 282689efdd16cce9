//! What moving a container under a rootless account can fail with.

use crate::container::ContainerError;
use crate::engine::EngineError;
use crate::users::UserError;

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(transparent)]
    Account(#[from] UserError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("`{command}` failed: {output}")]
    Tool { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{account}'s Podman API did not come up at {socket} within {secs}s: {detail}")]
    NoApi {
        account: String,
        socket: String,
        secs: u64,
        detail: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

impl RootlessError {
    pub(super) fn tool(program: &str, args: &[String], output: &str) -> Self {
        RootlessError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: output.to_string(),
        }
    }

    pub(super) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| RootlessError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
