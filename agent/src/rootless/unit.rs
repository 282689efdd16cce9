//! The unit that brings the moved container back at boot, rendered from
//! the very create request the place step made it with (ROOTLESS.md §9):
//! a Quadlet `.container` on Podman ≥ 4.6 with systemd and cgroup v2, keys
//! gated by the host's Podman version (what a version lacks goes through
//! `PodmanArgs=`); otherwise a systemd user `.service` in the shape of
//! `podman generate systemd --new` (`podman run --rm --replace`). Both are
//! root-owned, in directories the account cannot write: a Quadlet file in
//! `/etc/containers/systemd/users/UID/`, a service in `/etc/systemd/user/`
//! guarded by `ConditionUser=` and enabled for `default.target` there.

use std::path::{Path, PathBuf};

use fleet_core::capabilities::UnitFlavour;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::container::{str_at, strings_at};

/// A rendered unit: where it goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFile {
    pub flavour: UnitFlavour,
    pub path: PathBuf,
    /// The systemd unit a user manager runs (`fleet-web.service`, or the
    /// service Quadlet generates: `web.service`).
    pub service: String,
    pub text: String,
    /// What the create request has that the unit does not carry.
    pub notes: Vec<String>,
}

/// What the unit is made from.
pub struct UnitSource<'a> {
    pub name: &'a str,
    pub account: &'a str,
    pub uid: u32,
    pub podman: &'a Path,
    /// Podman's global flags on this host (an OCI runtime that works here,
    /// the cgroup manager without systemd).
    pub global_args: Vec<String>,
    /// The create request of the placed container (Docker API JSON).
    pub body: &'a Value,
    pub restart_policy: &'a str,
    pub stop_timeout: Option<i64>,
    /// The host's Podman (major, minor).
    pub release: (u32, u32),
}

/// Where root-owned user units live (`/etc` on a host; a directory of the
/// test's in tests).
#[derive(Debug, Clone)]
pub struct UnitDirs {
    pub systemd_user: PathBuf,
    pub quadlet_users: PathBuf,
}

impl Default for UnitDirs {
    fn default() -> Self {
        UnitDirs {
            systemd_user: "/etc/systemd/user".into(),
            quadlet_users: "/etc/containers/systemd/users".into(),
        }
    }
}

/// The flavour a host gets: Quadlet only where its file can be root-owned
/// outside the account's reach (Podman ≥ 4.6).
pub fn flavour(host: Option<UnitFlavour>, release: (u32, u32)) -> UnitFlavour {
    match host {
        Some(UnitFlavour::Quadlet) if release >= (4, 6) => UnitFlavour::Quadlet,
        _ => UnitFlavour::UserService,
    }
}

pub fn render(flavour: UnitFlavour, src: &UnitSource<'_>, dirs: &UnitDirs) -> UnitFile {
    match flavour {
        UnitFlavour::Quadlet => quadlet(src, dirs),
        UnitFlavour::UserService => user_service(src, dirs),
    }
}

/// systemd's `Restart=` for an engine restart policy.
fn restart(policy: &str) -> &'static str {
    match policy {
        "always" | "unless-stopped" => "always",
        "on-failure" => "on-failure",
        _ => "no",
    }
}

/// One word of a unit's command line, quoted for systemd: `%` and `$`
/// doubled, anything with spaces or quotes in double quotes.
fn quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

