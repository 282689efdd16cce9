//! The create request of the new container, from the old one's inspect
//! document.

use serde_json::{Map, Value, json};

use super::podman;
use crate::container::{Api, str_at};

pub(super) type Networks = Vec<(String, Value)>;

/// The create request: the old configuration, verbatim but for `User`,
/// the image (its ID, not a tag that may have moved), the hostname rules,
/// anonymous volumes by name, and each network endpoint's user settings.
pub(super) fn create_body(
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
        podman::adapt_for_podman(&mut host, &mut config);
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
