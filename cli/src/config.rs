//! Where the controller is and which certificate to use: flags > env >
//! `~/.config/fleetctl/config.toml`.

use std::path::PathBuf;

use fleet_core::config::load_toml;
use fleet_core::tls::TlsFiles;
use serde::Deserialize;

use crate::args::ConnectFlags;
use crate::exit::CliError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    controller: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub controller: String,
    pub tls: TlsFiles,
}

pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fleetctl").join("config.toml"))
}

pub fn resolve(flags: &ConnectFlags) -> Result<Connection, CliError> {
    let file: ConfigFile = match (&flags.config, default_config_path()) {
        (Some(path), _) => load_toml(path).map_err(|e| CliError::usage(e.to_string()))?,
        (None, Some(path)) if path.exists() => {
            load_toml(&path).map_err(|e| CliError::usage(e.to_string()))?
        }
        _ => ConfigFile::default(),
    };
    let where_from = |what: &str, env: &str| {
        format!(
            "no {what} given: pass --{what}, set {env}, or write `{what} = \"...\"` in {}",
            default_config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.config/fleetctl/config.toml".into())
        )
    };
    let controller = flags
        .controller
        .clone()
        .or(file.controller)
        .ok_or_else(|| CliError::usage(where_from("controller", "FLEETCTL_CONTROLLER")))?;
    let path = |flag: &Option<PathBuf>, file: Option<PathBuf>, what: &str, env: &str| {
        flag.clone()
            .or(file)
            .ok_or_else(|| CliError::usage(where_from(what, env)))
    };
    Ok(Connection {
        controller,
        tls: TlsFiles {
            ca: path(&flags.ca, file.ca, "ca", "FLEETCTL_CA")?,
            cert: path(&flags.cert, file.cert, "cert", "FLEETCTL_CERT")?,
            key: path(&flags.key, file.key, "key", "FLEETCTL_KEY")?,
        },
    })
}