fn nanos_to_duration(ns: i64) -> String {
    let ms = ns / 1_000_000;
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A `podman run` flag: its name without `--`, and its value if it takes one.
type Flag = (String, Option<String>);

/// The configuration as `podman run` flags (without the image and its
/// command), and what has no flag here.
fn run_flags(body: &Value) -> (Vec<Flag>, Vec<String>) {
    let mut f: Vec<Flag> = Vec::new();
    let mut notes = Vec::new();
    let mut flag = |name: &str, value: &str| f.push((name.to_string(), Some(value.to_string())));
    let user = str_at(body, "/User");
    if !user.is_empty() {
        flag("user", user);
    }
    for env in strings_at(body, "/Env") {
        flag("env", &env);
    }
    let workdir = str_at(body, "/WorkingDir");
    if !workdir.is_empty() {
        flag("workdir", workdir);
    }
    let hostname = str_at(body, "/Hostname");
    if !hostname.is_empty() {
        flag("hostname", hostname);
    }
    if let Some(labels) = body.get("Labels").and_then(|l| l.as_object()) {
        for (k, v) in labels {
            if k != "PODMAN_SYSTEMD_UNIT" {
                flag("label", &format!("{k}={}", v.as_str().unwrap_or_default()));
            }
        }
    }
    let entrypoint = strings_at(body, "/Entrypoint");
    if !entrypoint.is_empty() {
        flag(
            "entrypoint",
            &serde_json::to_string(&entrypoint).unwrap_or_default(),
        );
    }
    let signal = str_at(body, "/StopSignal");
    if !signal.is_empty() {
        flag("stop-signal", signal);
    }
    if let Some(t) = body.get("StopTimeout").and_then(|v| v.as_i64()) {
        flag("stop-timeout", &t.to_string());
    }
    health_flags(body, &mut flag);
    let host = |field: &str| body.pointer(&format!("/HostConfig/{field}"));
    let mode = str_at(body, "/HostConfig/NetworkMode");
    if !mode.is_empty() {
        flag("network", mode);
    }
    let userns = str_at(body, "/HostConfig/UsernsMode");
    if !userns.is_empty() {
        flag("userns", userns);
    }
    for bind in strings_at(body, "/HostConfig/Binds") {
        flag("volume", &bind);
    }
    for mount in host("Mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let (kind, source, target) = (
            str_at(mount, "/Type"),
            str_at(mount, "/Source"),
            str_at(mount, "/Target"),
        );
        let ro = if mount.get("ReadOnly").and_then(|v| v.as_bool()) == Some(true) {
            ",ro"
        } else {
            ""
        };
        match kind {
            "bind" | "volume" => flag(
                "mount",
                &format!("type={kind},source={source},destination={target}{ro}"),
            ),
            "tmpfs" => flag("mount", &format!("type=tmpfs,destination={target}{ro}")),
            other => notes.push(format!("a {other} mount at {target} is not in the unit")),
        }
    }
    if let Some(tmpfs) = host("Tmpfs").and_then(|t| t.as_object()) {
        for (path, options) in tmpfs {
            let options = options.as_str().unwrap_or_default();
            flag(
                "tmpfs",
                &if options.is_empty() {
                    path.clone()
                } else {
                    format!("{path}:{options}")
                },
            );
        }
    }
    if let Some(bindings) = host("PortBindings").and_then(|p| p.as_object()) {
        for (port, hosts) in bindings {
            for b in hosts.as_array().into_iter().flatten() {
                let (ip, hp) = (str_at(b, "/HostIp"), str_at(b, "/HostPort"));
                flag(
                    "publish",
                    &match (ip.is_empty(), hp.is_empty()) {
                        (true, true) => port.clone(),
                        (true, false) => format!("{hp}:{port}"),
                        (false, _) => format!("{ip}:{hp}:{port}"),
                    },
                );
            }
        }
    }
    for cap in strings_at(body, "/HostConfig/CapAdd") {
        flag("cap-add", &cap);
    }
    for cap in strings_at(body, "/HostConfig/CapDrop") {
        flag("cap-drop", &cap);
    }
    for opt in strings_at(body, "/HostConfig/SecurityOpt") {
        flag("security-opt", &opt);
    }
    for u in host("Ulimits")
        .and_then(|u| u.as_array())
        .into_iter()
        .flatten()
    {
        let soft = u.get("Soft").and_then(|v| v.as_i64()).unwrap_or(0);
        let hard = u.get("Hard").and_then(|v| v.as_i64()).unwrap_or(soft);
        flag("ulimit", &format!("{}={soft}:{hard}", str_at(u, "/Name")));
    }
    if host("ReadonlyRootfs").and_then(|v| v.as_bool()) == Some(true) {
        f.push(("read-only".into(), None));
    }
    if host("Init").and_then(|v| v.as_bool()) == Some(true) {
        f.push(("init".into(), None));
    }
    (f, notes)
}

