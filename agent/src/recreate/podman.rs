//! Podman's documents made to say what Docker's would, so the recreate
//! treats both alike (what differs is decided in `flavour`).

use serde_json::{Map, Value, json};

use crate::container::{Api, ContainerError, str_at, strings_at};

/// Makes Podman's inspect document say what Docker's would: the static
/// addresses it keeps out of inspect (`flavour::podman_static_addresses`)
/// go into the endpoints' `IPAMConfig`, so the recreate keeps and releases
/// them alike; and the `HOME` it derived for the old user at create (root's
/// `/root`) leaves `Env` unless the image or the operator set it, so the
/// engine derives the new user's.
pub(super) async fn adapt_podman_inspect(
    api: &Api<'_>,
    old: &mut Value,
) -> Result<(), ContainerError> {
    let own = api.libpod_inspect(str_at(old, "/Id")).await?;
    let command = strings_at(&own, "/Config/CreateCommand");
    let image_env = api
        .image_env(str_at(old, "/Image"))
        .await
        .unwrap_or_default();
    // `HOME=...` in the image's env; `-e HOME=...`, `--env=HOME=...` or
    // `-e HOME` (from the caller's env) in the create command.
    let sets_home = |arg: &str| {
        let arg = arg
            .strip_prefix("--env=")
            .or_else(|| arg.strip_prefix("-e="))
            .unwrap_or(arg);
        arg == "HOME" || arg.starts_with("HOME=")
    };
    if !image_env.iter().any(|e| sets_home(e))
        && !command.iter().any(|a| sets_home(a))
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

/// What Podman's compat API rejects in an inspect document sent back
/// (FIELD-NOTES §6): links, NanoCpus next to CpuPeriod/Quota, the swappiness
/// cgroup v2 refuses, empty device permissions, and `private` user namespaces.
pub(super) fn adapt_for_podman(host: &mut Map<String, Value>, config: &mut Map<String, Value>) {
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
