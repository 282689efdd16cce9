//! The inventory's domain: hosts, their validation, and label selectors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ControllerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostSource {
    /// Added with `fleetctl hosts add`.
    Store,
    /// From the controller's TOML config (`[[hosts]]`); edited there only.
    Config,
}

impl HostSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HostSource::Store => "store",
            HostSource::Config => "config",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// host:port of the agent.
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub source: HostSource,
}

impl Host {
    pub fn validate(&self) -> Result<(), ControllerError> {
        validate_name(&self.name)?;
        fleet_core::tls::split_address(&self.address)
            .map_err(|e| ControllerError::InvalidArgument(format!("host '{}': {e}", self.name)))?;
        for key in self.labels.keys() {
            if key.is_empty() || key.contains('=') || key.contains(',') {
                return Err(ControllerError::InvalidArgument(format!(
                    "host '{}': label key '{key}' must be non-empty and contain no '=' or ','",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

pub fn validate_name(name: &str) -> Result<(), ControllerError> {
    if fleet_core::is_valid_name(name) {
        Ok(())
    } else {
        Err(ControllerError::InvalidArgument(format!(
            "invalid host name '{name}': use 1-64 letters, digits, '.', '-' or '_', not starting with '.'"
        )))
    }
}

/// `key=value`; a host matches when its label `key` equals `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub key: String,
    pub value: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, ControllerError> {
        match text.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Selector {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
            }),
            _ => Err(ControllerError::InvalidArgument(format!(
                "selector '{text}' is not key=value (for example env=prod)"
            ))),
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        host.labels.get(&self.key) == Some(&self.value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Picks hosts by name (all named must exist) and by selectors (all must
/// match). No names and no selectors means every host; a choice that
/// matches nothing is an error, never an empty success.
pub fn select(
    all: Vec<Host>,
    names: &[String],
    selectors: &[String],
) -> Result<Vec<Host>, ControllerError> {
    let selectors = selectors
        .iter()
        .map(|s| Selector::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let known = || {
        let names: Vec<&str> = all.iter().map(|h| h.name.as_str()).collect();
        if names.is_empty() {
            "none yet; add one with `fleetctl hosts add NAME ADDRESS`".to_string()
        } else {
            names.join(", ")
        }
    };
    for name in names {
        if !all.iter().any(|h| &h.name == name) {
            return Err(ControllerError::NotFound(format!(
                "unknown host '{name}' (known hosts: {})",
                known()
            )));
        }
    }
    if all.is_empty() {
        return Err(ControllerError::NotFound(
            "the inventory has no hosts; add one with `fleetctl hosts add NAME ADDRESS`".into(),
        ));
    }
    let chosen: Vec<Host> = all
        .iter()
        .filter(|h| names.is_empty() || names.contains(&h.name))
        .filter(|h| selectors.iter().all(|s| s.matches(h)))
        .cloned()
        .collect();
    if chosen.is_empty() {
        let wanted: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        return Err(ControllerError::NotFound(format!(
            "no host matches {} (known hosts: {})",
            wanted.join(" and "),
            known()
        )));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, env: &str) -> Host {
        Host {
            name: name.into(),
            address: "127.0.0.1:7443".into(),
            labels: BTreeMap::from([("env".into(), env.into())]),
            source: HostSource::Store,
        }
    }

    #[test]
    fn selects_by_name_and_label_and_refuses_empty_choices() {
        let all = vec![host("a", "prod"), host("b", "dev"), host("c", "prod")];
        let names = |hs: Vec<Host>| hs.into_iter().map(|h| h.name).collect::<Vec<_>>();
        assert_eq!(
            names(select(all.clone(), &[], &[]).unwrap()),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(select(all.clone(), &[], &["env=prod".into()]).unwrap()),
            ["a", "c"]
        );
        assert_eq!(
            names(select(all.clone(), &["b".into()], &[]).unwrap()),
            ["b"]
        );
        let err = select(all.clone(), &["zz".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown host 'zz'") && err.contains("a, b, c"),
            "{err}"
        );
        let err = select(all.clone(), &[], &["env=qa".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no host matches env=qa"), "{err}");
        let err = select(all, &[], &["envqa".into()]).unwrap_err().to_string();
        assert!(err.contains("not key=value"), "{err}");
    }

    #[test]
    fn validates_names_and_addresses() {
        assert!(host("db-1.prod", "x").validate().is_ok());
        assert!(host("bad name", "x").validate().is_err());
        let mut h = host("a", "x");
        h.address = "nowhere".into();
        assert!(h.validate().unwrap_err().to_string().contains("host:port"));
    }
}
