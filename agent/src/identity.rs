//! Who a container runs as: `Config.User` resolved the way the engine
//! resolves it (moby/sys `user.GetExecUser`), and the verdict from the
//! processes that are really running.

use fleet_core::audit::{ProcessIdentity, Verdict};

/// The image's (or container's) own `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    /// None when the file does not exist (scratch, distroless).
    pub passwd: Option<Vec<PasswdEntry>>,
    pub group: Option<Vec<GroupEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

impl UserDb {
    pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?.trim().to_string();
                let _password = f.next()?;
                let uid = f.next()?.trim().parse().ok()?;
                let gid = f.next()?.trim().parse().ok()?;
                (!name.is_empty()).then_some(PasswdEntry { name, uid, gid })
            })
            .collect()
    }

    pub fn parse_group(text: &str) -> Vec<GroupEntry> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?.trim().to_string();
                let _password = f.next()?;
                let gid = f.next()?.trim().parse().ok()?;
                (!name.is_empty()).then_some(GroupEntry { name, gid })
            })
            .collect()
    }
}

/// `Config.User` split into its user and optional group parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec<'a> {
    pub user: &'a str,
    pub group: Option<&'a str>,
}

pub fn parse_user_spec(spec: &str) -> UserSpec<'_> {
    match spec.split_once(':') {
        Some((user, group)) => UserSpec {
            user,
            group: Some(group),
        },
        None => UserSpec {
            user: spec,
            group: None,
        },
    }
}

fn numeric(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Whether resolving `spec` needs the container's passwd/group files.
pub fn needs_user_db(spec: &str) -> bool {
    let spec = parse_user_spec(spec);
    let user_is_name = !spec.user.is_empty() && numeric(spec.user).is_none();
    let group_is_name = spec
        .group
        .is_some_and(|g| !g.is_empty() && numeric(g).is_none());
    // A numeric user without a group takes its primary group from passwd.
    let gid_from_passwd = numeric(spec.user).is_some() && spec.group.is_none();
    user_is_name || group_is_name || gid_from_passwd
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    /// How: "empty (image default: root)", "numeric", "passwd", ...
    pub how: String,
}

/// Resolves `spec` like the engine does: a numeric user is always a uid and
/// never a name (CVE-2016-3697); a name must be in the container's passwd.
pub fn resolve(spec: &str, db: &UserDb) -> Result<Resolved, String> {
    let parsed = parse_user_spec(spec);
    let passwd = db.passwd.as_deref();
    let (uid, mut gid, how) = if parsed.user.is_empty() {
        (0, 0, "empty (image default: root)".to_string())
    } else if let Some(uid) = numeric(parsed.user) {
        let entry = passwd.and_then(|p| p.iter().find(|e| e.uid == uid));
        let gid = entry.map(|e| e.gid).unwrap_or(0);
        (uid, gid, "numeric".to_string())
    } else {
        let Some(entries) = passwd else {
            return Err(format!(
                "user '{}' cannot be resolved: the container has no /etc/passwd",
                parsed.user
            ));
        };
        let entry = entries
            .iter()
            .find(|e| e.name == parsed.user)
            .ok_or_else(|| {
                format!(
                    "user '{}' is not in the container's /etc/passwd",
                    parsed.user
                )
            })?;
        (entry.uid, entry.gid, format!("passwd ({})", parsed.user))
    };
    if let Some(group) = parsed.group.filter(|g| !g.is_empty()) {
        gid = match numeric(group) {
            Some(gid) => gid,
            None => {
                let Some(groups) = db.group.as_deref() else {
                    return Err(format!(
                        "group '{group}' cannot be resolved: the container has no /etc/group"
                    ));
                };
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| g.gid)
                    .ok_or_else(|| {
                        format!("group '{group}' is not in the container's /etc/group")
                    })?
            }
        };
    }
    Ok(Resolved { uid, gid, how })
}

/// How container root relates to host root for this container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootMapping {
    /// The host uid of container uid 0, when it is not 0.
    pub root_host_uid: Option<u32>,
    pub rootless_engine: bool,
}

