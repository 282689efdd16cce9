//! Domain ⇄ wire conversions for the audit model. Wire → domain is lenient
//! where proto3 defaults stand for "absent" (empty strings become `None`).

use fleet_core::audit as domain;
use fleet_core::capabilities::HostCapabilities;

use crate::agent::v1 as pb;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn four(values: &[u32]) -> [u32; 4] {
    let mut out = [0; 4];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = *value;
    }
    out
}

impl From<domain::HostReport> for pb::HostReport {
    fn from(r: domain::HostReport) -> Self {
        pb::HostReport {
            engine: Some(r.engine.into()),
            containers: r.containers.into_iter().map(Into::into).collect(),
            warnings: r.warnings,
            inspected_at_unix_ms: r.inspected_at_unix_ms,
            hostname: r.hostname,
            host_users: r.host_users.into_iter().map(Into::into).collect(),
            host_groups: r.host_groups.into_iter().map(Into::into).collect(),
            capabilities: Some(r.capabilities.into()),
            host_subuids: r.host_subuids.into_iter().map(range_pb).collect(),
            host_subgids: r.host_subgids.into_iter().map(range_pb).collect(),
        }
    }
}

impl From<pb::HostReport> for domain::HostReport {
    fn from(r: pb::HostReport) -> Self {
        domain::HostReport {
            hostname: r.hostname,
            engine: r.engine.map(Into::into).unwrap_or_default(),
            containers: r.containers.into_iter().map(Into::into).collect(),
            warnings: r.warnings,
            inspected_at_unix_ms: r.inspected_at_unix_ms,
            host_users: r.host_users.into_iter().map(Into::into).collect(),
            host_groups: r.host_groups.into_iter().map(Into::into).collect(),
            capabilities: r.capabilities.map(Into::into).unwrap_or_default(),
            host_subuids: r.host_subuids.into_iter().map(range_domain).collect(),
            host_subgids: r.host_subgids.into_iter().map(range_domain).collect(),
        }
    }
}

fn range_pb(r: domain::SubordinateRange) -> pb::SubordinateRange {
    pb::SubordinateRange {
        owner: r.owner,
        start: r.start,
        count: r.count,
    }
}

fn range_domain(r: pb::SubordinateRange) -> domain::SubordinateRange {
    domain::SubordinateRange {
        owner: r.owner,
        start: r.start,
        count: r.count,
    }
}

impl From<HostCapabilities> for pb::HostCapabilities {
    fn from(c: HostCapabilities) -> Self {
        pb::HostCapabilities {
            probed: c.probed,
            podman_version: c.podman_version.unwrap_or_default(),
            quadlet: c.quadlet,
            systemd_running: c.systemd_running,
            loginctl: c.loginctl,
            cgroup_version: c.cgroup_version,
            newuidmap: c.newuidmap,
            newgidmap: c.newgidmap,
            unprivileged_port_start: c.unprivileged_port_start,
            net_tun_open: c.net_tun_open,
        }
    }
}

impl From<pb::HostCapabilities> for HostCapabilities {
    fn from(c: pb::HostCapabilities) -> Self {
        HostCapabilities {
            probed: c.probed,
            podman_version: non_empty(c.podman_version),
            quadlet: c.quadlet,
            systemd_running: c.systemd_running,
            loginctl: c.loginctl,
            cgroup_version: c.cgroup_version,
            newuidmap: c.newuidmap,
            newgidmap: c.newgidmap,
            unprivileged_port_start: c.unprivileged_port_start,
            net_tun_open: c.net_tun_open,
        }
    }
}

impl From<domain::HostAccount> for pb::HostAccount {
    fn from(a: domain::HostAccount) -> Self {
        pb::HostAccount {
            name: a.name,
            id: a.id,
        }
    }
}

impl From<pb::HostAccount> for domain::HostAccount {
    fn from(a: pb::HostAccount) -> Self {
        domain::HostAccount {
            name: a.name,
            id: a.id,
        }
    }
}

impl From<domain::FileOwner> for pb::FileOwner {
    fn from(o: domain::FileOwner) -> Self {
        pb::FileOwner {
            uid: o.uid,
            gid: o.gid,
            mode: o.mode,
        }
    }
}

impl From<pb::FileOwner> for domain::FileOwner {
    fn from(o: pb::FileOwner) -> Self {
        domain::FileOwner {
            uid: o.uid,
            gid: o.gid,
            mode: o.mode,
        }
    }
}

impl From<domain::RuntimeDir> for pb::RuntimeDir {
    fn from(d: domain::RuntimeDir) -> Self {
        pb::RuntimeDir {
            path: d.path,
            now: Some(d.now.into()),
            image: d.image.map(Into::into),
            why: d.why,
        }
    }
}

