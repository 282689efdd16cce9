//! What differs between the engines behind the Docker-compatible API, in
//! one place: decided once from the facts the connection learns (the
//! engine, its version, whether systemd runs the host), asked by the steps.

use std::path::{Path, PathBuf};

use fleet_core::audit::EngineKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavour {
    pub kind: EngineKind,
    /// The engine's own version (Podman's, not its compat API's).
    pub version: (u32, u32, u32),
    /// systemd is PID 1 on this host (`/run/systemd/system` exists).
    pub systemd: bool,
}

/// A systemd drop-in that makes `podman-restart.service` start at boot
/// what it always starts, but fleet's checkpoints (`NAME.fleet-pre-RUN`).
/// Written whether or not systemd runs now: systemd reads it at the boot
/// it matters for. It changes nothing else, so it stays once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootGuard {
    pub path: PathBuf,
    pub contents: String,
}

/// Where the drop-in goes.
pub const PODMAN_RESTART_DROP_IN: &str =
    "/etc/systemd/system/podman-restart.service.d/50-fleet-skip-checkpoints.conf";

/// The boot command of the drop-in, as the shell runs it (systemd reads
/// `$$` as `$`): every `always` container but fleet's checkpoints.
pub const PODMAN_BOOT_START: &str = "podman ps -a --filter restart-policy=always --format '{{.ID}} {{.Names}}' | awk '$2 !~ /[.]fleet-pre-/ {print $1}' | xargs -r podman start";

impl BootGuard {
    fn podman_restart() -> Self {
        let path = PathBuf::from(PODMAN_RESTART_DROP_IN);
        let contents = format!(
            "# Written by fleet-agent: a checkpoint fleet keeps for rollback (NAME.fleet-pre-RUN)\n\
             # keeps its restart policy (Podman before 5.1 cannot change it), and must not\n\
             # start at boot next to the container that replaced it.\n\
             [Service]\nExecStart=\nExecStart=/bin/sh -c \"{}\"\n",
            PODMAN_BOOT_START.replace('$', "$$")
        );
        BootGuard { path, contents }
    }

    /// Writes the drop-in (atomically, synced) unless it is there already.
    pub fn install(&self) -> std::io::Result<bool> {
        if std::fs::read_to_string(&self.path).ok().as_deref() == Some(self.contents.as_str()) {
            return Ok(false);
        }
        std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new("/")))?;
        crate::atomic_file::replace(&self.path, &self.contents, 0o644, None)?;
        Ok(true)
    }
}

/// Files Podman creates in a container's writable layer when the image
/// lacks them (its mount points for the files it bind-mounts, and the mtab
/// link); its changes endpoint hides the files but lists their parents.
const PODMAN_LAYER_FILES: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/run/.containerenv",
    "/run/secrets",
];

impl Flavour {
    pub fn new(kind: EngineKind, version: &str) -> Self {
        Flavour {
            kind,
            version: parse_version(version),
            systemd: Path::new("/run/systemd/system").is_dir(),
        }
    }

    fn is_podman(&self) -> bool {
        self.kind == EngineKind::Podman
    }

    /// Paths the engine itself puts into the writable layer: a recreate
    /// loses nothing there (the new container gets its own).
    pub fn own_layer_files(&self) -> &'static [&'static str] {
        if self.is_podman() {
            PODMAN_LAYER_FILES
        } else {
            &[]
        }
    }

    /// Whether a container's restart policy can be changed after create:
    /// Podman's compat and libpod update endpoints take one only from 5.1
    /// (4.3.1's libpod update changes cgroup resources only).
    pub fn updates_restart_policy(&self) -> bool {
        !self.is_podman() || self.version >= (5, 1, 0)
    }

    /// Whether the engine runs a container's healthcheck on its own: Podman
    /// schedules it with systemd timers, so without systemd nobody does and
    /// the health stays `starting`.
    pub fn runs_healthchecks(&self) -> bool {
        !self.is_podman() || self.systemd
    }

    /// The guard a checkpoint with restart policy `policy` needs against
    /// the engine's boot-time restart, where its policy cannot be set to
    /// `no`: Podman's `podman-restart.service` runs `podman start --all
    /// --filter restart-policy=always` at boot, which would start the
    /// checkpoint next to its successor, on the same data.
    pub fn checkpoint_boot_guard(&self, policy: &str) -> Option<BootGuard> {
        (!self.updates_restart_policy() && policy == "always").then(BootGuard::podman_restart)
    }

    pub fn describe(&self) -> String {
        let (a, b, c) = self.version;
        format!(
            "{} {a}.{b}.{c}{}",
            self.kind,
            if self.systemd { "" } else { " (no systemd)" }
        )
    }
}