fn health_flags(body: &Value, flag: &mut impl FnMut(&str, &str)) {
    let Some(h) = body.get("Healthcheck").filter(|h| !h.is_null()) else {
        return;
    };
    let test = strings_at(h, "/Test");
    match test.first().map(String::as_str) {
        Some("CMD-SHELL") => flag("health-cmd", &test[1..].join(" ")),
        Some("CMD") => flag(
            "health-cmd",
            &serde_json::to_string(&test[1..]).unwrap_or_default(),
        ),
        Some("NONE") => flag("health-cmd", "none"),
        _ => return,
    }
    for (field, name) in [
        ("Interval", "health-interval"),
        ("Timeout", "health-timeout"),
        ("StartPeriod", "health-start-period"),
    ] {
        if let Some(ns) = h.get(field).and_then(|v| v.as_i64()).filter(|n| *n > 0) {
            flag(name, &nanos_to_duration(ns));
        }
    }
    if let Some(r) = h.get("Retries").and_then(|v| v.as_i64()).filter(|r| *r > 0) {
        flag("health-retries", &r.to_string());
    }
}

/// The image and its command: what follows the flags.
fn image_and_command(body: &Value) -> Vec<String> {
    let mut out = vec![str_at(body, "/Image").to_string()];
    out.extend(strings_at(body, "/Cmd"));
    out
}

/// The `podman generate systemd --new` shape (ROOTLESS.md §9.5).
fn user_service(src: &UnitSource<'_>, dirs: &UnitDirs) -> UnitFile {
    let (flags, notes) = run_flags(src.body);
    let podman = src.podman.display().to_string();
    let mut run = vec![podman.clone()];
    run.extend(src.global_args.iter().cloned());
    run.extend([
        "run".into(),
        "--cidfile=%t/%n.ctr-id".into(),
        "--cgroups=no-conmon".into(),
        "--rm".into(),
        "--sdnotify=conmon".into(),
        "--replace".into(),
        "-d".into(),
        "--name".into(),
        src.name.to_string(),
    ]);
    for (name, value) in flags {
        run.push(format!("--{name}"));
        run.extend(value);
    }
    run.extend(image_and_command(src.body));
    let exec: Vec<String> = run
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a.contains("%t") || a.contains("%n") || i == 0 {
                a.clone()
            } else {
                quote(a)
            }
        })
        .collect();
    let stop = src.stop_timeout.unwrap_or(10);
    let service = format!("fleet-{}.service", src.name);
    let text = format!(
        "# Written by fleet: {name} rootless under {account}. Edit the container through fleet.\n\
[Unit]\n\
Description={name} (fleet, rootless as {account})\n\
Wants=network-online.target\n\
After=network-online.target\n\
RequiresMountsFor=%t/containers\n\
ConditionUser={account}\n\
\n\
[Service]\n\
Environment=PODMAN_SYSTEMD_UNIT=%n\n\
Restart={restart}\n\
TimeoutStartSec=900\n\
TimeoutStopSec={stop_total}\n\
ExecStartPre=/bin/rm -f %t/%n.ctr-id\n\
ExecStart={exec}\n\
ExecStop={podman} stop --ignore -t {stop} --cidfile=%t/%n.ctr-id\n\
ExecStopPost={podman} rm -f --ignore -t {stop} --cidfile=%t/%n.ctr-id\n\
Type=notify\n\
NotifyAccess=all\n\
\n\
[Install]\n\
WantedBy=default.target\n",
        name = src.name,
        account = src.account,
        restart = restart(src.restart_policy),
        stop_total = 60 + stop,
        exec = exec.join(" "),
    );
    UnitFile {
        flavour: UnitFlavour::UserService,
        path: dirs.systemd_user.join(&service),
        service,
        text,
        notes,
    }
}

