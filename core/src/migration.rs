//! What a plan and a run say about one container's migration beyond its
//! decision: the paths whose owner changes and what stays as it is, ids
//! that already belong to a host account, runtime directories, what the
//! ownership walk left alone, and the downtime. The controller records
//! these; fleetctl reads them with the same types.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::audit::FileOwner;

/// One mount whose files change owner, with the audit's estimates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub destination: String,
    pub source: String,
    pub entries: u64,
    /// Entries the remap will change (the audit's walk, by the remap's rules).
    pub changing: u64,
    pub bytes: u64,
    /// The audit's walk stopped at its bound: the counts are at least these.
    pub partial: bool,
    /// What the remap will leave alone, known in advance (at most 20,
    /// `path (why)`, relative to the mount), and how many in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    #[serde(default)]
    pub left_alone_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdKind {
    Uid,
    Gid,
}

/// A target id that already belongs to an account or group of the host
/// (without a user namespace the container's ids are the host's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdCollision {
    pub kind: IdKind,
    pub id: u32,
    /// The host account (uid) or group (gid) that has it.
    pub owner: String,
}

impl fmt::Display for IdCollision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            IdKind::Uid => write!(f, "uid {} is the host's user {}", self.id, self.owner),
            IdKind::Gid => write!(f, "gid {} is the host's group {}", self.id, self.owner),
        }
    }
}

/// A directory of the container's writable layer, outside its mounts,
/// that its processes own or write: the recreate gives it to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDirPlan {
    pub path: String,
    pub now: FileOwner,
    /// In the image the new container starts from (None: not there).
    pub image: Option<FileOwner>,
    /// What the recreate gives it (None: the ids of a user the run creates).
    pub target: Option<FileOwner>,
    pub why: String,
}

fn owner(o: &FileOwner) -> String {
    format!("{}:{} {:04o}", o.uid, o.gid, o.mode)
}

impl fmt::Display for RuntimeDirPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let image = self.image.as_ref().map_or("not in the image".into(), |o| {
            format!("{} in the image", owner(o))
        });
        let target = self.target.as_ref().map_or_else(
            || format!("the new user's ids, {:04o}", self.now.mode),
            owner,
        );
        write!(
            f,
            "{}: {} now ({}), {image} → {target}",
            self.path,
            owner(&self.now),
            self.why
        )
    }
}

/// A list the agent reports as its true length and its first names
/// (sorted, at most `Listed::MAX`): a tree with a million raced entries
/// reports a count and twenty paths, not a million paths. Reads the older
/// form too, a plain array of every name (journals on hosts hold it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ListedForm")]
pub struct Listed {
    pub count: u64,
    pub paths: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListedForm {
    Counted {
        #[serde(default)]
        count: u64,
        #[serde(default)]
        paths: Vec<String>,
    },
    Every(Vec<String>),
}

impl From<ListedForm> for Listed {
    fn from(form: ListedForm) -> Self {
        match form {
            ListedForm::Counted { count, paths } => Listed {
                count: count.max(paths.len() as u64),
                paths,
            },
            ListedForm::Every(paths) => Listed::of(paths),
        }
    }
}

impl Listed {
    /// Names kept with the count.
    pub const MAX: usize = 20;

    /// Every name: counted (duplicates once), the first `MAX` kept.
    pub fn of(mut paths: Vec<String>) -> Self {
        paths.sort();
        paths.dedup();
        let count = paths.len() as u64;
        paths.truncate(Self::MAX);
        Listed { count, paths }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.paths.is_empty()
    }

    /// One more name (counted; kept if it is among the first `MAX`).
    pub fn push(&mut self, path: String) {
        self.count += 1;
        self.keep(path);
    }

    fn keep(&mut self, path: String) {
        if self.paths.len() >= Self::MAX && self.paths.last().is_some_and(|last| path >= *last) {
            return;
        }
        match self.paths.binary_search(&path) {
            Ok(_) => {}
            Err(at) => {
                self.paths.insert(at, path);
                self.paths.truncate(Self::MAX);
            }
        }
    }