impl From<pb::RuntimeDir> for domain::RuntimeDir {
    fn from(d: pb::RuntimeDir) -> Self {
        domain::RuntimeDir {
            path: d.path,
            now: d.now.map(Into::into).unwrap_or_default(),
            image: d.image.map(Into::into),
            why: d.why,
        }
    }
}

impl From<domain::EngineFacts> for pb::EngineFacts {
    fn from(e: domain::EngineFacts) -> Self {
        pb::EngineFacts {
            kind: e.kind.as_str().to_string(),
            version: e.version,
            api_version: e.api_version,
            rootless: e.rootless,
            userns_remap: e.userns_remap,
            socket: e.socket,
        }
    }
}

impl From<pb::EngineFacts> for domain::EngineFacts {
    fn from(e: pb::EngineFacts) -> Self {
        domain::EngineFacts {
            kind: if e.kind == "podman" {
                domain::EngineKind::Podman
            } else {
                domain::EngineKind::Docker
            },
            version: e.version,
            api_version: e.api_version,
            rootless: e.rootless,
            userns_remap: e.userns_remap,
            socket: e.socket,
        }
    }
}

impl From<domain::ContainerReport> for pb::ContainerReport {
    fn from(c: domain::ContainerReport) -> Self {
        pb::ContainerReport {
            id: c.id,
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            state: c.state,
            identity: Some(c.identity.into()),
            findings: c.findings.into_iter().map(Into::into).collect(),
            mounts: c.mounts.into_iter().map(Into::into).collect(),
            compose_project: c.compose_project.unwrap_or_default(),
            compose_service: c.compose_service.unwrap_or_default(),
            pod: c.pod.unwrap_or_default(),
            errors: c.errors,
            config_fingerprint: c.config_fingerprint,
            users: c
                .users
                .into_iter()
                .map(|u| pb::ImageUser {
                    name: u.name,
                    uid: u.uid,
                    gid: u.gid,
                })
                .collect(),
            linked: c.linked,
            depends_on: c.depends_on,
            auto_remove: c.auto_remove,
            stop_timeout_secs: c.stop_timeout_secs,
            exposed_ports: c.exposed_ports,
            runtime_dirs: c.runtime_dirs.into_iter().map(Into::into).collect(),
            layer_loss: c.layer_loss,
            engine_notes: c.engine_notes,
            rootless_blockers: c.rootless_blockers,
            rootless_changes: c.rootless_changes,
            account: c.account.unwrap_or_default(),
        }
    }
}

impl From<pb::ContainerReport> for domain::ContainerReport {
    fn from(c: pb::ContainerReport) -> Self {
        domain::ContainerReport {
            id: c.id,
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            state: c.state,
            identity: c.identity.map(Into::into).unwrap_or_default(),
            findings: c.findings.into_iter().map(Into::into).collect(),
            mounts: c.mounts.into_iter().map(Into::into).collect(),
            compose_project: non_empty(c.compose_project),
            compose_service: non_empty(c.compose_service),
            pod: non_empty(c.pod),
            errors: c.errors,
            config_fingerprint: c.config_fingerprint,
            users: c
                .users
                .into_iter()
                .map(|u| domain::ImageUser {
                    name: u.name,
                    uid: u.uid,
                    gid: u.gid,
                })
                .collect(),
            linked: c.linked,
            depends_on: c.depends_on,
            auto_remove: c.auto_remove,
            stop_timeout_secs: c.stop_timeout_secs,
            exposed_ports: c.exposed_ports,
            runtime_dirs: c.runtime_dirs.into_iter().map(Into::into).collect(),
            layer_loss: c.layer_loss,
            engine_notes: c.engine_notes,
            rootless_blockers: c.rootless_blockers,
            rootless_changes: c.rootless_changes,
            account: non_empty(c.account),
        }
    }
}

impl From<domain::Identity> for pb::Identity {
    fn from(i: domain::Identity) -> Self {
        pb::Identity {
            configured_user: i.configured_user,
            uid: i.uid,
            gid: i.gid,
            resolution: i.resolution,
            processes: i.processes.into_iter().map(Into::into).collect(),
            verdict: Some(i.verdict.into()),
        }
    }
}

