//! The container itself, under the account's engine: created from the old
//! inspect document with what rootless can do, every difference rootless
//! forces either refused (a blocker: nothing changes) or said (a
//! documented change); the old container stays on the rootful engine,
//! renamed, with restart policy `no`, as the checkpoint.

use fleet_core::userns::UsernsMode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::container::{Api, ContainerError, str_at, strings_at};

/// What rootless cannot do for this container (each a blocker), and what
/// it does differently (each a documented change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differences {
    pub blockers: Vec<String>,
    pub changes: Vec<String>,
}

/// Capabilities a user namespace cannot give: they act on the host itself.
const HOST_CAPABILITIES: &[&str] = &[
    "SYS_MODULE",
    "SYS_TIME",
    "SYS_BOOT",
    "SYS_RAWIO",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "AUDIT_CONTROL",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "ALL",
];

/// The resource limits a rootless container on cgroup v1 goes without.
const LIMITS: &[&str] = &[
    "Memory",
    "MemoryReservation",
    "NanoCpus",
    "CpuShares",
    "CpuQuota",
    "CpusetCpus",
    "PidsLimit",
    "BlkioWeight",
];

/// What of the host decides the differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// `net.ipv4.ip_unprivileged_port_start`.
    pub port_start: u16,
    /// Rootless resource limits are ignored.
    pub cgroup_v1: bool,
    /// `/dev/net/tun` is open to the account: rootless networking works.
    pub tun_open: bool,
}

impl HostFacts {
    pub fn of(caps: &fleet_core::capabilities::HostCapabilities) -> Self {
        HostFacts {
            port_start: caps
                .unprivileged_port_start
                .map_or(1024, |p| p.min(u16::MAX as u32) as u16),
            cgroup_v1: caps.cgroup_version < 2,
            tun_open: caps.net_tun_open,
        }
    }
}

/// Reads the differences off the old inspect document on a host of `facts`.
pub fn differences(old: &Value, facts: HostFacts) -> Differences {
    let HostFacts {
        port_start,
        cgroup_v1,
        tun_open,
    } = facts;
    let mut d = Differences::default();
    let name = str_at(old, "/Name").trim_start_matches('/');
    let host = |field: &str| str_at(old, &format!("/HostConfig/{field}")).to_string();
    if old
        .pointer("/HostConfig/Privileged")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        d.blockers.push(format!("{name} is privileged: a rootless account cannot give it the host's devices and capabilities"));
    }
    match host("NetworkMode").as_str() {
        "host" => d.blockers.push(format!("{name} uses the host's network: under a rootless account it would get its own (join a network or publish its ports, then plan again)")),
        "" | "default" | "bridge" => {
            if !tun_open {
                d.blockers.push(format!("{name} needs a network, and rootless networking opens /dev/net/tun as the account, which this host allows root only: give it udev's mode (chmod 0666 /dev/net/tun, as a normal Debian host has it) or run it with --network none"));
            }
            if has_ports(old) {
                d.changes.push("the default bridge becomes slirp4netns: published ports are forwarded by rootlessport and clients' source addresses are rewritten".into());
            }
            d.changes.push("its container address is no longer reachable from the host: only its published ports are".into());
        }
        "none" => {}
        mode if mode.starts_with("container:") => d.blockers.push(format!("{name} shares the network of another container ({mode}): move them together (not yet supported)")),
        network => d.blockers.push(format!("{name} is on network {network}: a rootless move keeps only the default network today")),
    }
    for field in ["PidMode", "IpcMode", "UTSMode"] {
        if host(field) == "host" {
            d.blockers.push(format!(
                "{name} uses the host's {field}: a rootless account has none to give"
            ));
        }
    }
    let devices = old
        .pointer("/HostConfig/Devices")
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    if devices > 0 {
        d.blockers.push(format!(
            "{name} is given {devices} device(s): the account can open only devices its own uid may"
        ));
    }
    for cap in strings_at(old, "/HostConfig/CapAdd") {
        let bare = cap.trim_start_matches("CAP_");
        if HOST_CAPABILITIES.contains(&bare) {
            d.blockers.push(format!(
                "{name} adds capability {cap}: a user namespace cannot give it"
            ));
        }
    }
    for (port, host_port) in published(old) {
        if host_port != 0 && host_port < port_start {
            d.blockers.push(format!(
                "{name} publishes {port} on host port {host_port}, below this host's unprivileged port start {port_start}: publish it from {port_start} up (policy publish_low_ports) or lower net.ipv4.ip_unprivileged_port_start (host-wide)"
            ));
        }
    }
    if cgroup_v1 {
        let set: Vec<&str> = LIMITS
            .iter()
            .copied()
            .filter(|f| {
                old.pointer(&format!("/HostConfig/{f}"))
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0)
                    > 0
                    || (*f == "CpusetCpus" && !host(f).is_empty())
            })
            .collect();
        if !set.is_empty() {
            d.changes.push(format!(
                "its resource limits ({}) are ignored: rootless containers on cgroup v1 have none",
                set.join(", ")
            ));
        }
    }
    d
}