/// The static addresses a Podman container was created with, per network,
/// from its `CreateCommand` (`--ip`, `--ip6` with one `--network NAME`, or
/// `--network NAME:ip=A,ip6=B`): Podman (4.3.1 at least) shows them nowhere
/// in inspect, and a recreate that dropped them would move the service.
/// A container created through the API has no `CreateCommand`: nothing is
/// known, and its address is the engine's choice again.
pub fn podman_static_addresses(create_command: &[String]) -> Vec<(String, StaticAddress)> {
    let mut networks: Vec<(String, StaticAddress)> = Vec::new();
    let mut loose = StaticAddress::default();
    let mut args = create_command.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next().cloned());
        match flag {
            "--ip" => loose.ipv4 = value(),
            "--ip6" => loose.ipv6 = value(),
            "--network" | "--net" => {
                let Some(value) = value() else { continue };
                // `NAME:ip=A,ip6=B` (options after the colon), or `A,B`.
                match value.split_once(':') {
                    Some((name, options)) => {
                        let mut address = StaticAddress::default();
                        for option in options.split(',') {
                            match option.split_once('=') {
                                Some(("ip", ip)) => address.ipv4 = Some(ip.into()),
                                Some(("ip6", ip)) => address.ipv6 = Some(ip.into()),
                                _ => {}
                            }
                        }
                        networks.push((name.to_string(), address));
                    }
                    None => networks.extend(
                        value
                            .split(',')
                            .filter(|n| !n.is_empty())
                            .map(|n| (n.to_string(), StaticAddress::default())),
                    ),
                }
            }
            _ => {}
        }
    }
    if loose != StaticAddress::default() && networks.len() == 1 {
        let only = &mut networks[0].1;
        only.ipv4 = only.ipv4.take().or(loose.ipv4);
        only.ipv6 = only.ipv6.take().or(loose.ipv6);
    }
    networks.retain(|(_, a)| *a != StaticAddress::default());
    networks
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticAddress {
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

/// "4.3.1", "5.1.0-rc1", "28.2.2" → (4, 3, 1); what does not parse is 0.
fn parse_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split(['.', '-', '+']).map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman(version: &str, systemd: bool) -> Flavour {
        Flavour {
            systemd,
            ..Flavour::new(EngineKind::Podman, version)
        }
    }

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn static_addresses_come_from_the_create_command_in_each_form() {
        let found = podman_static_addresses(&words(
            "podman run -d --name web --network appnet --ip 10.89.0.7 -p 127.0.0.1:80:8080 img",
        ));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "appnet");
        assert_eq!(found[0].1.ipv4.as_deref(), Some("10.89.0.7"));
        let found = podman_static_addresses(&words(
            "podman run --network=a:ip=10.1.0.2,ip6=fd00::2 --network b img",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.ipv6.as_deref(), Some("fd00::2"));
        assert!(podman_static_addresses(&words("podman run --network appnet img")).is_empty());
        // `--ip` with two networks names neither: nothing is guessed.
        assert!(
            podman_static_addresses(&words("podman run --network a --network b --ip 10.0.0.2 i"))
                .is_empty()
        );
    }

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse_version("4.3.1"), (4, 3, 1));
        assert_eq!(parse_version("5.1.0-rc1"), (5, 1, 0));
        assert_eq!(parse_version("28.2"), (28, 2, 0));
        assert_eq!(parse_version(""), (0, 0, 0));
    }

    #[test]
    fn podman_before_5_1_cannot_change_a_restart_policy_and_without_systemd_runs_no_healthcheck() {
        let old = podman("4.3.1", false);
        assert!(!old.updates_restart_policy());
        assert!(!old.runs_healthchecks());
        let guard = old.checkpoint_boot_guard("always").unwrap();
        assert!(
            guard.contents.contains("$$2 !~ /[.]fleet-pre-/"),
            "{}",
            guard.contents
        );
        assert!(old.checkpoint_boot_guard("unless-stopped").is_none());
        assert!(
            podman("5.1.0", true)
                .checkpoint_boot_guard("always")
                .is_none()
        );
        assert!(podman("5.1.0", true).updates_restart_policy());
        assert!(podman("5.1.0", true).runs_healthchecks());
        assert!(old.own_layer_files().contains(&"/etc/hosts"));
        let docker = Flavour {
            systemd: false,
            ..Flavour::new(EngineKind::Docker, "28.2.2")
        };
        assert!(docker.updates_restart_policy());
        assert!(docker.runs_healthchecks());
        assert!(docker.own_layer_files().is_empty());
    }
}