    /// Both lists: counts added, the first names of both kept.
    pub fn extend(&mut self, other: Listed) {
        self.count += other.count;
        for path in other.paths {
            self.keep(path);
        }
    }

    /// The same count, each name rewritten.
    pub fn map(self, f: impl Fn(String) -> String) -> Listed {
        let mut paths: Vec<String> = self.paths.into_iter().map(f).collect();
        paths.sort();
        Listed {
            count: self.count,
            paths,
        }
    }
}

/// What an ownership step left as it was, from its outcome: by the
/// walk's rules (hard links with names outside the tree, device nodes,
/// other filesystems) or because the tree moved under it (raced,
/// vanished), and mounts refused outright. Each kind is a count and its
/// first names (older run records, with every name, read as well).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftAlone {
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub hard_links: Listed,
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub devices: Listed,
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub other_filesystems: Listed,
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub raced: Listed,
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub vanished: Listed,
    #[serde(default, skip_serializing_if = "Listed::is_empty")]
    pub refused_mounts: Listed,
}

/// How many paths of each kind a one-line summary names.
const NAMED: usize = 3;

impl LeftAlone {
    pub fn is_empty(&self) -> bool {
        self.kinds().iter().all(|(list, _)| list.is_empty())
    }

    fn kinds(&self) -> [(&Listed, &'static str); 6] {
        [
            (&self.hard_links, "hard link(s) with names outside the tree"),
            (&self.devices, "device node(s)"),
            (&self.other_filesystems, "other filesystem(s), not entered"),
            (&self.raced, "entry(ies) that changed while the walk ran"),
            (
                &self.vanished,
                "entry(ies) that vanished while the walk ran",
            ),
            (&self.refused_mounts, "mount(s) refused"),
        ]
    }

    /// `2 hard link(s) with names outside the tree (a, b), 1 device node(s) (c)`.
    pub fn summary(&self) -> String {
        self.kinds()
            .iter()
            .filter(|(list, _)| !list.is_empty())
            .map(|(list, what)| {
                let mut named: Vec<&str> =
                    list.paths.iter().take(NAMED).map(String::as_str).collect();
                if list.count > named.len() as u64 {
                    named.push("…");
                }
                format!("{} {what} ({})", list.count, named.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn extend(&mut self, other: LeftAlone) {
        self.hard_links.extend(other.hard_links);
        self.devices.extend(other.devices);
        self.other_filesystems.extend(other.other_filesystems);
        self.raced.extend(other.raced);
        self.vanished.extend(other.vanished);
        self.refused_mounts.extend(other.refused_mounts);
    }
}

/// The ownership step's outcome as the agent journals it, read for what
/// it left alone; fields added later are ignored, missing ones empty.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnershipOutcomeView {
    #[serde(default)]
    pub mounts: Vec<(OwnedMountView, RemapReportView)>,
    #[serde(default)]
    pub refusals: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnedMountView {
    #[serde(default)]
    pub root: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemapReportView {
    #[serde(default)]
    pub other_filesystems: Listed,
    #[serde(default)]
    pub raced: Listed,
    #[serde(default)]
    pub refused_hardlinks: Listed,
    #[serde(default)]
    pub devices_left: Listed,
    #[serde(default)]
    pub vanished: Listed,
}

impl From<OwnershipOutcomeView> for LeftAlone {
    fn from(outcome: OwnershipOutcomeView) -> Self {
        let mut left = LeftAlone {
            refused_mounts: Listed::of(outcome.refusals),
            ..Default::default()
        };
        for (mount, report) in outcome.mounts {
            // The walk names entries relative to its mount: say which mount,
            // as the container sees it.
            let base = mount.destination.trim_end_matches('/').to_string();
            let under = |paths: Listed| -> Listed {
                paths.map(|p| {
                    if base.is_empty() || p.starts_with('/') {
                        p
                    } else {
                        format!("{base}/{p}")
                    }
                })
            };
            left.hard_links.extend(under(report.refused_hardlinks));
            left.devices.extend(under(report.devices_left));
            left.other_filesystems
                .extend(under(report.other_filesystems));
            left.raced.extend(under(report.raced));
            left.vanished.extend(under(report.vanished));
        }
        left
    }
}

/// `5.3 s (14.8 s from the stop request)`: the service's downtime, from
/// the old container exiting to the new one verified, and from the stop
/// request; None when neither was measured.
/// Why a container whose writable layer holds content of its own is not
/// recreated (the recreate starts from the image and loses it), and the
/// way out; the plan and the agent's recreate say the same.
pub fn layer_loss_refusal(lost: &[String]) -> String {
    let shown: Vec<&str> = lost.iter().take(8).map(String::as_str).collect();
    format!(
        "its writable layer holds content that a recreate loses ({}{}): move it to a volume, or allow the loss with allow_layer_loss = true in its policy rule",
        shown.join(", "),
        if lost.len() > 8 { ", ..." } else { "" }
    )
}

pub fn downtime_text(from_exit_ms: Option<u64>, from_stop_ms: Option<u64>) -> Option<String> {
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
    match (from_exit_ms, from_stop_ms) {
        (Some(exit), Some(stop)) => Some(format!(
            "{} ({} from the stop request)",
            secs(exit),
            secs(stop)
        )),
        (Some(exit), None) => Some(secs(exit)),
        (None, Some(stop)) => Some(format!("{} from the stop request", secs(stop))),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_left_alone_in_one_line() {
        let left = LeftAlone {
            hard_links: Listed::of(vec!["/srv/a (not all of its names are in the tree)".into()]),
            devices: Listed::of(vec!["d1".into(), "d2".into(), "d3".into(), "d4".into()]),
            ..Default::default()
        };
        assert_eq!(
            left.summary(),
            "1 hard link(s) with names outside the tree (/srv/a (not all of its names are in the tree)), 4 device node(s) (d1, d2, d3, …)"
        );
        assert!(LeftAlone::default().is_empty() && !left.is_empty());
    }

    #[test]
    fn a_listed_keeps_its_count_and_the_first_twenty_names() {
        let mut listed = Listed::default();
        for i in (0..1000).rev() {
            listed.push(format!("f{i:04}"));
        }
        assert_eq!(listed.count, 1000);
        let first: Vec<String> = (0..20).map(|i| format!("f{i:04}")).collect();
        assert_eq!(listed.paths, first);
        let mut both = Listed::of(vec!["b".into(), "a".into()]);
        both.extend(listed.clone());
        assert_eq!((both.count, both.paths.len()), (1002, 20));
        assert_eq!(&both.paths[..3], ["a", "b", "f0000"]);
    }

    #[test]
    fn downtime_says_both_definitions() {
        assert_eq!(
            downtime_text(Some(5_300), Some(14_800)).as_deref(),
            Some("5.3 s (14.8 s from the stop request)")
        );
        assert_eq!(downtime_text(Some(800), None).as_deref(), Some("0.8 s"));
        assert_eq!(downtime_text(None, None), None);
    }

    #[test]
    fn collisions_and_runtime_dirs_read_plainly() {
        let c = IdCollision {
            kind: IdKind::Gid,
            id: 999,
            owner: "systemd-journal".into(),
        };
        assert_eq!(c.to_string(), "gid 999 is the host's group systemd-journal");
        let dir = RuntimeDirPlan {
            path: "/var/run/app".into(),
            now: FileOwner {
                uid: 999,
                gid: 999,
                mode: 0o755,
            },
            image: Some(FileOwner {
                uid: 0,
                gid: 0,
                mode: 0o755,
            }),
            target: Some(FileOwner {
                uid: 2001,
                gid: 2001,
                mode: 0o755,
            }),
            why: "owned by uid 999".into(),
        };
        assert_eq!(
            dir.to_string(),
            "/var/run/app: 999:999 0755 now (owned by uid 999), 0:0 0755 in the image → 2001:2001 0755"
        );
    }
}
