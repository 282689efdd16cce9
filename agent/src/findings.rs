//! Security findings per container, numbered as docker-bench-security
//! v1.6.0 numbers them (FIELD-NOTES §2), plus what its string compares miss.

use std::path::{Path, PathBuf};

use bollard::models::ContainerInspectResponse;
use fleet_core::audit::{Finding, Severity, Verdict};

use crate::identity::Resolved;

/// Docker's default capability set: adding one of these is not a finding.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Capabilities that are as good as root on the host.
const DANGEROUS_CAPS: &[&str] = &[
    "ALL",
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "DAC_READ_SEARCH",
    "NET_ADMIN",
    "BPF",
    "SYS_BOOT",
];

/// Host directories whose mounting hands the host to the container.
const SENSITIVE_DIRS: &[&str] = &[
    "/", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys", "/usr",
];

/// What the findings are computed from.
#[derive(Debug)]
pub struct FindingInput<'a> {
    pub doc: &'a ContainerInspectResponse,
    pub configured_user: &'a str,
    pub resolved: &'a Result<Resolved, String>,
    pub verdict: &'a Verdict,
    /// The engine's own API socket, canonicalized when possible.
    pub engine_socket: &'a Path,
}

fn finding(check: &str, severity: Severity, title: &str, detail: String) -> Finding {
    Finding {
        check: check.to_string(),
        severity,
        title: title.to_string(),
        detail,
        missed_by_docker_bench: false,
    }
}

/// docker-bench 4.1 compares `Config.User` to exactly these strings.
fn docker_bench_flags_user(user: &str) -> bool {
    matches!(user, "" | "0" | "root")
}

pub fn findings(input: &FindingInput<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    user_finding(input, &mut out);
    host_config_findings(input.doc, &mut out);
    mount_findings(input, &mut out);
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(&b.check)));
    out
}

fn user_finding(input: &FindingInput<'_>, out: &mut Vec<Finding>) {
    let user = input.configured_user;
    let shown = if user.is_empty() {
        "(empty)".to_string()
    } else {
        format!("'{user}'")
    };
    let configured_root = matches!(input.resolved, Ok(r) if r.uid == 0);
    let (severity, detail) = match input.verdict {
        Verdict::Root if configured_root => (
            Severity::High,
            format!("User {shown} resolves to uid 0 and the container runs as host root"),
        ),
        Verdict::Root => (
            Severity::High,
            format!("User {shown} is not root, but a process of the container holds uid 0"),
        ),
        Verdict::StartsAsRootDropsTo { uid } => (
            Severity::Medium,
            format!("User {shown} resolves to uid 0; the entrypoint drops to uid {uid}"),
        ),
        Verdict::RootlessEngine { host_uid } | Verdict::UsernsRemapped { host_uid }
            if configured_root =>
        {
            (
                Severity::Low,
                format!(
                    "User {shown} is root inside the container (host uid {host_uid}, not host root)"
                ),
            )
        }
        _ => return,
    };
    let mut f = finding(
        "4.1",
        severity,
        "Container runs as root (no non-root user set)",
        detail,
    );
    f.missed_by_docker_bench = !docker_bench_flags_user(user);
    out.push(f);
}

