//! The faithful recreate: the old container is stopped, renamed to a
//! checkpoint name, its restart policy set to `no` and its static addresses
//! released; a new one is created from the old inspect document with the
//! same image ID and every configuration field, only `User` changed, and
//! started. Nothing is removed: the old container is the way back.
//! (FIELD-NOTES §6 is the checklist; watchtower's tracker is the reason.)

use fleet_core::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod body;
mod layer;
mod podman;

pub use body::create_body;
pub use layer::{Foreseen, foresee, has_healthcheck};

use crate::container::{Api, ContainerError, str_at, strings_at};
use crate::mount_roots::{self, MountRoot, MountRootReset};
use crate::runtime_dirs::{self, RuntimeDirGrant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecreateRequest {
    pub container: String,
    /// The new `User`, always numeric.
    pub uid: u32,
    pub gid: u32,
    pub run: String,
    /// Recreate even when the writable layer holds changes that would be lost.
    #[serde(default)]
    pub allow_layer_loss: bool,
    /// Containers sharing this one's namespaces or volumes that the same run
    /// moves too, recreated after it: they do not block this recreate.
    #[serde(default)]
    pub together: Vec<String>,
}

/// Everything decided before acting, written to the journal before any
/// change, so an interrupted recreate can be undone from the real state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecreatePlan {
    pub old_id: String,
    pub name: String,
    pub checkpoint_name: String,
    pub was_running: bool,
    pub stop_timeout: Option<i64>,
    pub restart_policy: Value,
    /// The engine cannot change a restart policy after create (Podman
    /// before 5.1): the checkpoint keeps its own, and is kept from
    /// restarting by having been stopped (Podman restarts no container its
    /// user stopped; the plan refuses where a boot service would).
    #[serde(default)]
    pub checkpoint_keeps_restart_policy: bool,
    /// Where the systemd drop-in that keeps the engine's boot-time restart
    /// off the checkpoint is written, when its policy needs one
    /// (`flavour::BootGuard`).
    #[serde(default)]
    pub checkpoint_boot_guard: Option<std::path::PathBuf>,
    /// Networks where the old container holds a static address: released
    /// before the new one is created, given back on undo.
    pub static_networks: Vec<(String, Value)>,
    pub create_body: Value,
    /// Networks to connect after create (engines below API 1.44 take one
    /// network at create time).
    pub extra_networks: Vec<(String, Value)>,
    /// Runtime directories given to the target ids in the new container
    /// before it starts (`runtime_dirs`).
    #[serde(default)]
    pub runtime_dirs: Vec<RuntimeDirGrant>,
    /// Mount roots as the ownership step left them: the engine may reset
    /// one when it populates an empty volume at create (`mount_roots`).
    #[serde(default)]
    pub mount_roots: Vec<MountRoot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecreateOutcome {
    pub plan: RecreatePlan,
    pub new_id: String,
    pub stopped_at_ms: u64,
    /// When the old container had exited, if this step stopped it.
    #[serde(default)]
    pub exited_at_ms: Option<u64>,
    pub started_at_ms: u64,
    /// Mount roots the engine reset at create and the recreate re-owned.
    #[serde(default)]
    pub mount_roots_reowned: Vec<MountRootReset>,
}

/// Why a recreate cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum RecreateError {
    /// The request itself is refused, whatever the container (a root
    /// target): the caller's to fix.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

/// A recreate never sets uid 0 or gid 0, whoever asks (the controller
/// checks this too): gid 0 alone hands the container root's group, its
/// files, devices and sockets.
pub fn refuse_root_target(request: &RecreateRequest) -> Result<(), RecreateError> {
    if request.uid == 0 || request.gid == 0 {
        return Err(RecreateError::InvalidRequest(format!(
            "a recreate never sets uid 0 or gid 0 (asked for {}:{}): the point is to leave root; give the container a non-root uid and gid",
            request.uid, request.gid
        )));
    }
    Ok(())
}

/// Decides the recreate, refusing what cannot be done faithfully.
pub async fn plan(api: &Api<'_>, request: &RecreateRequest) -> Result<RecreatePlan, RecreateError> {
    refuse_root_target(request)?;
    let mut old = api.inspect(&request.container).await?;
    repoint_to_successors(api, &mut old, &request.run).await?;
    if api.connected().facts.kind == fleet_core::audit::EngineKind::Podman {
        podman::adapt_podman_inspect(api, &mut old).await?;
    }
    let old_id = str_at(&old, "/Id").to_string();
    let name = str_at(&old, "/Name").trim_start_matches('/').to_string();
    let mut refusals = Vec::new();
    if old
        .pointer("/HostConfig/AutoRemove")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        refusals.push(format!(
            "{name} has AutoRemove: it vanishes when stopped, and with it the only way back"
        ));
    }
    refusals.extend(sharers(api, &old_id, &name, &request.together).await?);
    let mounts = layer::mount_destinations(&old);
    let flavour = api.connected().flavour;
    if !request.allow_layer_loss {
        let lost = layer::lost_content(api, &old_id, &mounts).await;
        if !lost.is_empty() {
            refusals.push(format!(
                "{name}: {}",
                fleet_core::migration::layer_loss_refusal(&lost)
            ));
        }
    }
    let restart_policy = old
        .pointer("/HostConfig/RestartPolicy")
        .cloned()
        .unwrap_or(json!({"Name": "no"}));
    if !refusals.is_empty() {
        return Err(ContainerError::Refused(refusals).into());
    }
    let user = format!("{}:{}", request.uid, request.gid);
    // The image the old container ran, by ID; its tag only if the tag
    // still names that very image (a moved tag would change the software).
    let image_id = str_at(&old, "/Image").to_string();
    let tag = str_at(&old, "/Config/Image").to_string();
    let image = match api.image_id(&tag).await {
        Ok(id) if id == image_id => tag,
        _ => image_id.clone(),
    };
    let (create_body, extra_networks, static_networks) =
        body::create_body(&old, &user, &image, api);
    let runtime_dirs = match runtime_dirs::find(api, &old_id, &image_id, &mounts).await {
        Ok(dirs) => runtime_dirs::grants(&dirs, request.uid, request.gid),
        // Without them the service may fail to start: verify catches that
        // and the recreate is undone; the step still says why.
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "runtime directories could not be read");
            Vec::new()
        }
    };
    Ok(RecreatePlan {
        runtime_dirs,
        mount_roots: mount_roots::owned_by(&old, request.uid, request.gid),
        checkpoint_name: format!("{name}.fleet-pre-{}", request.run),
        was_running: old.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true),
        stop_timeout: old.pointer("/Config/StopTimeout").and_then(|v| v.as_i64()),
        checkpoint_keeps_restart_policy: !flavour.updates_restart_policy(),
        checkpoint_boot_guard: flavour
            .checkpoint_boot_guard(str_at(&restart_policy, "/Name"))
            .map(|guard| guard.path),
        restart_policy,
        static_networks,
        create_body,
        extra_networks,
        old_id,
        name,
    })
}

