//! The faithful recreate: the old container is stopped, renamed to a
//! checkpoint name, its restart policy set to `no` and its static addresses
//! released; a new one is created from the old inspect document with the
//! same image ID and every configuration field, only `User` changed, and
//! started. Nothing is removed: the old container is the way back.
//! (FIELD-NOTES §6 is the checklist; watchtower's tracker is the reason.)

use fleet_core::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::container::{Api, ContainerError};
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

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
}

/// The engine's own paths in the writable layer; with the runtime roots,
/// the changes a recreate may lose.
const ENGINE_OWN: &[&str] = &["/dev", "/proc", "/sys"];

fn is_ephemeral(path: &str, mounts: &[String], engine_files: &[&str]) -> bool {
    let under =
        |root: &str| path == root || path.starts_with(&format!("{}/", root.trim_end_matches('/')));
    // The engine creates mount points (and their parents) in the layer, and
    // a change below a runtime root copies its parents up (`/var` for
    // `/var/cache/app`): a parent listed for that holds nothing of its own.
    let above = |below: &str| below.starts_with(&format!("{}/", path.trim_end_matches('/')));
    runtime_dirs::RUNTIME_ROOTS
        .iter()
        .chain(ENGINE_OWN)
        .chain(engine_files)
        .any(|r| under(r) || above(r))
        || mounts.iter().any(|m| under(m) || above(m))
}

/// What a recreate of a container would refuse or do differently, known
/// from the running container before anything changes: the plan shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Foreseen {
    /// Writable-layer paths a recreate loses (refused unless the policy
    /// allows the loss).
    pub layer_loss: Vec<String>,
    /// What the engine makes the run do differently.
    pub notes: Vec<String>,
}

pub async fn foresee(api: &Api<'_>, id: &str) -> Result<Foreseen, ContainerError> {
    let old = api.inspect(id).await?;
    let flavour = api.connected().flavour;
    let restart_policy = old
        .pointer("/HostConfig/RestartPolicy")
        .cloned()
        .unwrap_or(json!({"Name": "no"}));
    let mut notes = Vec::new();
    let policy = str_at(&restart_policy, "/Name");
    if !flavour.updates_restart_policy() && !matches!(policy, "" | "no") {
        notes.push(format!(
            "the kept checkpoint keeps restart policy {policy} ({} cannot change it): it was stopped by its user, which Podman never restarts{}",
            flavour.describe(),
            match flavour.checkpoint_boot_guard(policy) {
                Some(guard) => format!(
                    ", and {} keeps podman-restart.service from starting it at boot",
                    guard.path.display()
                ),
                None => String::new(),
            }
        ));
    }
    if has_healthcheck(&old) && !flavour.runs_healthchecks() {
        notes.push(format!(
            "{} runs no healthcheck: fleet-agent runs it while verify waits",
            flavour.describe()
        ));
    }
    Ok(Foreseen {
        layer_loss: lost_content(api, str_at(&old, "/Id"), &mount_destinations(&old)).await,
        notes,
    })
}

pub fn has_healthcheck(doc: &Value) -> bool {
    doc.pointer("/Config/Healthcheck/Test")
        .and_then(|t| t.as_array())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE")
}

/// Where the container's mounts and tmpfs mounts are.
fn mount_destinations(doc: &Value) -> Vec<String> {
    let mut mounts: Vec<String> = doc
        .pointer("/Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("Destination")?.as_str().map(String::from))
        .collect();
    mounts.extend(
        doc.pointer("/HostConfig/Tmpfs")
            .and_then(|t| t.as_object())
            .into_iter()
            .flat_map(|t| t.keys().cloned()),
    );
    mounts
}

/// Writable-layer paths with content of their own that a recreate loses.
async fn lost_content(api: &Api<'_>, id: &str, mounts: &[String]) -> Vec<String> {
    let engine_files = api.connected().flavour.own_layer_files();
    let lost: Vec<(String, i64)> = api
        .changes(id)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(path, kind)| *kind != 2 && !is_ephemeral(path, mounts, engine_files))
        .collect();
    // A directory listed as modified because a child changed holds nothing
    // of its own: the child is listed too.
    let holds_a_listed_change = |dir: &str| {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        lost.iter().any(|(other, _)| other.starts_with(&prefix))
    };
    lost.iter()
        .filter(|(path, kind)| !(*kind == 0 && holds_a_listed_change(path)))
        .map(|(path, _)| path.clone())
        .collect()
}

