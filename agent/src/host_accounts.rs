//! The host's own accounts and groups, by name and id: without a user
//! namespace a container's uid is the host's uid, so a target id that
//! already names a host account (gid 999 is `systemd-journal` on Debian)
//! hands that account's files to the service, and the service's to it.
//! Planning reads them; the controller marks every collision.

use std::path::Path;

use fleet_core::audit::{HostAccount, SubordinateRange};

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";
pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// A passwd or group file larger than this is not read whole.
const MAX_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostAccounts {
    pub users: Vec<HostAccount>,
    pub groups: Vec<HostAccount>,
    pub subuids: Vec<SubordinateRange>,
    pub subgids: Vec<SubordinateRange>,
}

/// The host's accounts when planning (`wanted`), else none; a file that
/// cannot be read is a warning of the report, not a failed inspection.
pub fn for_planning(wanted: bool, warnings: &mut Vec<String>) -> HostAccounts {
    if !wanted {
        return HostAccounts::default();
    }
    read(Path::new(PASSWD), Path::new(GROUP), warnings)
}

pub fn read(passwd: &Path, group: &Path, warnings: &mut Vec<String>) -> HostAccounts {
    let mut load = |path: &Path| match read_bounded(path) {
        Ok(text) => parse(&text),
        Err(e) => {
            warnings.push(format!(
                "cannot read the host's {}: {e}; target ids are not checked against the host's accounts",
                path.display()
            ));
            Vec::new()
        }
    };
    let ranges = |path: &str| {
        // No file is no ranges (a host without rootless accounts).
        read_bounded(Path::new(path))
            .map(|text| subordinate(&text))
            .unwrap_or_default()
    };
    HostAccounts {
        users: load(passwd),
        groups: load(group),
        subuids: ranges(SUBUID),
        subgids: ranges(SUBGID),
    }
}

/// `owner:start:count` lines; anything else is skipped.
fn subordinate(text: &str) -> Vec<SubordinateRange> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?.to_string();
            let start = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            (!owner.is_empty() && !owner.starts_with('#')).then_some(SubordinateRange {
                owner,
                start,
                count,
            })
        })
        .collect()
}

/// The whole file, decoded leniently (a Latin-1 comment field must not
/// hide every account); a file over the bound is refused rather than cut,
/// since a cut last line could parse as a wrong id.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE >> 20
        )));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `name:x:id:...` lines (passwd and group share the first three fields);
/// comments, NIS `+`/`-` entries and malformed lines are passed over.
pub fn parse(text: &str) -> Vec<HostAccount> {
    let mut out: Vec<HostAccount> = text
        .lines()
        .filter(|line| !line.starts_with(['#', '+', '-']))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.trim();
            let _password = fields.next()?;
            let id = fields.next()?.trim().parse::<u32>().ok()?;
            (!name.is_empty()).then(|| HostAccount {
                name: name.to_string(),
                id,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.id, &a.name).cmp(&(b.id, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_read_and_anything_else_passed_over() {
        let ranges = subordinate(
            "alice:100000:65536\n# comment:1:2\nbroken\nbob:x:1\nsvc-web:165536:65536\n",
        );
        let read: Vec<(&str, u32, u32)> = ranges
            .iter()
            .map(|r| (r.owner.as_str(), r.start, r.end()))
            .collect();
        assert_eq!(
            read,
            [("alice", 100000, 165535), ("svc-web", 165536, 231071)]
        );
        assert!(!ranges[0].overlaps(&ranges[1]));
    }

    #[test]
    fn reads_names_and_ids_and_passes_over_what_is_not_an_account() {
        let accounts = parse(
            "root:x:0:0:root:/root:/bin/bash\n# a comment\n+nis\nsystemd-network:x:998:998::/:/usr/sbin/nologin\nbroken\nbad:x:abc:1\n",
        );
        assert_eq!(
            accounts,
            [
                HostAccount {
                    name: "root".into(),
                    id: 0
                },
                HostAccount {
                    name: "systemd-network".into(),
                    id: 998
                },
            ]
        );
        let mut warnings = Vec::new();
        let none = read(
            Path::new("/nonexistent/passwd"),
            Path::new(GROUP),
            &mut warnings,
        );
        assert!(none.users.is_empty() && !none.groups.is_empty());
        assert!(warnings[0].contains("/nonexistent/passwd"), "{warnings:?}");
        assert_eq!(
            for_planning(false, &mut warnings),
            HostAccounts::default(),
            "an audit does not carry them"
        );
    }

    /// A comment field in Latin-1 must not hide every account.
    #[test]
    fn a_file_that_is_not_utf8_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            b"root:x:0:0:root:/root:/bin/sh\nfran:x:1001:1001:Fran\xe7ois:/home/f:/bin/sh\n",
        )
        .unwrap();
        let mut warnings = Vec::new();
        let found = read(&passwd, &passwd, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            found.users.iter().map(|a| a.id).collect::<Vec<_>>(),
            [0, 1001]
        );
    }
}