/// Containers that share this one's namespaces or volumes break if it is
/// recreated: a refusal for each, unless the run moves it `together`.
async fn sharers(
    api: &Api<'_>,
    old_id: &str,
    name: &str,
    together: &[String],
) -> Result<Vec<String>, ContainerError> {
    let mut refusals = Vec::new();
    for other in api.list().await? {
        let other_id = str_at(&other, "/Id");
        if other_id == old_id {
            continue;
        }
        let Ok(doc) = api.inspect(other_id).await else {
            continue;
        };
        let other_name = str_at(&doc, "/Name").trim_start_matches('/');
        if together.iter().any(|t| t == other_name) {
            continue;
        }
        let points_here = |mode: &str| {
            mode.strip_prefix("container:")
                .is_some_and(|target| target == name || old_id.starts_with(target))
        };
        for field in ["NetworkMode", "IpcMode", "PidMode"] {
            if points_here(str_at(&doc, &format!("/HostConfig/{field}"))) {
                refusals.push(format!(
                    "{other_name} uses {name} through {field}=container:; migrate them together"
                ));
            }
        }
        let volumes_from = doc
            .pointer("/HostConfig/VolumesFrom")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for source in volumes_from.iter().filter_map(|v| v.as_str()) {
            let source = source.split(':').next().unwrap_or_default();
            if source == name || (!source.is_empty() && old_id.starts_with(source)) {
                refusals.push(format!(
                    "{other_name} mounts the volumes of {name} (VolumesFrom); migrate them together"
                ));
            }
        }
    }
    Ok(refusals)
}

