//! The controller's durable state, in sled. This module is the only one
//! that knows the layout: one tree per kind of record, JSON values, and a
//! flush after every write so nothing acts on state that is not on disk.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ControllerError;
use crate::inventory::{Host, HostSource};
use crate::run::model::{ContainerRun, Run, RunEvent};

/// The store's failures are the controller's; sled is named only here.
impl From<sled::Error> for ControllerError {
    fn from(e: sled::Error) -> Self {
        ControllerError::Store(e.to_string())
    }
}

/// `run \0 rest`: a run's records sort together and never mix with another
/// run whose id shares a prefix.
fn run_key(run: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(run.len() + 1 + rest.len());
    key.extend_from_slice(run.as_bytes());
    key.push(0);
    key.extend_from_slice(rest);
    key
}

const HOSTS: &str = "hosts";
const AUDIT_LOG: &str = "audit_log";
const RUNS: &str = "runs";
const RUN_CONTAINERS: &str = "run_containers";
const RUN_EVENTS: &str = "run_events";

#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    hosts: sled::Tree,
    log: sled::Tree,
    runs: sled::Tree,
    run_containers: sled::Tree,
    run_events: sled::Tree,
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

impl LogEntry {
    /// An entry stamped now.
    pub fn new(who: &str, role: &str, action: &str, target: &str, result: &str) -> Self {
        LogEntry {
            unix_ms: fleet_core::now_ms(),
            who: who.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            result: result.into(),
        }
    }
}

impl Store {
    /// Logs a change the caller asked for ("ok" or "refused: why") and
    /// passes its result through. A failing log write is traced, never
    /// turned into a failure of the change itself.
    pub fn logged<T>(
        &self,
        who: &fleet_core::auth::Caller,
        action: &str,
        target: &str,
        result: Result<T, ControllerError>,
    ) -> Result<T, ControllerError> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        let entry = LogEntry::new(&who.name, &who.role.to_string(), action, target, &outcome);
        if let Err(e) = self.append_log(&entry) {
            tracing::error!(error = %e, ?entry, "cannot append to the audit log");
        }
        result
    }

    pub fn open(dir: &Path) -> Result<Self, ControllerError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ControllerError::Store(format!("cannot create state dir {}: {e}", dir.display()))
        })?;
        let db = sled::open(dir.join("store.sled"))
            .map_err(|e| ControllerError::Store(format!("cannot open {}: {e}", dir.display())))?;
        Ok(Store {
            hosts: db.open_tree(HOSTS)?,
            log: db.open_tree(AUDIT_LOG)?,
            runs: db.open_tree(RUNS)?,
            run_containers: db.open_tree(RUN_CONTAINERS)?,
            run_events: db.open_tree(RUN_EVENTS)?,
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

/// Runs: a header per run, a record per container, an event log per run.
/// Every write is flushed before the caller acts on it.
impl Store {
    pub fn put_run(&self, run: &Run) -> Result<(), ControllerError> {
        self.runs
            .insert(run.id.as_bytes(), serde_json::to_vec(run)?)?;
        self.flush()
    }

    pub fn run(&self, id: &str) -> Result<Option<Run>, ControllerError> {
        self.runs
            .get(id.as_bytes())?
            .map(|v| Ok(serde_json::from_slice(&v)?))
            .transpose()
    }

    pub fn runs(&self) -> Result<Vec<Run>, ControllerError> {
        self.runs
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Writes a container's record and, in the same flush, an event.
    pub fn put_container(
        &self,
        run: &str,
        container: &ContainerRun,
        event: Option<&RunEvent>,
    ) -> Result<(), ControllerError> {
        self.run_containers.insert(
            run_key(run, container.key.as_bytes()),
            serde_json::to_vec(container)?,
        )?;
        if let Some(event) = event {
            self.insert_event(run, event)?;
        }
        self.flush()
    }

    pub fn containers(&self, run: &str) -> Result<Vec<ContainerRun>, ControllerError> {
        self.run_containers
            .scan_prefix(run_key(run, b""))
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    fn insert_event(&self, run: &str, event: &RunEvent) -> Result<(), ControllerError> {
        self.run_events.insert(
            run_key(run, &event.seq.to_be_bytes()),
            serde_json::to_vec(event)?,
        )?;
        Ok(())
    }

    pub fn append_event(&self, run: &str, event: &RunEvent) -> Result<(), ControllerError> {
        self.insert_event(run, event)?;
        self.flush()
    }

    /// The run's events with `seq > after`, in order.
    pub fn events(&self, run: &str, after: u64) -> Result<Vec<RunEvent>, ControllerError> {
        self.run_events
            .range(run_key(run, &(after + 1).to_be_bytes())..run_key(run, &[0xff; 9]))
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    pub fn last_event_seq(&self, run: &str) -> Result<u64, ControllerError> {
        Ok(self
            .run_events
            .scan_prefix(run_key(run, b""))
            .keys()
            .next_back()
            .transpose()?
            .and_then(|k| {
                k.get(k.len().saturating_sub(8)..).map(|b| {
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(b);
                    u64::from_be_bytes(seq)
                })
            })
            .unwrap_or(0))
    }

    /// Bytes a run occupies in the store (header, containers, events).
    pub fn run_size(&self, run: &str) -> Result<u64, ControllerError> {
        let mut bytes = self.runs.get(run.as_bytes())?.map_or(0, |v| v.len() as u64);
        for tree in [&self.run_containers, &self.run_events] {
            for kv in tree.scan_prefix(run_key(run, b"")) {
                let (k, v) = kv?;
                bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(bytes)
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
