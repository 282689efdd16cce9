//! What making or removing a dedicated account can fail with.

use crate::id_record::RecordError;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "no free id left in the range {0}-{1} (ids held by an account or group, or given by fleet before, are never reused): widen user_uid_min/user_uid_max in the agent's config"
    )]
    RangeExhausted(u32, u32),
    #[error("`{command}` failed: {output}")]
    Tool { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The record of ids fleet gave (`id_record`).
    #[error(transparent)]
    Record(#[from] RecordError),
}
