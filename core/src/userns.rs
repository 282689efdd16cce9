//! The user-namespace arithmetic of a rootless target (ROOTLESS.md §3):
//! which host id a container id is under an account's rootless Podman, in
//! its default mode or `keep-id:uid=N,gid=M`, and back. A file's new host
//! owner is `target.host(source.container(h))`: the composition of the two
//! mappings, for uids and gids separately; an id either side cannot map is
//! refused, never turned into 65534.

use serde::{Deserialize, Serialize};

/// An account's own namespace: container 0 is the account, 1..=count its
/// subordinate range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountIds {
    /// The account's uid (U) and primary gid (G): not always equal.
    pub uid: u32,
    pub gid: u32,
    pub subuid_start: u32,
    pub subgid_start: u32,
    /// The size of both ranges.
    pub count: u32,
}

/// How the container's ids sit on the account's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum UsernsMode {
    /// The account's namespace itself: container 0 is the account.
    Default,
    /// `keep-id:uid=N,gid=M`: container N (M) is the account.
    KeepId { uid: u32, gid: u32 },
}

/// Where a container's ids land on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mapping {
    /// A rootful engine without remapping: every id is itself.
    Identity,
    Rootless {
        account: AccountIds,
        userns: UsernsMode,
    },
}

/// One line of `/proc/PID/uid_map`: container start, host start, length.
pub type MapLine = (u32, u32, u32);

/// An id a mapping cannot carry over, with the side it failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    #[error("host {kind} {id} has no container id under the source's mapping")]
    NotInSource { kind: IdKind, id: u32 },
    #[error(
        "container {kind} {id} is beyond the account's {count} subordinate ids: give the account a larger range or change the file's owner first"
    )]
    BeyondRange { kind: IdKind, id: u32, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdKind {
    Uid,
    Gid,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        })
    }
}

impl Mapping {
    /// The namespace's lines for `kind`, as `/proc/PID/uid_map` shows them
    /// to root in the initial namespace.
    pub fn lines(&self, kind: IdKind) -> Vec<MapLine> {
        let Mapping::Rootless { account, userns } = *self else {
            return vec![(0, 0, u32::MAX)];
        };
        let (own, start, count) = side(&account, kind);
        match keep_id(userns, kind) {
            None => vec![(0, own, 1), (1, start, count)],
            Some(n) => vec![
                (0, start, n),
                (n, own, 1),
                (n + 1, start + n, count.saturating_sub(n)),
            ],
        }
    }

    /// The host id of container id `c`, if the namespace maps it.
    pub fn host(&self, kind: IdKind, c: u32) -> Option<u32> {
        self.lines(kind)
            .into_iter()
            .find(|&(inside, _, len)| c >= inside && c - inside < len)
            .map(|(inside, outside, _)| outside + (c - inside))
    }

    /// The container id of host id `h`, if the namespace maps it.
    pub fn container(&self, kind: IdKind, h: u32) -> Option<u32> {
        self.lines(kind)
            .into_iter()
            .find(|&(_, outside, len)| h >= outside && h - outside < len)
            .map(|(inside, outside, _)| inside + (h - outside))
    }
}

fn side(account: &AccountIds, kind: IdKind) -> (u32, u32, u32) {
    match kind {
        IdKind::Uid => (account.uid, account.subuid_start, account.count),
        IdKind::Gid => (account.gid, account.subgid_start, account.count),
    }
}

/// The container id that is the account, in keep-id mode (one past the
/// range leaves nothing above it; Podman refuses such a mode anyway).
fn keep_id(userns: UsernsMode, kind: IdKind) -> Option<u32> {
    match userns {
        UsernsMode::Default => None,
        UsernsMode::KeepId { uid, gid } => Some(match kind {
            IdKind::Uid => uid,
            IdKind::Gid => gid,
        }),
    }
}