/// A Quadlet `.container`, keys gated by the host's Podman (§9.2); flags
/// without a key of that version go through `PodmanArgs=`.
fn quadlet(src: &UnitSource<'_>, dirs: &UnitDirs) -> UnitFile {
    let (flags, notes) = run_flags(src.body);
    let since = |v: (u32, u32)| src.release >= v;
    let mut keys: Vec<(String, String)> = vec![
        ("ContainerName".into(), src.name.into()),
        ("Image".into(), str_at(src.body, "/Image").into()),
    ];
    let mut podman_args = Vec::new();
    let mut global_args = Vec::new();
    if since((4, 8)) {
        global_args.extend(src.global_args.iter().cloned());
    } else {
        podman_args.extend(src.global_args.iter().cloned());
    }
    for (name, value) in flags {
        let key = match name.as_str() {
            _ if value.is_none() => None,
            "user" => Some("User"),
            "env" => Some("Environment"),
            "label" => Some("Label"),
            "volume" => Some("Volume"),
            "publish" => Some("PublishPort"),
            "network" => Some("Network"),
            "cap-add" => Some("AddCapability"),
            "cap-drop" => Some("DropCapability"),
            "userns" if since((4, 5)) => Some("UserNS"),
            "mount" if since((4, 5)) => Some("Mount"),
            "tmpfs" if since((4, 5)) => Some("Tmpfs"),
            "health-cmd" if since((4, 5)) => Some("HealthCmd"),
            "health-interval" if since((4, 5)) => Some("HealthInterval"),
            "health-timeout" if since((4, 5)) => Some("HealthTimeout"),
            "health-retries" if since((4, 5)) => Some("HealthRetries"),
            "health-start-period" if since((4, 5)) => Some("HealthStartPeriod"),
            "workdir" if since((4, 6)) => Some("WorkingDir"),
            "hostname" if since((4, 6)) => Some("HostName"),
            "ulimit" if since((4, 7)) => Some("Ulimit"),
            "entrypoint" if since((5, 0)) => Some("Entrypoint"),
            "stop-timeout" if since((5, 0)) => Some("StopTimeout"),
            "stop-signal" if since((5, 2)) => Some("StopSignal"),
            _ => None,
        };
        match (key, value) {
            (Some(key), Some(value)) => keys.push((key.into(), value)),
            (_, value) => {
                podman_args.push(format!("--{name}"));
                podman_args.extend(value);
            }
        }
    }
    let command = strings_at(src.body, "/Cmd");
    let mut text = format!(
        "# Written by fleet: {} rootless under {}. Edit the container through fleet.\n[Unit]\nDescription={} (fleet, rootless as {})\n\n[Container]\n",
        src.name, src.account, src.name, src.account
    );
    for (key, value) in &keys {
        text.push_str(&format!("{key}={}\n", quote(value)));
    }
    for (key, args) in [("GlobalArgs", &global_args), ("PodmanArgs", &podman_args)] {
        if !args.is_empty() {
            let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
            text.push_str(&format!("{key}={}\n", args.join(" ")));
        }
    }
    if !command.is_empty() {
        let args: Vec<String> = command.iter().map(|a| quote(a)).collect();
        text.push_str(&format!("Exec={}\n", args.join(" ")));
    }
    text.push_str(&format!(
        "\n[Service]\nRestart={}\nTimeoutStartSec=900\n\n[Install]\nWantedBy=default.target\n",
        restart(src.restart_policy)
    ));
    let file = format!("{}.container", src.name);
    UnitFile {
        flavour: UnitFlavour::Quadlet,
        path: dirs.quadlet_users.join(src.uid.to_string()).join(file),
        service: format!("{}.service", src.name),
        text,
        notes,
    }
}