/// A partner this run recreated already is now a checkpoint
/// (`NAME.fleet-pre-RUN`, stopped) and its successor holds `NAME`: point
/// the `container:` modes and `VolumesFrom` at the successor. The engine
/// stores a `container:` mode as the partner's id, so this cannot be left
/// to name resolution.
async fn repoint_to_successors(
    api: &Api<'_>,
    doc: &mut Value,
    run: &str,
) -> Result<(), ContainerError> {
    let suffix = format!(".fleet-pre-{run}");
    let successor = |name: &str| name.strip_suffix(&suffix).map(str::to_string);
    for field in ["NetworkMode", "IpcMode", "PidMode"] {
        let pointer = format!("/HostConfig/{field}");
        let Some(target) = str_at(doc, &pointer).strip_prefix("container:") else {
            continue;
        };
        let partner = match api.inspect(target).await {
            Ok(partner) => partner,
            Err(ContainerError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if let Some(name) = successor(str_at(&partner, "/Name").trim_start_matches('/'))
            && let Some(slot) = doc.pointer_mut(&pointer)
        {
            *slot = json!(format!("container:{name}"));
        }
    }
    let sources = strings_at(doc, "/HostConfig/VolumesFrom");
    let mut repointed = Vec::with_capacity(sources.len());
    for entry in sources {
        let (source, mode) = entry.split_once(':').unwrap_or((&entry, ""));
        let name = match api.inspect(source).await {
            Ok(partner) => successor(str_at(&partner, "/Name").trim_start_matches('/')),
            Err(ContainerError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        repointed.push(match (name, mode) {
            (Some(name), "") => json!(name),
            (Some(name), mode) => json!(format!("{name}:{mode}")),
            (None, _) => json!(entry),
        });
    }
    if let Some(slot) = doc.pointer_mut("/HostConfig/VolumesFrom")
        && slot.is_array()
    {
        *slot = Value::Array(repointed);
    }
    Ok(())
}

/// Carries out a plan. On any failure the steps taken are undone before
/// the error is returned.
pub async fn execute(
    api: &Api<'_>,
    plan: &RecreatePlan,
) -> Result<RecreateOutcome, ContainerError> {
    let stopped_at_ms = now_ms();
    let mut exited_at_ms = None;
    let mut created: Option<String> = None;
    let result = async {
        if plan.was_running {
            api.stop(&plan.old_id, plan.stop_timeout).await?;
            exited_at_ms = Some(now_ms());
        }
        if plan.checkpoint_boot_guard.is_some()
            && let Some(guard) = api
                .connected()
                .flavour
                .checkpoint_boot_guard(str_at(&plan.restart_policy, "/Name"))
        {
            // Before the name that the guard skips is given.
            guard.install().map_err(|e| {
                ContainerError::Verify(format!(
                    "cannot write {} (it keeps the checkpoint from starting at boot): {e}",
                    guard.path.display()
                ))
            })?;
        }
        api.rename(&plan.old_id, &plan.checkpoint_name).await?;
        if !plan.checkpoint_keeps_restart_policy {
            api.set_restart_policy(&plan.old_id, &json!({"Name": "no"}))
                .await?;
        }
        for (net, _) in &plan.static_networks {
            api.disconnect(net, &plan.old_id).await?;
        }
        let new_id = api.create(&plan.name, &plan.create_body).await?;
        created = Some(new_id.clone());
        for (net, endpoint) in &plan.extra_networks {
            api.connect(net, &new_id, endpoint).await?;
        }
        runtime_dirs::give(api, &new_id, &plan.runtime_dirs).await?;
        let roots = plan.mount_roots.clone();
        let reowned = tokio::task::spawn_blocking(move || mount_roots::restore(&roots))
            .await
            .map_err(|e| ContainerError::Verify(e.to_string()))??;
        api.start(&new_id).await?;
        Ok::<_, ContainerError>((new_id, reowned))
    }
    .await;
    match result {
        Ok((new_id, mount_roots_reowned)) => Ok(RecreateOutcome {
            plan: plan.clone(),
            new_id,
            stopped_at_ms,
            exited_at_ms,
            started_at_ms: now_ms(),
            mount_roots_reowned,
        }),
        Err(e) => {
            if let Err(undo) = undo(api, plan, created.as_deref()).await {
                tracing::error!(error = %undo, "undoing a failed recreate failed too");
                return Err(ContainerError::Verify(format!(
                    "{e}; and putting the old container back failed: {undo} (fleet-agent rollback retries)"
                )));
            }
            Err(e)
        }
    }
}

/// Whether `doc` is the container this plan created: when its id was not
/// recorded (a crash right after create), it is recognised by what the
/// plan gave it, so a container someone else made under the name since is
/// never removed.
fn made_by(plan: &RecreatePlan, doc: &Value) -> bool {
    str_at(doc, "/Id") != plan.old_id
        && doc.pointer("/Config/User") == plan.create_body.get("User")
        && doc.pointer("/Config/Image") == plan.create_body.get("Image")
}

/// Stops the migrated service as the stop step stops a service (its own
/// stop signal, which the engine applies, and timeout), so it writes what
/// it writes on SIGTERM, then removes it: a forced remove is a SIGKILL.
async fn stop_then_remove(
    api: &Api<'_>,
    plan: &RecreatePlan,
    id: &str,
) -> Result<(), ContainerError> {
    match api.stop(id, plan.stop_timeout).await {
        Ok(()) | Err(ContainerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    api.remove(id).await
}

/// Puts the old container back, from whatever state the recreate reached:
/// removes a new container holding the name, renames the old one back,
/// restores its restart policy and static addresses, and starts it if it
/// was running. Safe to repeat.
pub async fn undo(
    api: &Api<'_>,
    plan: &RecreatePlan,
    new_id: Option<&str>,
) -> Result<(), ContainerError> {
    match new_id {
        Some(new_id) => stop_then_remove(api, plan, new_id).await?,
        None => match api.inspect(&plan.name).await {
            Ok(current) if made_by(plan, &current) => {
                stop_then_remove(api, plan, str_at(&current, "/Id")).await?
            }
            Ok(current) if str_at(&current, "/Id") != plan.old_id => {
                return Err(ContainerError::Refused(vec![format!(
                    "the name {} is held by container {}, which this recreate did not make; rename or remove it, then roll back again",
                    plan.name,
                    str_at(&current, "/Id")
                )]));
            }
            Ok(_) | Err(ContainerError::NotFound(_)) => {}
            Err(e) => return Err(e),
        },
    }
    let old = match api.inspect(&plan.old_id).await {
        Ok(old) => old,
        Err(ContainerError::NotFound(_)) => {
            return Err(ContainerError::NotFound(format!(
                "{} (the old container of {}) is gone: restore it from its checkpoint backup",
                plan.old_id, plan.name
            )));
        }
        Err(e) => return Err(e),
    };
    if str_at(&old, "/Name").trim_start_matches('/') != plan.name {
        api.rename(&plan.old_id, &plan.name).await?;
    }
    if !plan.checkpoint_keeps_restart_policy
        && old.pointer("/HostConfig/RestartPolicy") != Some(&plan.restart_policy)
    {
        api.set_restart_policy(&plan.old_id, &plan.restart_policy)
            .await?;
    }
    let connected = old
        .pointer("/NetworkSettings/Networks")
        .and_then(|n| n.as_object())
        .cloned()
        .unwrap_or_default();
    for (net, endpoint) in &plan.static_networks {
        if !connected.contains_key(net) {
            api.connect(net, &plan.old_id, endpoint).await?;
        }
    }
    let running = old.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true);
    if plan.was_running && !running {
        api.start(&plan.old_id).await?;
    }
    Ok(())
}