/// Decides the recreate, refusing what cannot be done faithfully.
pub async fn plan(
    api: &Api<'_>,
    request: &RecreateRequest,
) -> Result<RecreatePlan, ContainerError> {
    let mut old = api.inspect(&request.container).await?;
    repoint_to_successors(api, &mut old, &request.run).await?;
    if api.connected().facts.kind == fleet_core::audit::EngineKind::Podman {
        adapt_podman_inspect(api, &mut old).await?;
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
    // Containers that share this one's namespaces or volumes break if it is recreated.
    for other in api.list().await? {
        let other_id = str_at(&other, "/Id");
        if other_id == old_id {
            continue;
        }
        let Ok(doc) = api.inspect(other_id).await else {
            continue;
        };
        let other_name = str_at(&doc, "/Name").trim_start_matches('/');
        if request.together.iter().any(|t| t == other_name) {
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
    let mounts = mount_destinations(&old);
    let flavour = api.connected().flavour;
    if !request.allow_layer_loss {
        let lost = lost_content(api, &old_id, &mounts).await;
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
        return Err(ContainerError::Refused(refusals));
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
    let (create_body, extra_networks, static_networks) = create_body(&old, &user, &image, api);
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

/// Makes Podman's inspect document say what Docker's would: the static
/// addresses it keeps out of inspect (`flavour::podman_static_addresses`)
/// go into the endpoints' `IPAMConfig`, so the recreate keeps and releases
/// them alike; and the `HOME` it derived for the old user at create (root's
/// `/root`) leaves `Env` unless the image or the operator set it, so the
/// engine derives the new user's.
async fn adapt_podman_inspect(api: &Api<'_>, old: &mut Value) -> Result<(), ContainerError> {
    let own = api.libpod_inspect(str_at(old, "/Id")).await?;
    let command: Vec<String> = own
        .pointer("/Config/CreateCommand")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let image_env = api
        .image_env(str_at(old, "/Image"))
        .await
        .unwrap_or_default();
    let set_home = |env: &[String]| env.iter().any(|e| e.contains("HOME="));
    if !set_home(&image_env)
        && !set_home(&command)
        && let Some(env) = old
            .pointer_mut("/Config/Env")
            .and_then(|e| e.as_array_mut())
    {
        env.retain(|e| e.as_str().is_none_or(|e| !e.starts_with("HOME=")));
    }
    for (net, address) in crate::flavour::podman_static_addresses(&command) {
        let Some(endpoint) = old
            .pointer_mut(&format!(
                "/NetworkSettings/Networks/{}",
                net.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(|e| e.as_object_mut())
        else {
            continue;
        };
        let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if has(&address.ipv4) || has(&address.ipv6) {
            endpoint.insert(
                "IPAMConfig".into(),
                json!({
                    "IPv4Address": address.ipv4.unwrap_or_default(),
                    "IPv6Address": address.ipv6.unwrap_or_default(),
                }),
            );
        }
    }
    Ok(())
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
    let sources: Vec<String> = doc
        .pointer("/HostConfig/VolumesFrom")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
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

type Networks = Vec<(String, Value)>;

/// The create request: the old configuration, verbatim but for `User`,
/// the image (its ID, not a tag that may have moved), the hostname rules,
/// anonymous volumes by name, and each network endpoint's user settings.
fn create_body(old: &Value, user: &str, image: &str, api: &Api<'_>) -> (Value, Networks, Networks) {
    let conn = api.connected();
    let per_endpoint_mac = conn.api_version >= (1, 44);
    let podman = conn.facts.kind == fleet_core::audit::EngineKind::Podman;
    let old_id = str_at(old, "/Id");
    let short_id = &old_id[..old_id.len().min(12)];

    let mut config: Map<String, Value> = old
        .get("Config")
        .and_then(|c| c.as_object())
        .cloned()
        .unwrap_or_default();
    config.insert("User".into(), json!(user));
    config.insert("Image".into(), json!(image));
    let mut host: Map<String, Value> = old
        .get("HostConfig")
        .and_then(|c| c.as_object())
        .cloned()
        .unwrap_or_default();
    let network_mode = host
        .get("NetworkMode")
        .and_then(|m| m.as_str())
        .unwrap_or("default")
        .to_string();
    let shares_uts = network_mode.starts_with("container:")
        || host.get("UTSMode").and_then(|m| m.as_str()) == Some("host");
    let default_hostname = config.get("Hostname").and_then(|h| h.as_str()) == Some(short_id);
    if shares_uts || default_hostname {
        // The engine sets these itself; sending them conflicts (#188) or
        // freezes the old container's id as the new one's hostname.
        config.remove("Hostname");
        if shares_uts {
            config.remove("Domainname");
        }
    }
    if per_endpoint_mac {
        config.remove("MacAddress");
    }

    // Anonymous volumes keep their data only if named explicitly.
    let mut binds: Vec<Value> = host
        .get("Binds")
        .and_then(|b| b.as_array())
        .cloned()
        .unwrap_or_default();
    let mut covered: Vec<String> = binds
        .iter()
        .filter_map(|b| b.as_str()?.split(':').nth(1).map(String::from))
        .collect();
    covered.extend(
        host.get("Mounts")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("Target")?.as_str().map(String::from)),
    );
    for mount in old
        .get("Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let destination = str_at(mount, "/Destination");
        if mount.get("Type").and_then(|t| t.as_str()) == Some("volume")
            && !covered.iter().any(|c| c == destination)
        {
            let name = str_at(mount, "/Name");
            let ro = if mount.get("RW").and_then(|r| r.as_bool()) == Some(false) {
                ":ro"
            } else {
                ""
            };
            binds.push(json!(format!("{name}:{destination}{ro}")));
            covered.push(destination.to_string());
        }
    }
    if !binds.is_empty() {
        host.insert("Binds".into(), Value::Array(binds));
    }
    if podman {
        adapt_for_podman(&mut host, &mut config);
    }

    // Networks, per endpoint: what the user set, never what the engine assigned.
    let mut endpoints: Vec<(String, Value)> = Vec::new();
    let mut static_networks = Vec::new();
    let default_network = matches!(network_mode.as_str(), "default" | "bridge");
    for (net, endpoint) in old
        .pointer("/NetworkSettings/Networks")
        .and_then(|n| n.as_object())
        .into_iter()
        .flatten()
    {
        let mut out = Map::new();
        let ipam = endpoint.get("IPAMConfig").filter(|v| {
            v.as_object().is_some_and(|o| {
                o.values()
                    .any(|x| !x.is_null() && x != "" && x != &json!([]))
            })
        });
        if let Some(ipam) = ipam {
            out.insert("IPAMConfig".into(), ipam.clone());
            static_networks.push((net.clone(), Value::Null));
        }
        let user_defined = !matches!(net.as_str(), "bridge" | "host" | "none" | "podman");
        if user_defined {
            let aliases: Vec<Value> = endpoint
                .get("Aliases")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .filter(|a| {
                    a.as_str()
                        .is_some_and(|a| a != short_id && !old_id.starts_with(a))
                })
                .cloned()
                .collect();
            if !aliases.is_empty() {
                out.insert("Aliases".into(), Value::Array(aliases));
            }
        }
        if let Some(links) = endpoint.get("Links").filter(|l| !l.is_null())
            && !podman
        {
            out.insert("Links".into(), links.clone());
        }
        if let Some(opts) = endpoint.get("DriverOpts").filter(|o| !o.is_null()) {
            out.insert("DriverOpts".into(), opts.clone());
        }
        if per_endpoint_mac
            && let Some(mac) = endpoint
                .get("MacAddress")
                .filter(|m| m.as_str().is_some_and(|s| !s.is_empty()))
        {
            out.insert("MacAddress".into(), mac.clone());
        }
        let value = Value::Object(out);
        for (name, slot) in static_networks.iter_mut() {
            if name == net {
                *slot = value.clone();
            }
        }
        endpoints.push((net.clone(), value));
    }
    // The network named by NetworkMode goes into the create request; below
    // API 1.44 the others are connected afterwards.
    let primary = if default_network {
        "bridge".to_string()
    } else {
        network_mode.clone()
    };
    endpoints.sort_by_key(|(net, _)| *net != primary);
    let takes_endpoints = !(network_mode.starts_with("container:")
        || network_mode == "host"
        || network_mode == "none");
    let (at_create, extra): (Networks, Networks) = if !takes_endpoints {
        (Vec::new(), Vec::new())
    } else if conn.api_version >= (1, 44) {
        (endpoints, Vec::new())
    } else {
        let mut rest = endpoints;
        let first = if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.remove(0)]
        };
        (first, rest)
    };
    let endpoints_config: Map<String, Value> = at_create.into_iter().collect();
    let mut body = config;
    body.insert("HostConfig".into(), Value::Object(host));
    body.insert(
        "NetworkingConfig".into(),
        json!({ "EndpointsConfig": endpoints_config }),
    );
    (Value::Object(body), extra, static_networks)
}

/// What Podman's compat API rejects in an inspect document sent back
/// (FIELD-NOTES §6): links, NanoCpus next to CpuPeriod/Quota, the swappiness
/// cgroup v2 refuses, empty device permissions, and `private` user namespaces.
fn adapt_for_podman(host: &mut Map<String, Value>, config: &mut Map<String, Value>) {
    host.remove("Links");
    let nano = host.get("NanoCpus").and_then(|v| v.as_i64()).unwrap_or(0);
    if nano > 0 {
        host.remove("CpuPeriod");
        host.remove("CpuQuota");
    }
    host.remove("MemorySwappiness");
    if let Some(devices) = host.get_mut("Devices").and_then(|d| d.as_array_mut()) {
        for device in devices {
            if device
                .get("CgroupPermissions")
                .and_then(|p| p.as_str())
                .is_none_or(|p| p.is_empty())
                && let Some(obj) = device.as_object_mut()
            {
                obj.insert("CgroupPermissions".into(), json!("rwm"));
            }
        }
    }
    if host.get("UsernsMode").and_then(|m| m.as_str()) == Some("private") {
        host.remove("UsernsMode");
    }
    // Binds and Mounts naming the same destination: "duplicate mount destination".
    let bind_targets: Vec<String> = host
        .get("Binds")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str()?.split(':').nth(1).map(String::from))
        .collect();
    if let Some(mounts) = host.get_mut("Mounts").and_then(|m| m.as_array_mut()) {
        mounts.retain(|m| {
            !m.get("Target")
                .and_then(|t| t.as_str())
                .is_some_and(|t| bind_targets.iter().any(|b| b == t))
        });
    }
    config.remove("MacAddress");
    // Its inspect names ulimits `RLIMIT_NOFILE`; its create (before 4.5,
    // containers/podman#18077) takes only `nofile`, which every version takes.
    if let Some(ulimits) = host.get_mut("Ulimits").and_then(|u| u.as_array_mut()) {
        for ulimit in ulimits.iter_mut().filter_map(|u| u.as_object_mut()) {
            if let Some(name) = ulimit.get("Name").and_then(|n| n.as_str()) {
                let short = name.strip_prefix("RLIMIT_").unwrap_or(name).to_lowercase();
                ulimit.insert("Name".into(), json!(short));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_state_mount_points_and_the_parents_they_copy_up_are_not_lost_content() {
        let mounts = vec!["/srv/data".to_string()];
        for path in [
            "/run/app",
            "/tmp/x",
            "/var",
            "/var/cache/app",
            "/srv",
            "/srv/data/f",
        ] {
            assert!(is_ephemeral(path, &mounts, &[]), "{path}");
        }
        for path in [
            "/etc",
            "/etc/app.conf",
            "/var/lib/db",
            "/srv/other",
            "/varnish",
        ] {
            assert!(!is_ephemeral(path, &mounts, &[]), "{path}");
        }
        // Podman's own mount-point files leave their parent listed.
        let podman = crate::flavour::Flavour::new(fleet_core::audit::EngineKind::Podman, "4.3.1");
        for path in ["/etc", "/etc/hosts", "/etc/mtab", "/run"] {
            assert!(
                is_ephemeral(path, &mounts, podman.own_layer_files()),
                "{path}"
            );
        }
        for path in ["/etc/app.conf", "/etc/passwd", "/etcetera"] {
            assert!(
                !is_ephemeral(path, &mounts, podman.own_layer_files()),
                "{path}"
            );
        }
    }
}