impl From<pb::Identity> for domain::Identity {
    fn from(i: pb::Identity) -> Self {
        domain::Identity {
            configured_user: i.configured_user,
            uid: i.uid,
            gid: i.gid,
            resolution: i.resolution,
            processes: i.processes.into_iter().map(Into::into).collect(),
            verdict: i.verdict.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<domain::ProcessIdentity> for pb::ProcessIdentity {
    fn from(p: domain::ProcessIdentity) -> Self {
        pb::ProcessIdentity {
            pid: p.pid,
            ppid: p.ppid,
            command: p.command,
            uids: p.uids.to_vec(),
            gids: p.gids.to_vec(),
            host_uids: p.host_uids.to_vec(),
        }
    }
}

impl From<pb::ProcessIdentity> for domain::ProcessIdentity {
    fn from(p: pb::ProcessIdentity) -> Self {
        domain::ProcessIdentity {
            pid: p.pid,
            ppid: p.ppid,
            command: p.command,
            uids: four(&p.uids),
            gids: four(&p.gids),
            host_uids: four(&p.host_uids),
        }
    }
}

impl From<domain::Verdict> for pb::Verdict {
    fn from(v: domain::Verdict) -> Self {
        use pb::verdict::Kind;
        let (kind, uid, host_uid, reason) = match v {
            domain::Verdict::Root => (Kind::Root, 0, 0, String::new()),
            domain::Verdict::StartsAsRootDropsTo { uid } => {
                (Kind::StartsAsRootDropsTo, uid, 0, String::new())
            }
            domain::Verdict::NonRoot => (Kind::NonRoot, 0, 0, String::new()),
            domain::Verdict::RootlessEngine { host_uid } => {
                (Kind::RootlessEngine, 0, host_uid, String::new())
            }
            domain::Verdict::UsernsRemapped { host_uid } => {
                (Kind::UsernsRemapped, 0, host_uid, String::new())
            }
            domain::Verdict::Unknown { reason } => (Kind::Unknown, 0, 0, reason),
        };
        pb::Verdict {
            kind: kind as i32,
            uid,
            host_uid,
            reason,
        }
    }
}

impl From<pb::Verdict> for domain::Verdict {
    fn from(v: pb::Verdict) -> Self {
        use pb::verdict::Kind;
        match Kind::try_from(v.kind).unwrap_or(Kind::Unspecified) {
            Kind::Root => domain::Verdict::Root,
            Kind::StartsAsRootDropsTo => domain::Verdict::StartsAsRootDropsTo { uid: v.uid },
            Kind::NonRoot => domain::Verdict::NonRoot,
            Kind::RootlessEngine => domain::Verdict::RootlessEngine {
                host_uid: v.host_uid,
            },
            Kind::UsernsRemapped => domain::Verdict::UsernsRemapped {
                host_uid: v.host_uid,
            },
            Kind::Unknown | Kind::Unspecified => domain::Verdict::Unknown { reason: v.reason },
        }
    }
}

impl From<domain::Severity> for pb::Severity {
    fn from(s: domain::Severity) -> Self {
        match s {
            domain::Severity::Info => pb::Severity::Info,
            domain::Severity::Low => pb::Severity::Low,
            domain::Severity::Medium => pb::Severity::Medium,
            domain::Severity::High => pb::Severity::High,
            domain::Severity::Critical => pb::Severity::Critical,
        }
    }
}

impl From<pb::Severity> for domain::Severity {
    fn from(s: pb::Severity) -> Self {
        match s {
            pb::Severity::Unspecified | pb::Severity::Info => domain::Severity::Info,
            pb::Severity::Low => domain::Severity::Low,
            pb::Severity::Medium => domain::Severity::Medium,
            pb::Severity::High => domain::Severity::High,
            pb::Severity::Critical => domain::Severity::Critical,
        }
    }
}

impl From<domain::Finding> for pb::Finding {
    fn from(f: domain::Finding) -> Self {
        pb::Finding {
            check: f.check,
            severity: pb::Severity::from(f.severity) as i32,
            title: f.title,
            detail: f.detail,
            missed_by_docker_bench: f.missed_by_docker_bench,
        }
    }
}

impl From<pb::Finding> for domain::Finding {
    fn from(f: pb::Finding) -> Self {
        domain::Finding {
            check: f.check,
            severity: pb::Severity::try_from(f.severity)
                .unwrap_or(pb::Severity::Unspecified)
                .into(),
            title: f.title,
            detail: f.detail,
            missed_by_docker_bench: f.missed_by_docker_bench,
        }
    }
}

impl From<domain::MountReport> for pb::MountReport {
    fn from(m: domain::MountReport) -> Self {
        pb::MountReport {
            kind: m.kind,
            source: m.source,
            destination: m.destination,
            read_only: m.read_only,
            volume_name: m.volume_name.unwrap_or_default(),
            ownership: Some(m.ownership.into()),
        }
    }
}

impl From<pb::MountReport> for domain::MountReport {
    fn from(m: pb::MountReport) -> Self {
        domain::MountReport {
            kind: m.kind,
            source: m.source,
            destination: m.destination,
            read_only: m.read_only,
            volume_name: non_empty(m.volume_name),
            ownership: m.ownership.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<domain::OwnershipSummary> for pb::OwnershipSummary {
    fn from(o: domain::OwnershipSummary) -> Self {
        pb::OwnershipSummary {
            top_owners: o
                .top_owners
                .into_iter()
                .map(|c| pb::OwnerCount {
                    uid: c.uid,
                    gid: c.gid,
                    entries: c.entries,
                })
                .collect(),
            entries: o.entries,
            bytes: o.bytes,
            bound_hit: o
                .bound_hit
                .map(|b| b.as_str().to_string())
                .unwrap_or_default(),
            error: o.error.unwrap_or_default(),
            skipped: o.skipped,
            root_changing: o.root_changing,
            left_alone: o.left_alone,
            left_alone_count: o.left_alone_count,
        }
    }
}

impl From<pb::OwnershipSummary> for domain::OwnershipSummary {
    fn from(o: pb::OwnershipSummary) -> Self {
        domain::OwnershipSummary {
            top_owners: o
                .top_owners
                .into_iter()
                .map(|c| domain::OwnerCount {
                    uid: c.uid,
                    gid: c.gid,
                    entries: c.entries,
                })
                .collect(),
            entries: o.entries,
            bytes: o.bytes,
            bound_hit: match o.bound_hit.as_str() {
                "entries" => Some(domain::WalkBound::Entries),
                "time" => Some(domain::WalkBound::Time),
                _ => None,
            },
            error: non_empty(o.error),
            skipped: o.skipped,
            root_changing: o.root_changing,
            left_alone: o.left_alone,
            left_alone_count: o.left_alone_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_report_round_trips_through_the_wire() {
        let report = domain::HostReport {
            hostname: "db1".into(),
            engine: domain::EngineFacts {
                kind: domain::EngineKind::Podman,
                version: "4.3.1".into(),
                api_version: "1.41".into(),
                rootless: true,
                userns_remap: false,
                socket: "/run/podman/podman.sock".into(),
            },
            containers: vec![domain::ContainerReport {
                id: "abc".into(),
                name: "pg".into(),
                identity: domain::Identity {
                    configured_user: "postgres".into(),
                    uid: Some(999),
                    gid: Some(999),
                    verdict: domain::Verdict::StartsAsRootDropsTo { uid: 999 },
                    processes: vec![domain::ProcessIdentity {
                        pid: 10,
                        ppid: 1,
                        command: "postgres".into(),
                        uids: [999, 999, 999, 999],
                        gids: [999, 999, 999, 999],
                        host_uids: [999, 999, 999, 999],
                    }],
                    ..Default::default()
                },
                findings: vec![domain::Finding {
                    check: "5.5".into(),
                    severity: domain::Severity::Critical,
                    title: "privileged".into(),
                    detail: String::new(),
                    missed_by_docker_bench: true,
                }],
                mounts: vec![domain::MountReport {
                    kind: "volume".into(),
                    volume_name: Some("pgdata".into()),
                    ownership: domain::OwnershipSummary {
                        top_owners: vec![domain::OwnerCount {
                            uid: 999,
                            gid: 999,
                            entries: 3,
                        }],
                        entries: 3,
                        bound_hit: Some(domain::WalkBound::Time),
                        root_changing: 2,
                        left_alone: vec!["dev/null (a device node)".into()],
                        left_alone_count: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                compose_project: Some("shop".into()),
                pod: None,
                exposed_ports: vec!["5432/tcp".into()],
                runtime_dirs: vec![
                    domain::RuntimeDir {
                        path: "/run/postgresql".into(),
                        now: domain::FileOwner {
                            uid: 999,
                            gid: 999,
                            mode: 0o2775,
                        },
                        image: Some(domain::FileOwner {
                            uid: 0,
                            gid: 0,
                            mode: 0o755,
                        }),
                        why: "owned by uid 999".into(),
                    },
                    domain::RuntimeDir {
                        path: "/tmp/pg".into(),
                        image: None,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            warnings: vec!["x vanished".into()],
            inspected_at_unix_ms: 42,
            host_users: vec![domain::HostAccount {
                name: "systemd-network".into(),
                id: 998,
            }],
            host_groups: vec![domain::HostAccount {
                name: "systemd-journal".into(),
                id: 999,
            }],
            host_subuids: vec![domain::SubordinateRange {
                owner: "svc-pg".into(),
                start: 300000,
                count: 65536,
            }],
            host_subgids: vec![domain::SubordinateRange {
                owner: "svc-pg".into(),
                start: 400000,
                count: 1000,
            }],
            capabilities: HostCapabilities {
                probed: true,
                podman_version: Some("podman version 4.3.1".into()),
                quadlet: false,
                systemd_running: true,
                loginctl: true,
                cgroup_version: 1,
                newuidmap: true,
                newgidmap: false,
                unprivileged_port_start: Some(1024),
                net_tun_open: true,
            },
        };
        let wire: pb::HostReport = report.clone().into();
        let back: domain::HostReport = wire.into();
        assert_eq!(back, report);
    }
}
