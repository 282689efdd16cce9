//! What a host offers a rootless target (ROOTLESS.md §1's host probe): the
//! agent reads it off the host with every audit, and what a move under an
//! account's rootless Podman needs and the host lacks is named here, once,
//! for the audit to show and the plan to refuse on.

use serde::{Deserialize, Serialize};

/// The host's facts that decide whether and how a container can move under
/// a dedicated account's rootless Podman.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapabilities {
    /// False from an agent that did not probe (an older one): nothing below
    /// is known.
    pub probed: bool,
    /// `podman --version` of the host's podman binary, if there is one.
    pub podman_version: Option<String>,
    /// `/usr/libexec/podman/quadlet` is there (Podman ≥ 4.4 ships it).
    pub quadlet: bool,
    /// systemd runs the host (`/run/systemd/system`): user managers, linger.
    pub systemd_running: bool,
    /// `loginctl` is there, so linger can keep a user manager past logout.
    pub loginctl: bool,
    /// 1 or 2.
    pub cgroup_version: u32,
    pub newuidmap: bool,
    pub newgidmap: bool,
    /// `net.ipv4.ip_unprivileged_port_start`: rootless cannot publish below.
    pub unprivileged_port_start: Option<u32>,
    /// `/dev/net/tun` is readable and writable by every user (udev's 0666):
    /// rootless networking (slirp4netns, pasta) opens it as the account.
    #[serde(default)]
    pub net_tun_open: bool,
}

/// How the account's container would be run at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitFlavour {
    /// A Quadlet `.container` (Podman ≥ 4.4, cgroup v2, systemd).
    Quadlet,
    /// A systemd user `.service` running `podman run --rm --replace`.
    UserService,
}

/// What a rootless move on this host would need and does not have
/// (blockers), and what it would do differently (notes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootlessNeeds {
    pub blockers: Vec<String>,
    pub notes: Vec<String>,
    pub unit: Option<UnitFlavour>,
}

impl HostCapabilities {
    /// `4.3.1` from `podman version 4.3.1`, as (major, minor).
    pub fn podman_release(&self) -> Option<(u32, u32)> {
        let text = self.podman_version.as_deref()?;
        let version = text.split_whitespace().last()?;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    }

    /// Each unmet need named with its fix; the back-end the unit would use.
    pub fn rootless_needs(&self) -> RootlessNeeds {
        let mut needs = RootlessNeeds::default();
        if !self.probed {
            needs.blockers.push(
                "the agent did not report the host's capabilities: upgrade fleet-agent".into(),
            );
            return needs;
        }
        let release = self.podman_release();
        match release {
            None => needs.blockers.push(
                "no podman on the host: install it (apt-get install podman uidmap slirp4netns)"
                    .into(),
            ),
            Some(r) if r < (4, 3) => needs.blockers.push(format!(
                "podman {} is older than 4.3, which keep-id:uid=,gid= needs: upgrade podman",
                r.0.to_string() + "." + &r.1.to_string()
            )),
            Some(_) => {}
        }
        for (present, tool) in [(self.newuidmap, "newuidmap"), (self.newgidmap, "newgidmap")] {
            if !present {
                needs.blockers.push(format!(
                    "no {tool}: rootless Podman cannot map the account's subordinate ids; install uidmap"
                ));
            }
        }
        if release.is_some() {
            let quadlet = self.quadlet
                && self.cgroup_version >= 2
                && self.systemd_running
                && release.is_some_and(|r| r >= (4, 4));
            needs.unit = Some(if quadlet {
                UnitFlavour::Quadlet
            } else {
                UnitFlavour::UserService
            });
            if !quadlet {
                needs.notes.push(format!(
                    "units are a systemd user .service (podman run --rm --replace): Quadlet needs podman ≥ 4.4, cgroup v2 and systemd{}",
                    self.missing_for_quadlet(release)
                ));
            }
        }
        if !self.systemd_running {
            needs.notes.push(
                "no systemd: no user manager to start the account's unit at boot; the agent runs the account's podman service itself".into(),
            );
        } else if !self.loginctl {
            needs
                .blockers
                .push("no loginctl: linger cannot keep the account's user manager running; install systemd's loginctl".into());
        }
        if self.cgroup_version < 2 {
            needs
                .notes
                .push("cgroup v1: rootless resource limits (memory, cpu, pids) are ignored".into());
        }
        if !self.net_tun_open {
            needs.notes.push(
                "/dev/net/tun is root's only: a container with a network cannot move (rootless networking opens it as the account); chmod 0666 /dev/net/tun, as udev does".into(),
            );
        }
        if let Some(start) = self.unprivileged_port_start.filter(|&p| p > 0) {
            needs.notes.push(format!(
                "ports below {start} cannot be published rootless (net.ipv4.ip_unprivileged_port_start)"
            ));
        }
        needs
    }

