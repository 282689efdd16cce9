//! The controller's durable state, in sled. This module is the only one
//! that knows the layout: one tree per kind of record, JSON values, and a
//! flush after every write so nothing acts on state that is not on disk.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ControllerError;
use crate::inventory::{Host, HostSource};

const HOSTS: &str = "hosts";
const AUDIT_LOG: &str = "audit_log";

#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    hosts: sled::Tree,
    log: sled::Tree,
}

/// One line of the append-only audit log: who did what, when, with what result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub unix_ms: u64,
    pub who: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, ControllerError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ControllerError::Store(format!("cannot create state dir {}: {e}", dir.display()))
        })?;
        let db = sled::open(dir.join("store.sled"))
            .map_err(|e| ControllerError::Store(format!("cannot open {}: {e}", dir.display())))?;
        Ok(Store {
            hosts: db.open_tree(HOSTS)?,
            log: db.open_tree(AUDIT_LOG)?,
            db,
        })
    }

    fn flush(&self) -> Result<(), ControllerError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ControllerError> {
        self.hosts
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    pub fn host(&self, name: &str) -> Result<Option<Host>, ControllerError> {
        self.hosts
            .get(name)?
            .map(|v| serde_json::from_slice(&v).map_err(Into::into))
            .transpose()
    }

    pub fn put_host(&self, host: &Host) -> Result<(), ControllerError> {
        self.hosts
            .insert(host.name.as_bytes(), serde_json::to_vec(host)?)?;
        self.flush()
    }

    pub fn remove_host(&self, name: &str) -> Result<Option<Host>, ControllerError> {
        let removed = self
            .hosts
            .remove(name)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?;
        self.flush()?;
        Ok(removed)
    }

    /// Makes the config-sourced hosts exactly `hosts`: adds or updates them,
    /// drops config hosts no longer listed, keeps hosts added with fleetctl
    /// unless the config now names them (the config wins, with a warning).
    pub fn sync_config_hosts(&self, hosts: &[Host]) -> Result<(), ControllerError> {
        for existing in self.hosts()? {
            let listed = hosts.iter().any(|h| h.name == existing.name);
            if existing.source == HostSource::Config && !listed {
                self.hosts.remove(existing.name.as_bytes())?;
            }
            if existing.source == HostSource::Store && listed {
                tracing::warn!(host = %existing.name, "host is defined in the config file; the config's entry replaces the one added with fleetctl");
            }
        }
        for host in hosts {
            self.hosts
                .insert(host.name.as_bytes(), serde_json::to_vec(host)?)?;
        }
        self.flush()
    }

    pub fn append_log(&self, entry: &LogEntry) -> Result<(), ControllerError> {
        let id = self.db.generate_id()?;
        self.log
            .insert(id.to_be_bytes(), serde_json::to_vec(entry)?)?;
        self.flush()
    }

    /// The newest `limit` log entries, oldest first.
    pub fn log(&self, limit: usize) -> Result<Vec<LogEntry>, ControllerError> {
        let mut entries = self
            .log
            .iter()
            .values()
            .rev()
            .take(limit)
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect::<Result<Vec<LogEntry>, ControllerError>>()?;
        entries.reverse();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn host(name: &str, source: HostSource) -> Host {
        Host {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            labels: BTreeMap::new(),
            source,
        }
    }

    #[test]
    fn hosts_survive_reopen_and_config_sync_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_host(&host("manual", HostSource::Store)).unwrap();
            store
                .sync_config_hosts(&[host("a", HostSource::Config), host("b", HostSource::Config)])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let names = |s: &Store| {
            s.hosts()
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&store), ["a", "b", "manual"]);
        store
            .sync_config_hosts(&[host("b", HostSource::Config)])
            .unwrap();
        assert_eq!(names(&store), ["b", "manual"]);
        assert!(store.remove_host("manual").unwrap().is_some());
        assert!(store.remove_host("manual").unwrap().is_none());
    }

    #[test]
    fn log_is_append_only_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..3 {
            store
                .append_log(&LogEntry {
                    unix_ms: i,
                    who: "alice".into(),
                    role: "operator".into(),
                    action: "hosts.add".into(),
                    target: format!("h{i}"),
                    result: "ok".into(),
                })
                .unwrap();
        }
        let log = store.log(2).unwrap();
        assert_eq!(log.iter().map(|e| e.unix_ms).collect::<Vec<_>>(), [1, 2]);
    }
}
