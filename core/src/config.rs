//! Layered configuration: defaults < TOML file < environment < flags.
//! Each binary declares its file schema (every field optional, unknown keys
//! refused) and merges it with its clap arguments (which carry the env).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Reads a TOML file into `T`. The error names the file, the line and the
/// column, and what is wrong there.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let location = e
            .span()
            .map(|span| {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        ConfigError::Malformed {
            path: path.to_path_buf(),
            message: format!("{location}{}", e.message()),
        }
    })
}

/// The listen address: flag, else file, else `default`.
pub fn listen_address(
    flag: Option<String>,
    file: Option<String>,
    default: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    let text = flag.or(file).unwrap_or_else(|| default.to_string());
    text.parse()
        .map_err(|e| ConfigError::Invalid(format!("listen address '{text}' is not ip:port: {e}")))
}

/// One path setting that has no default: flag (or env), else file, else an
/// error saying the three ways to give it.
pub fn required_path(
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    name: &str,
    env_prefix: &str,
) -> Result<PathBuf, ConfigError> {
    flag.or(file).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "no {name} given: pass --{name}, set {env_prefix}_{}, or put `{name} = \"...\"` in the config file",
            name.to_uppercase()
        ))
    })
}

/// The CA, certificate and key, each from flag (or env) or file.
pub fn tls_files(
    flags: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    file: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    env_prefix: &str,
) -> Result<crate::tls::TlsFiles, ConfigError> {
    Ok(crate::tls::TlsFiles {
        ca: required_path(flags.0, file.0, "ca", env_prefix)?,
        cert: required_path(flags.1, file.1, "cert", env_prefix)?,
        key: required_path(flags.2, file.2, "key", env_prefix)?,
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        listen: Option<String>,
        port: Option<u16>,
    }

    #[test]
    fn malformed_file_names_file_line_and_problem() {
        let err = parse_toml::<Sample>(
            Path::new("/etc/x.toml"),
            "listen = \"a\"\nport = \"not a number\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/x.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse_toml::<Sample>(Path::new("/etc/x.toml"), "lisen = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("lisen"), "{err}");
    }
}
