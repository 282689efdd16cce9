//! The ownership step: every chosen mount of the container walked and its
//! root ids remapped to the target's, each change recorded in the mount's
//! manifest before it is made. For a rootless move the mapping is made
//! here, from every id the mounts use, carried into the account's
//! namespace. A walk found in flight after a crash resumes
//! from its manifest; a failure puts back every mount touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::mounts::{OwnedMount, mounts_of};
use super::spec::{Carry, OwnershipSpec};
use super::step::{Step, StepContext, StepError, StepProgress, to_value};
use crate::remap::{self, IdMapping, RemapOptions, RemapReport};
use crate::users;
use fleet_core::userns::{self, IdKind, Mapping};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnershipIntent {
    pub container: String,
    pub mapping: IdMapping,
    pub skip_if_root_matches: Option<(u32, u32)>,
    pub allow_protected_hardlinks: bool,
    pub mounts: Vec<OwnedMount>,
    pub refusals: Vec<String>,
}

/// The outcome of an ownership step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnershipOutcome {
    pub mounts: Vec<(OwnedMount, RemapReport)>,
    /// Mounts refused (sensitive host paths), with why.
    pub refusals: Vec<String>,
}

pub struct OwnershipStep;

impl Step for OwnershipStep {
    type Spec = OwnershipSpec;
    type Intent = OwnershipIntent;
    type Outcome = OwnershipOutcome;

    /// The manifests say what the walk did already.
    const RESUMES: bool = true;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &OwnershipSpec,
    ) -> Result<OwnershipIntent, StepError> {
        let doc = cx.scoped(&spec.container).await?;
        let (owned, refusals) =
            mounts_of(cx.conn, &doc, &spec.mounts, &cx.journal.dir().join(cx.step));
        let carried;
        let mapping = match &spec.carry {
            None => &spec.mapping,
            Some(carry) => {
                carried = carried_mapping(cx, carry, &owned).await?;
                &carried
            }
        };
        mapping.validate()?;
        let target = mapping.everything.or_else(|| {
            let uid = mapping.uids.values().next().copied()?;
            let gid = mapping.gids.values().next().copied().unwrap_or(uid);
            Some((uid, gid))
        });
        Ok(OwnershipIntent {
            container: doc["Id"].as_str().unwrap_or_default().to_string(),
            mapping: mapping.clone(),
            skip_if_root_matches: if spec.skip_if_root_matches && spec.carry.is_none() {
                target
            } else {
                None
            },
            allow_protected_hardlinks: spec.allow_protected_hardlinks,
            mounts: owned,
            refusals,
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: OwnershipIntent,
    ) -> Result<OwnershipOutcome, StepError> {
        let mut done: Vec<(OwnedMount, RemapReport)> = Vec::new();
        for mount in &intent.mounts {
            match remap_mount(cx, &intent, mount).await? {
                Ok(report) => done.push((mount.clone(), report)),
                Err(e) => {
                    // Leave nothing half-changed: undo every mount touched.
                    if let Err(undo) = undo_mounts(&intent.mounts).await {
                        tracing::error!(error = %undo, "undoing a failed ownership change failed too");
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(OwnershipOutcome {
            mounts: done,
            refusals: intent.refusals,
        })
    }

    async fn undo(
        &self,
        _cx: &StepContext<'_>,
        intent: OwnershipIntent,
        _outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        undo_mounts(&intent.mounts).await
    }
}

/// Every id the mounts use, carried from the rootful engine's identity
/// mapping to the account's namespace; an id the account's range cannot
/// hold refuses the step, naming a path that uses it.
async fn carried_mapping(
    cx: &StepContext<'_>,
    carry: &Carry,
    owned: &[OwnedMount],
) -> Result<IdMapping, StepError> {
    if cx.conn.root_host_uid.is_some() {
        return Err(StepError::Invalid(
            "the container's engine remaps user namespaces itself (rootless or userns-remap): a rootless move starts from a rootful engine".into(),
        ));
    }
    let account = users::rootless_account(&carry.account, cx.users)?;
    let roots: Vec<PathBuf> = owned.iter().map(|m| PathBuf::from(&m.root)).collect();
    let census = tokio::task::spawn_blocking(move || {
        let mut all = remap::IdCensus::default();
        for root in roots {
            all.merge(remap::census(&root)?);
        }
        Ok::<_, remap::RemapError>(all)
    })
    .await
    .map_err(StepError::task)??;
    let target = Mapping::Rootless {
        account: account.ids,
        userns: carry.userns,
    };
    let mut mapping = IdMapping::default();
    let mut unmappable = Vec::new();
    for (kind, ids, into, inside) in [
        (
            IdKind::Uid,
            &census.uids,
            &mut mapping.uids,
            carry.inside.map(|i| i.0),
        ),
        (
            IdKind::Gid,
            &census.gids,
            &mut mapping.gids,
            carry.inside.map(|i| i.1),
        ),
    ] {
        for (id, path) in ids {
            // Root's data becomes the new user's, as in place; then carried.
            let moved = match inside {
                Some(user) if *id == 0 => user,
                _ => *id,
            };
            match userns::carry(&Mapping::Identity, &target, kind, moved) {
                Ok(new) => {
                    into.insert(*id, new);
                }
                Err(why) => unmappable.push(format!("{path}: {why}")),
            }
        }
    }
    if !unmappable.is_empty() {
        return Err(StepError::Invalid(format!(
            "{} cannot hold every id of the data: {}",
            carry.account,
            unmappable.join("; ")
        )));
    }
    Ok(mapping)
}

/// Walks one mount on a blocking thread, streaming its progress. The outer
/// error is the task's, the inner the walk's (which the caller puts back).
async fn remap_mount(
    cx: &StepContext<'_>,
    intent: &OwnershipIntent,
    mount: &OwnedMount,
) -> Result<Result<RemapReport, remap::RemapError>, StepError> {
    let options = RemapOptions {
        mapping: intent.mapping.clone(),
        allow_protected_hardlinks: intent.allow_protected_hardlinks,
        skip_if_root_owned_by: intent.skip_if_root_matches,
        batch: 8192,
        threads: 0,
        expect_root: mount.identity,
    };
    let mount = mount.clone();
    let tx = cx.progress.clone();
    let step = cx.step.to_string();
    tokio::task::spawn_blocking(move || {
        let report = |p: &remap::Progress| {
            if let Some(tx) = &tx {
                let _ = tx.try_send(StepProgress {
                    step: step.clone(),
                    phase: format!("ownership {}", mount.destination),
                    progress: *p,
                });
            }
        };
        remap::remap(
            Path::new(&mount.root),
            Path::new(&mount.manifest),
            &options,
            &report,
        )
    })
    .await
    .map_err(StepError::task)
}

/// Puts back every mount that has a manifest, the last one first.
async fn undo_mounts(mounts: &[OwnedMount]) -> Result<Value, StepError> {
    let mut reports = Vec::new();
    for mount in mounts.iter().rev() {
        let manifest = PathBuf::from(&mount.manifest);
        if !manifest.exists() {
            continue;
        }
        let root = PathBuf::from(&mount.root);
        let report = tokio::task::spawn_blocking(move || remap::undo(&root, &manifest))
            .await
            .map_err(StepError::task)??;
        reports.push(report);
    }
    Ok(to_value(&reports))
}