fn normalized_cap(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

// Long on purpose: one flat list of independent docker-bench checks in
// the benchmark's numbered order, which is the order of the findings.
fn host_config_findings(doc: &ContainerInspectResponse, out: &mut Vec<Finding>) {
    let Some(hc) = doc.host_config.as_ref() else {
        return;
    };
    let added: Vec<String> = hc
        .cap_add
        .iter()
        .flatten()
        .map(|c| normalized_cap(c))
        .filter(|c| !DEFAULT_CAPS.contains(&c.as_str()))
        .collect();
    if !added.is_empty() {
        let severity = if added.iter().any(|c| DANGEROUS_CAPS.contains(&c.as_str())) {
            Severity::High
        } else {
            Severity::Medium
        };
        out.push(finding(
            "5.4",
            severity,
            "Capabilities added beyond Docker's default set",
            format!("cap_add: {}", added.join(", ")),
        ));
    }
    if hc.privileged == Some(true) {
        out.push(finding(
            "5.5",
            Severity::Critical,
            "Privileged container",
            "--privileged gives every capability and every host device".into(),
        ));
    }
    let low_ports: Vec<String> = hc
        .port_bindings
        .iter()
        .flatten()
        .flat_map(|(port, bindings)| {
            bindings.iter().flatten().filter_map(move |b| {
                let host_port: u32 = b.host_port.as_deref()?.parse().ok()?;
                (host_port > 0 && host_port < 1025).then(|| format!("{host_port}->{port}"))
            })
        })
        .collect();
    if !low_ports.is_empty() {
        out.push(finding(
            "5.8",
            Severity::Medium,
            "Privileged host port mapped",
            low_ports.join(", "),
        ));
    }
    let mode_is_host = |mode: &Option<String>| mode.as_deref() == Some("host");
    if mode_is_host(&hc.network_mode) {
        out.push(finding(
            "5.10",
            Severity::Medium,
            "Host network namespace shared",
            "network_mode: host".into(),
        ));
    }
    if hc.readonly_rootfs != Some(true) {
        out.push(finding(
            "5.13",
            Severity::Low,
            "Root filesystem is writable",
            "read_only is not set".into(),
        ));
    }
    if mode_is_host(&hc.pid_mode) {
        out.push(finding(
            "5.16",
            Severity::High,
            "Host PID namespace shared",
            "pid: host".into(),
        ));
    }
    if mode_is_host(&hc.ipc_mode) {
        out.push(finding(
            "5.17",
            Severity::Medium,
            "Host IPC namespace shared",
            "ipc: host".into(),
        ));
    }
    let devices: Vec<String> = hc
        .devices
        .iter()
        .flatten()
        .filter_map(|d| d.path_on_host.clone())
        .collect();
    if !devices.is_empty() {
        out.push(finding(
            "5.18",
            Severity::Medium,
            "Host devices exposed",
            devices.join(", "),
        ));
    }
    if mode_is_host(&hc.uts_mode) {
        out.push(finding(
            "5.21",
            Severity::Medium,
            "Host UTS namespace shared",
            "uts: host".into(),
        ));
    }
    let security_opt = hc.security_opt.clone().unwrap_or_default();
    if security_opt
        .iter()
        .any(|o| o.replace(':', "=") == "seccomp=unconfined")
    {
        out.push(finding(
            "5.22",
            Severity::Medium,
            "Seccomp profile disabled",
            "security_opt: seccomp=unconfined".into(),
        ));
    }
    let no_new_privileges = security_opt.iter().any(|o| {
        let o = o.replace(':', "=");
        o == "no-new-privileges" || o == "no-new-privileges=true"
    });
    if !no_new_privileges {
        out.push(finding(
            "5.26",
            Severity::Low,
            "no-new-privileges is not set",
            "setuid binaries in the container can raise privileges".into(),
        ));
    }
    if hc.pids_limit.is_none_or(|limit| limit <= 0) {
        out.push(finding(
            "5.29",
            Severity::Low,
            "No PIDs limit",
            "pids_limit is not set: a fork bomb reaches the host".into(),
        ));
    }
    if mode_is_host(&hc.userns_mode) {
        out.push(finding(
            "5.31",
            Severity::Medium,
            "Host user namespace shared",
            "userns_mode: host".into(),
        ));
    }
}

fn canonical(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

fn mount_findings(input: &FindingInput<'_>, out: &mut Vec<Finding>) {
    for mount in input.doc.mounts.iter().flatten() {
        if mount.typ.as_deref() != Some("bind") {
            continue;
        }
        let Some(source) = mount.source.as_deref() else {
            continue;
        };
        let destination = mount.destination.as_deref().unwrap_or("?");
        let writable = mount.rw != Some(false);
        let resolved = canonical(source);
        let sensitive = SENSITIVE_DIRS.iter().find(|dir| {
            let dir = Path::new(dir);
            resolved == dir || (dir != Path::new("/") && resolved.starts_with(dir))
        });
        if let Some(dir) = sensitive {
            out.push(finding(
                "5.6",
                if writable {
                    Severity::High
                } else {
                    Severity::Medium
                },
                "Sensitive host directory mounted",
                format!(
                    "{source} (under {dir}) at {destination}, {}",
                    if writable { "read-write" } else { "read-only" }
                ),
            ));
        }
        let is_engine_socket = resolved == input.engine_socket
            || source.ends_with("docker.sock")
            || source.ends_with("podman.sock");
        let holds_engine_socket =
            !is_engine_socket && resolved.is_dir() && input.engine_socket.starts_with(&resolved);
        if is_engine_socket || holds_engine_socket {
            let mut f = finding(
                "5.32",
                Severity::Critical,
                "Container engine socket mounted",
                if holds_engine_socket {
                    format!(
                        "{source} at {destination} contains the engine socket {}",
                        input.engine_socket.display()
                    )
                } else {
                    format!("{source} at {destination}: full control of the engine, and the host")
                },
            );
            f.missed_by_docker_bench = !source.contains("docker.sock");
            out.push(f);
        }
    }
}