    fn missing_for_quadlet(&self, release: Option<(u32, u32)>) -> String {
        let mut missing = Vec::new();
        if release.is_some_and(|r| r < (4, 4)) || !self.quadlet {
            missing.push("a podman with Quadlet");
        }
        if self.cgroup_version < 2 {
            missing.push("cgroup v2");
        }
        if !self.systemd_running {
            missing.push("systemd");
        }
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (this host lacks {})", missing.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian12_ci() -> HostCapabilities {
        HostCapabilities {
            probed: true,
            podman_version: Some("podman version 4.3.1".into()),
            quadlet: false,
            systemd_running: false,
            loginctl: false,
            cgroup_version: 1,
            newuidmap: true,
            newgidmap: true,
            unprivileged_port_start: Some(1024),
            net_tun_open: false,
        }
    }

    #[test]
    fn each_unmet_need_is_named_and_the_unit_flavour_follows_the_host() {
        let ci = debian12_ci().rootless_needs();
        assert!(ci.blockers.is_empty(), "{ci:?}");
        assert_eq!(ci.unit, Some(UnitFlavour::UserService));
        assert!(
            ci.notes
                .iter()
                .any(|n| n.contains("this host lacks a podman with Quadlet, cgroup v2, systemd"))
        );
        assert!(ci.notes.iter().any(|n| n.contains("ports below 1024")));
        assert!(ci.notes.iter().any(|n| n.contains("resource limits")));
        assert!(
            ci.notes
                .iter()
                .any(|n| n.contains("/dev/net/tun is root's only"))
        );

        let trixie = HostCapabilities {
            podman_version: Some("podman version 5.4.2".into()),
            quadlet: true,
            systemd_running: true,
            loginctl: true,
            cgroup_version: 2,
            ..debian12_ci()
        };
        let needs = trixie.rootless_needs();
        assert_eq!(needs.unit, Some(UnitFlavour::Quadlet));
        assert!(needs.blockers.is_empty(), "{needs:?}");

        let bare = HostCapabilities {
            podman_version: None,
            newuidmap: false,
            ..debian12_ci()
        };
        let needs = bare.rootless_needs();
        assert_eq!(needs.unit, None);
        assert_eq!(needs.blockers.len(), 2, "{needs:?}");
        assert!(needs.blockers[0].starts_with("no podman on the host"));
        assert!(needs.blockers[1].starts_with("no newuidmap"));

        let old = HostCapabilities {
            podman_version: Some("podman version 3.4.4".into()),
            ..debian12_ci()
        };
        assert!(old.rootless_needs().blockers[0].contains("podman 3.4 is older than 4.3"));
        let no_linger = HostCapabilities {
            systemd_running: true,
            ..debian12_ci()
        };
        assert!(no_linger.rootless_needs().blockers[0].starts_with("no loginctl"));
        assert!(
            !HostCapabilities::default()
                .rootless_needs()
                .blockers
                .is_empty()
        );
    }
}
