//! The create request of the new container, from the old one's inspect
//! document.

use serde_json::{Map, Value, json};

use super::podman;
use crate::container::{Api, str_at};

pub type Networks = Vec<(String, Value)>;

/// The create request: the old configuration, verbatim but for `User`,
/// the image (its ID, not a tag that may have moved), the hostname rules,
/// anonymous volumes by name, and each network endpoint's user settings.
/// Also the networks connected after create (below API 1.44), and the
/// networks with static addresses and their endpoint settings.
pub fn create_body(
    old: &Value,
    user: &str,
    image: &str,
    api: &Api<'_>,
) -> (Value, Networks, Networks) {
    let conn = api.connected();
    let per_endpoint_mac = conn.api_version >= (1, 44);
    let podman = conn.facts.kind == fleet_core::audit::EngineKind::Podman;
    let old_id = str_at(old, "/Id");
    let short_id = &old_id[..old_id.len().min(12)];

    let mut config = object_at(old, "Config");
    config.insert("User".into(), json!(user));
    config.insert("Image".into(), json!(image));
    let mut host = object_at(old, "HostConfig");
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
    name_anonymous_volumes(old, &mut host);
    if podman {
        podman::adapt_for_podman(&mut host, &mut config);
    }

    // Networks, per endpoint: what the user set, never what the engine assigned.
    let mut endpoints: Vec<(String, Value)> = Vec::new();
    let mut static_networks = Vec::new();
    for (net, endpoint) in old
        .pointer("/NetworkSettings/Networks")
        .and_then(|n| n.as_object())
        .into_iter()
        .flatten()
    {
        let ids = (old_id, short_id);
        let (value, is_static) = endpoint_settings(net, endpoint, ids, podman, per_endpoint_mac);
        if is_static {
            static_networks.push((net.clone(), value.clone()));
        }
        endpoints.push((net.clone(), value));
    }
    let (at_create, extra) = split_networks(endpoints, &network_mode, conn.api_version);
    let endpoints_config: Map<String, Value> = at_create.into_iter().collect();
    let mut body = config;
    body.insert("HostConfig".into(), Value::Object(host));
    body.insert(
        "NetworkingConfig".into(),
        json!({ "EndpointsConfig": endpoints_config }),
    );
    (Value::Object(body), extra, static_networks)
}

/// The object at `key` of the inspect document, copied (empty if none).
fn object_at(old: &Value, key: &str) -> Map<String, Value> {
    old.get(key)
        .and_then(|c| c.as_object())
        .cloned()
        .unwrap_or_default()
}

/// Anonymous volumes keep their data only if named explicitly: each
/// volume mount no bind or mount names yet becomes a bind by name.
fn name_anonymous_volumes(old: &Value, host: &mut Map<String, Value>) {
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
}

/// One endpoint's settings as the user gave them (static addresses,
/// aliases but the engine's own, links, driver options, the MAC address
/// from API 1.44), and whether it has a static address. `ids`: the old
/// container's id and short id (aliases the engine added).
fn endpoint_settings(
    net: &str,
    endpoint: &Value,
    (old_id, short_id): (&str, &str),
    podman: bool,
    per_endpoint_mac: bool,
) -> (Value, bool) {
    let mut out = Map::new();
    let ipam = endpoint.get("IPAMConfig").filter(|v| {
        v.as_object().is_some_and(|o| {
            o.values()
                .any(|x| !x.is_null() && x != "" && x != &json!([]))
        })
    });
    if let Some(ipam) = ipam {
        out.insert("IPAMConfig".into(), ipam.clone());
    }
    let user_defined = !matches!(net, "bridge" | "host" | "none" | "podman");
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
    (Value::Object(out), ipam.is_some())
}

/// The endpoints sent in the create request and those connected after it.
/// The network named by NetworkMode goes first; below API 1.44 only it is
/// in the create request. A container on another's, the host's or no
/// network takes no endpoints.
fn split_networks(
    mut endpoints: Networks,
    network_mode: &str,
    api_version: (u32, u32),
) -> (Networks, Networks) {
    let default_network = matches!(network_mode, "default" | "bridge");
    let primary = if default_network {
        "bridge"
    } else {
        network_mode
    };
    endpoints.sort_by_key(|(net, _)| *net != primary);
    let takes_endpoints = !(network_mode.starts_with("container:")
        || network_mode == "host"
        || network_mode == "none");
    if !takes_endpoints {
        (Vec::new(), Vec::new())
    } else if api_version >= (1, 44) {
        (endpoints, Vec::new())
    } else {
        let mut rest = endpoints;
        let first = if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.remove(0)]
        };
        (first, rest)
    }
}
