//! The id mapping a remap applies (and the inverse its undo applies), and
//! the target ids it hands entries to.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::RemapError;
use super::meta;

/// Old id → new id. Ids not named are left alone, unless `everything` is
/// set (an explicit choice for trees that must be wholly owned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    #[serde(default)]
    pub uids: BTreeMap<u32, u32>,
    #[serde(default)]
    pub gids: BTreeMap<u32, u32>,
    #[serde(default)]
    pub everything: Option<(u32, u32)>,
}

impl IdMapping {
    pub fn map_uid(&self, uid: u32) -> Option<u32> {
        self.everything
            .map(|(u, _)| u)
            .or_else(|| self.uids.get(&uid).copied())
            .filter(|new| *new != uid)
    }

    pub fn map_gid(&self, gid: u32) -> Option<u32> {
        self.everything
            .map(|(_, g)| g)
            .or_else(|| self.gids.get(&gid).copied())
            .filter(|new| *new != gid)
    }

    /// The ids entries are handed to.
    pub fn target_uids(&self) -> BTreeSet<u32> {
        match self.everything {
            Some((u, _)) => [u].into(),
            None => self
                .uids
                .iter()
                .filter(|(old, new)| old != new)
                .map(|(_, new)| *new)
                .collect(),
        }
    }

    pub fn target_gids(&self) -> BTreeSet<u32> {
        match self.everything {
            Some((_, g)) => [g].into(),
            None => self
                .gids
                .iter()
                .filter(|(old, new)| old != new)
                .map(|(_, new)| *new)
                .collect(),
        }
    }

    /// The mapping the undo gives entries the remap did not record: each
    /// target id back to its prior id. When several old ids map to one
    /// target, the lowest of them (the controller only ever maps from 0, so
    /// that is target → 0). An `everything` mapping has no inverse: its
    /// targets go back to the recorded original owner of the mount root
    /// (`root_owner`; none known, none mapped), uid and gid independently.
    pub fn inverse(&self, root_owner: Option<(u32, u32)>) -> IdMapping {
        let invert = |map: &BTreeMap<u32, u32>| {
            let mut inverse = BTreeMap::new();
            // Ascending old ids: the first seen for a target is the lowest.
            for (old, new) in map {
                if old != new {
                    inverse.entry(*new).or_insert(*old);
                }
            }
            inverse
        };
        match (self.everything, root_owner) {
            (Some((u, g)), Some((root_uid, root_gid))) => IdMapping {
                uids: [(u, root_uid)]
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .collect(),
                gids: [(g, root_gid)]
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .collect(),
                everything: None,
            },
            (Some(_), None) => IdMapping::default(),
            (None, _) => IdMapping {
                uids: invert(&self.uids),
                gids: invert(&self.gids),
                everything: None,
            },
        }
    }

    /// The new owner, if anything changes.
    pub fn target(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        match (self.map_uid(uid), self.map_gid(gid)) {
            (None, None) => None,
            (u, g) => Some((u.unwrap_or(uid), g.unwrap_or(gid))),
        }
    }

    /// A remap hands files *to* a service identity: never to root, and it
    /// must name something.
    pub fn validate(&self) -> Result<(), RemapError> {
        let targets = self
            .uids
            .values()
            .chain(self.gids.values())
            .copied()
            .chain(self.everything.iter().flat_map(|(u, g)| [*u, *g]));
        let mut any = false;
        for target in targets {
            any = true;
            if target == 0 {
                return Err(RemapError::InvalidMapping(
                    "a remap never hands files to uid or gid 0".into(),
                ));
            }
        }
        if !any {
            return Err(RemapError::InvalidMapping(
                "the mapping names no ids".into(),
            ));
        }
        Ok(())
    }
}

/// The target ids of a mapping, to tell an entry that already belongs to
/// one.
pub(super) struct Targets {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl Targets {
    pub(super) fn of(mapping: &IdMapping) -> Self {
        Targets {
            uids: mapping.target_uids(),
            gids: mapping.target_gids(),
        }
    }

    pub(super) fn owns(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    pub(super) fn named_in(&self, acl: &Option<Vec<u8>>) -> bool {
        acl.as_ref().is_some_and(|v| {
            meta::acl_names(v, &|u| self.uids.contains(&u), &|g| self.gids.contains(&g))
        })
    }
}
