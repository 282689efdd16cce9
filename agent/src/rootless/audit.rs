//! Every engine on the host is audited, not only the rootful one: each
//! rootless account whose Podman API answers (reached by this agent, or
//! found at `/run/user/UID/podman/podman.sock`, started by its user
//! manager or anyone) is inspected like any engine, its containers added to
//! the host's report with their account, so a moved container is still in
//! `fleetctl audit`, as `rootless-engine (root maps to host uid N)`. An
//! engine that is not running is not started by an audit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_core::audit::HostReport;

use super::engines::AccountEngines;
use crate::engine::{Engine, EngineChoice};
use crate::inspect::{InspectOptions, Inspector};

/// `(account, socket)` of every account with a live-looking API socket.
fn discovered(passwd: &Path) -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(passwd) else {
        return Vec::new();
    };
    crate::host_accounts::parse(&text)
        .into_iter()
        .filter(|a| a.id != 0)
        .map(|a| {
            (
                a.name,
                PathBuf::from(format!("/run/user/{}/podman/podman.sock", a.id)),
            )
        })
        .filter(|(_, socket)| socket.exists())
        .collect()
}

/// Adds each account engine's containers to `report`, each named with its
/// account; an engine that does not answer is a warning.
pub async fn add_account_engines(
    report: &mut HostReport,
    inspector: &Inspector,
    accounts: &AccountEngines,
    passwd: &Path,
    options: &InspectOptions,
) {
    let mut engines: Vec<(String, Arc<Engine>)> = accounts.known().await;
    for (name, socket) in discovered(passwd) {
        if !engines.iter().any(|(known, _)| *known == name) {
            engines.push((
                name,
                Arc::new(Engine::new(EngineChoice::Podman, Some(socket))),
            ));
        }
    }
    for (account, engine) in engines {
        let rootless = inspector.for_account_engine(engine);
        match rootless.inspect(options).await {
            Ok(found) => {
                report
                    .containers
                    .extend(found.containers.into_iter().map(|mut c| {
                        c.account = Some(account.clone());
                        c
                    }));
                report.warnings.extend(
                    found
                        .warnings
                        .into_iter()
                        .map(|w| format!("{account}'s engine: {w}")),
                );
            }
            Err(e) => report
                .warnings
                .push(format!("{account}'s rootless engine does not answer: {e}")),
        }
    }
    report
        .containers
        .sort_by(|a, b| (&a.account, &a.name).cmp(&(&b.account, &b.name)));
}