/// The verdict, from the running processes when there are any, else from
/// the configured user alone.
pub fn verdict(
    resolved: &Result<Resolved, String>,
    running: bool,
    main_pid: i32,
    processes: &[ProcessIdentity],
    mapping: RootMapping,
) -> Verdict {
    let root_elsewhere = |host_uid: u32| {
        if mapping.rootless_engine {
            Verdict::RootlessEngine { host_uid }
        } else {
            Verdict::UsernsRemapped { host_uid }
        }
    };
    if running && !processes.is_empty() {
        if processes.iter().any(ProcessIdentity::is_root) {
            return match mapping.root_host_uid.filter(|uid| *uid != 0) {
                Some(host_uid) => root_elsewhere(host_uid),
                None => Verdict::Root,
            };
        }
        let main = processes
            .iter()
            .find(|p| p.pid == main_pid)
            .unwrap_or(&processes[0]);
        let configured_root = matches!(resolved, Ok(r) if r.uid == 0);
        return if configured_root {
            Verdict::StartsAsRootDropsTo { uid: main.uids[1] }
        } else {
            Verdict::NonRoot
        };
    }
    match resolved {
        Ok(r) if r.uid == 0 => match mapping.root_host_uid.filter(|uid| *uid != 0) {
            Some(host_uid) => root_elsewhere(host_uid),
            None => Verdict::Root,
        },
        Ok(_) => Verdict::NonRoot,
        Err(reason) => Verdict::Unknown {
            reason: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> UserDb {
        UserDb {
            passwd: Some(UserDb::parse_passwd(
                "root:x:0:0:root:/root:/bin/sh\n# comment\ntoor:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n1001:x:4242:4242::/:/bin/sh\nbroken line\n",
            )),
            group: Some(UserDb::parse_group(
                "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
            )),
        }
    }

    fn uid(spec: &str) -> Result<(u32, u32), String> {
        resolve(spec, &db()).map(|r| (r.uid, r.gid))
    }

    #[test]
    fn every_spelling_of_root_is_root() {
        for spec in ["", "0", "0:0", "root", "root:root", "toor", "0:staff"] {
            assert_eq!(uid(spec).unwrap().0, 0, "{spec}");
        }
    }

    #[test]
    fn numeric_user_is_never_a_name() {
        // passwd has a user *named* "1001" with uid 4242: 1001 stays 1001.
        assert_eq!(uid("1001").unwrap(), (1001, 0));
        assert_eq!(
            uid("1000").unwrap(),
            (1000, 1000),
            "primary group from passwd"
        );
        assert_eq!(uid("1000:50").unwrap(), (1000, 50));
        assert_eq!(uid("nobody").unwrap(), (65534, 65534));
        assert_eq!(uid("app:staff").unwrap(), (1000, 50));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let err = uid("ghost").unwrap_err();
        assert!(
            err.contains("'ghost'") && err.contains("/etc/passwd"),
            "{err}"
        );
        let err = uid("app:wheel").unwrap_err();
        assert!(err.contains("'wheel'"), "{err}");
        let err = resolve("app", &UserDb::default()).unwrap_err();
        assert!(err.contains("no /etc/passwd"), "{err}");
        assert!(needs_user_db("app") && needs_user_db("1000") && !needs_user_db("1000:1000"));
        assert!(!needs_user_db(""));
    }

    fn process(pid: i32, uid: u32) -> ProcessIdentity {
        ProcessIdentity {
            pid,
            ppid: 0,
            command: "x".into(),
            uids: [uid; 4],
            gids: [uid; 4],
            host_uids: [uid; 4],
        }
    }

    const HOST_ROOT: RootMapping = RootMapping {
        root_host_uid: None,
        rootless_engine: false,
    };

    #[test]
    fn verdicts_follow_the_processes() {
        let root = resolve("", &db());
        let app = resolve("app", &db());
        assert_eq!(
            verdict(&root, true, 1, &[process(1, 0)], HOST_ROOT),
            Verdict::Root
        );
        assert_eq!(
            verdict(&root, true, 1, &[process(1, 1000)], HOST_ROOT),
            Verdict::StartsAsRootDropsTo { uid: 1000 }
        );
        assert_eq!(
            verdict(&app, true, 1, &[process(1, 1000)], HOST_ROOT),
            Verdict::NonRoot
        );
        // Root parent with a non-root child is still root.
        assert_eq!(
            verdict(
                &root,
                true,
                1,
                &[process(1, 0), process(2, 1000)],
                HOST_ROOT
            ),
            Verdict::Root
        );
        // A saved uid of 0 is root: it can be taken back.
        let mut sneaky = process(1, 1000);
        sneaky.uids[2] = 0;
        assert_eq!(verdict(&app, true, 1, &[sneaky], HOST_ROOT), Verdict::Root);
        // Stopped: from the configuration.
        assert_eq!(verdict(&root, false, 0, &[], HOST_ROOT), Verdict::Root);
        assert_eq!(verdict(&app, false, 0, &[], HOST_ROOT), Verdict::NonRoot);
        assert!(matches!(
            verdict(&resolve("ghost", &db()), false, 0, &[], HOST_ROOT),
            Verdict::Unknown { .. }
        ));
        let rootless = RootMapping {
            root_host_uid: Some(1000),
            rootless_engine: true,
        };
        assert_eq!(
            verdict(&root, true, 1, &[process(1, 0)], rootless),
            Verdict::RootlessEngine { host_uid: 1000 }
        );
        let remapped = RootMapping {
            root_host_uid: Some(100000),
            rootless_engine: false,
        };
        assert_eq!(
            verdict(&root, false, 0, &[], remapped),
            Verdict::UsernsRemapped { host_uid: 100000 }
        );
    }
}