fn has_ports(old: &Value) -> bool {
    !published(old).is_empty()
}

/// (container port, host port) of each publish.
fn published(old: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    if let Some(bindings) = old
        .pointer("/HostConfig/PortBindings")
        .and_then(|v| v.as_object())
    {
        for (port, hosts) in bindings {
            for binding in hosts.as_array().into_iter().flatten() {
                let host_port = str_at(binding, "/HostPort").parse().unwrap_or(0);
                out.push((port.clone(), host_port));
            }
        }
    }
    out
}

/// The create request under the account's engine: the same configuration
/// (`recreate::create_body`, which adapts it for Podman), the container
/// user, the user-namespace mode, and the default network made rootless.
pub fn rootless_body(
    old: &Value,
    user: &str,
    image: &str,
    userns: UsernsMode,
    account: &Api<'_>,
) -> Value {
    let (mut body, _extra, _static) = crate::recreate::create_body(old, user, image, account);
    if let Some(host) = body.get_mut("HostConfig").and_then(|h| h.as_object_mut()) {
        let mode = host
            .get("NetworkMode")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        if matches!(mode.as_str(), "" | "default" | "bridge") {
            host.insert("NetworkMode".into(), json!("slirp4netns"));
        }
        match userns {
            UsernsMode::Default => host.remove("UsernsMode"),
            UsernsMode::KeepId { uid, gid } => host.insert(
                "UsernsMode".into(),
                json!(format!("keep-id:uid={uid},gid={gid}")),
            ),
        };
        // The rootful engine's cgroup parent means nothing to the account.
        host.remove("CgroupParent");
    }
    if let Some(networking) = body
        .get_mut("NetworkingConfig")
        .and_then(|n| n.as_object_mut())
    {
        networking.insert("EndpointsConfig".into(), json!({}));
    }
    body
}

/// The user the new container runs as, inside it: what the policy chose,
/// else the old one's (root inside is the account's own uid outside).
pub fn container_user(old: &Value, chosen: Option<(u32, u32)>) -> String {
    match chosen {
        Some((uid, gid)) => format!("{uid}:{gid}"),
        None => str_at(old, "/Config/User").to_string(),
    }
}

/// Stops then removes the container `id` under the account's engine; one
/// already gone is fine.
pub async fn remove_placed(
    account: &Api<'_>,
    id: &str,
    stop_timeout: Option<i64>,
) -> Result<(), ContainerError> {
    match account.stop(id, stop_timeout).await {
        Ok(()) | Err(ContainerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match account.remove(id).await {
        Ok(()) | Err(ContainerError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_rootless_cannot_do_blocks_and_what_it_does_differently_is_said() {
        let old = json!({
            "Name": "/web",
            "HostConfig": {
                "NetworkMode": "bridge",
                "Privileged": false,
                "Devices": [{"PathOnHost": "/dev/fuse"}],
                "CapAdd": ["CAP_SYS_TIME", "NET_BIND_SERVICE"],
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "80"}], "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]},
                "Memory": 1048576,
            }
        });
        let d = differences(
            &old,
            HostFacts {
                port_start: 1024,
                cgroup_v1: true,
                tun_open: true,
            },
        );
        assert_eq!(d.blockers.len(), 3, "{:?}", d.blockers);
        assert!(d.blockers.iter().any(|b| b.contains("device")));
        assert!(d.blockers.iter().any(|b| b.contains("CAP_SYS_TIME")));
        assert!(d.blockers.iter().any(|b| b.contains("host port 80,")));
        assert!(d.changes.iter().any(|c| c.contains("slirp4netns")));
        assert!(d.changes.iter().any(|c| c.contains("Memory")));
        let host_net = json!({"Name": "/h", "HostConfig": {"NetworkMode": "host"}});
        assert!(
            differences(
                &host_net,
                HostFacts {
                    port_start: 1024,
                    cgroup_v1: false,
                    tun_open: true
                }
            )
            .blockers[0]
                .contains("host's network")
        );
        let bridged = json!({"Name": "/b", "HostConfig": {"NetworkMode": "bridge"}});
        let closed = HostFacts {
            port_start: 1024,
            cgroup_v1: false,
            tun_open: false,
        };
        assert!(
            differences(&bridged, closed).blockers[0].contains("/dev/net/tun"),
            "a network needs the tun device"
        );
        let plain = json!({"Name": "/p", "HostConfig": {"NetworkMode": "none"}});
        assert_eq!(
            differences(
                &plain,
                HostFacts {
                    port_start: 1024,
                    cgroup_v1: true,
                    tun_open: false
                }
            ),
            Differences::default()
        );
    }
}