/// The new host owner of a file owned by host id `h` under `source`, for
/// the same container id under `target`.
pub fn carry(source: &Mapping, target: &Mapping, kind: IdKind, h: u32) -> Result<u32, Unmappable> {
    let c = source
        .container(kind, h)
        .ok_or(Unmappable::NotInSource { kind, id: h })?;
    target.host(kind, c).ok_or(match target {
        Mapping::Rootless { account, .. } => Unmappable::BeyondRange {
            kind,
            id: c,
            count: account.count,
        },
        Mapping::Identity => Unmappable::NotInSource { kind, id: h },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdKind::{Gid, Uid};

    fn account(uid: u32, gid: u32, start: u32) -> AccountIds {
        AccountIds {
            uid,
            gid,
            subuid_start: start,
            subgid_start: start,
            count: 65536,
        }
    }

    fn rootless(account: AccountIds, userns: UsernsMode) -> Mapping {
        Mapping::Rootless { account, userns }
    }

    #[test]
    fn the_maps_are_the_ones_podman_4_3_1_gave_on_ci() {
        // ROOTLESS.md §3 (CI): U=999, G=995, S=300000.
        let acct = account(999, 995, 300000);
        assert_eq!(
            rootless(acct, UsernsMode::Default).lines(Uid),
            [(0, 999, 1), (1, 300000, 65536)]
        );
        let keep = rootless(acct, UsernsMode::KeepId { uid: 70, gid: 70 });
        assert_eq!(
            keep.lines(Uid),
            [(0, 300000, 70), (70, 999, 1), (71, 300070, 65466)]
        );
        assert_eq!(keep.host(Uid, 70), Some(999));
        assert_eq!(keep.host(Gid, 70), Some(995));
        assert_eq!(
            rootless(acct, UsernsMode::Default).host(Uid, 70),
            Some(300069)
        );
    }

    #[test]
    fn the_worked_examples_carry_over_and_back() {
        // ROOTLESS.md §3: S=200000, count=65536, U=990.
        let acct = account(990, 990, 200000);
        let default = rootless(acct, UsernsMode::Default);
        let keep = rootless(acct, UsernsMode::KeepId { uid: 999, gid: 999 });
        let rootful = Mapping::Identity;
        for (target, pairs) in [
            (
                &default,
                [(999, 200998), (0, 990), (70, 200069), (1000, 200999)],
            ),
            (
                &keep,
                [(999, 990), (0, 200000), (70, 200070), (1000, 200999)],
            ),
        ] {
            for (h, expected) in pairs {
                assert_eq!(carry(&rootful, target, Uid, h), Ok(expected), "{h}");
                // And back: the rollback's direction.
                assert_eq!(carry(target, &rootful, Uid, expected), Ok(h), "{expected}");
            }
        }
        // Shared → dedicated: A (U=991, S=100000, keep-id 999) → B (U=1002,
        // S=300000, default).
        let a = rootless(
            account(991, 991, 100000),
            UsernsMode::KeepId { uid: 999, gid: 999 },
        );
        let b = rootless(account(1002, 1002, 300000), UsernsMode::Default);
        assert_eq!(carry(&a, &b, Uid, 991), Ok(300998));
        assert_eq!(carry(&a, &b, Uid, 100070), Ok(300069));
        assert_eq!(carry(&a, &b, Uid, 100000), Ok(1002));
    }

    #[test]
    fn an_id_either_side_cannot_map_is_refused_not_squashed() {
        let acct = account(990, 990, 200000);
        let default = rootless(acct, UsernsMode::Default);
        // Container 65537 is past the range: no host id.
        let error = carry(&Mapping::Identity, &default, Uid, 65537).unwrap_err();
        assert_eq!(
            error,
            Unmappable::BeyondRange {
                kind: Uid,
                id: 65537,
                count: 65536
            }
        );
        assert!(error.to_string().contains("larger range"));
        // keep-id at the very top of the range maps nothing above it.
        let top = rootless(
            acct,
            UsernsMode::KeepId {
                uid: 65536,
                gid: 65536,
            },
        );
        assert_eq!(top.host(Uid, 65536), Some(990));
        assert_eq!(top.host(Uid, 65537), None);
        // A host id that is not the account's nor in its range (a root-owned
        // file in a rootless volume) has no container id.
        assert_eq!(
            carry(&default, &Mapping::Identity, Gid, 0),
            Err(Unmappable::NotInSource { kind: Gid, id: 0 })
        );
    }
}
