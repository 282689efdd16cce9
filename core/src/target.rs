//! Who a migrated container runs as, in types where root cannot be said:
//! `Ids` holds a non-zero uid and gid, so a plan, a run record or a step
//! request that would make root the target does not deserialize, and code
//! cannot build one. `Target` says where the container goes: in place (the
//! same engine, `User` set) or rootless (under its own account's rootless
//! Podman).

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::userns::UsernsMode;

/// A non-root uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawIds")]
pub struct Ids {
    pub uid: NonZeroU32,
    pub gid: NonZeroU32,
}

/// What a document says, before it is known not to be root: read through
/// `Ids::new`, so the error says why 0 is refused.
#[derive(Deserialize)]
struct RawIds {
    uid: u32,
    gid: u32,
}

impl TryFrom<RawIds> for Ids {
    type Error = RootId;

    fn try_from(raw: RawIds) -> Result<Self, RootId> {
        Ids::new(raw.uid, raw.gid)
    }
}

/// Why a uid:gid pair is not a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RootId {
    #[error("uid 0 is root, and a migration's target is never root: give a uid from 1")]
    Uid,
    #[error("gid 0 is root's group, and a migration's target is never root: give a gid from 1")]
    Gid,
}

impl Ids {
    pub fn new(uid: u32, gid: u32) -> Result<Self, RootId> {
        Ok(Ids {
            uid: NonZeroU32::new(uid).ok_or(RootId::Uid)?,
            gid: NonZeroU32::new(gid).ok_or(RootId::Gid)?,
        })
    }

    pub fn uid(self) -> u32 {
        self.uid.get()
    }

    pub fn gid(self) -> u32 {
        self.gid.get()
    }
}

impl fmt::Display for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// The user a migration gives the container, as the plan knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TargetUser {
    /// Ids the policy gave (`strategy = "UID:GID"`).
    Explicit { ids: Ids },
    /// The image's own non-root user.
    ImageUser { name: String, ids: Ids },
    /// A host account the run makes for the service; its ids come from the
    /// agent's range unless the policy gave them (a gid alone is the
    /// account's group, its uid still allocated).
    Dedicated {
        name: String,
        uid: Option<NonZeroU32>,
        gid: Option<NonZeroU32>,
    },
}

impl TargetUser {
    /// The ids, when the plan knows both before the run.
    pub fn known_ids(&self) -> Option<Ids> {
        match self {
            TargetUser::Explicit { ids } | TargetUser::ImageUser { ids, .. } => Some(*ids),
            TargetUser::Dedicated { uid, gid, .. } => Some(Ids {
                uid: (*uid)?,
                gid: (*gid)?,
            }),
        }
    }

    /// The account the run makes, if any.
    pub fn to_create(&self) -> Option<&str> {
        match self {
            TargetUser::Dedicated { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for TargetUser {
    /// `1000:1000`, `image user app`, `dedicated user svc-web`: what the
    /// plan shows as the target (its ids beside it where they differ).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUser::Explicit { ids } => write!(f, "{ids}"),
            TargetUser::ImageUser { name, .. } => write!(f, "image user {name}"),
            TargetUser::Dedicated { name, .. } => write!(f, "dedicated user {name}"),
        }
    }
}

/// Where a migrated container goes, and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "placement", rename_all = "kebab-case")]
pub enum Target {
    /// The same engine, recreated with `User` set to the user's ids.
    InPlace { user: TargetUser },
    /// Moved under `account`'s rootless Podman: the account is the host
    /// identity (a dedicated account, made by the run unless it exists);
    /// `inside` is the user in the container (the old one's when unset:
    /// root inside is the account outside).
    Rootless {
        account: TargetUser,
        userns: UsernsMode,
        #[serde(default)]
        inside: Option<(u32, u32)>,
    },
}

impl Target {
    /// The host identity the container ends up as: the user in place, the
    /// account rootless.
    pub fn user(&self) -> &TargetUser {
        match self {
            Target::InPlace { user } => user,
            Target::Rootless { account, .. } => account,
        }
    }

    /// The rootless account's name, for a rootless target.
    pub fn rootless_account(&self) -> Option<&str> {
        match self {
            Target::Rootless {
                account: TargetUser::Dedicated { name, .. },
                ..
            } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::InPlace { user } => write!(f, "{user}"),
            Target::Rootless {
                account, userns, ..
            } => {
                let name = match account {
                    TargetUser::Dedicated { name, .. } | TargetUser::ImageUser { name, .. } => {
                        name.clone()
                    }
                    TargetUser::Explicit { ids } => ids.to_string(),
                };
                match userns {
                    UsernsMode::Default => write!(f, "rootless under {name}"),
                    UsernsMode::KeepId { uid, gid } => {
                        write!(f, "rootless under {name} (keep-id:uid={uid},gid={gid})")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ids_are_refused_by_construction_and_by_deserialization() {
        assert_eq!(Ids::new(0, 1000), Err(RootId::Uid));
        assert_eq!(Ids::new(1000, 0), Err(RootId::Gid));
        let ids = Ids::new(1000, 1001).expect("non-root");
        assert_eq!(ids.to_string(), "1000:1001");
        let text = serde_json::to_string(&ids).expect("serializes");
        assert_eq!(text, r#"{"uid":1000,"gid":1001}"#);
        assert_eq!(serde_json::from_str::<Ids>(&text).expect("reads"), ids);
        for root in [r#"{"uid":0,"gid":1001}"#, r#"{"uid":1000,"gid":0}"#] {
            let error = serde_json::from_str::<Ids>(root).unwrap_err().to_string();
            assert!(error.contains("is root"), "{root}: {error}");
        }
        let planned =
            r#"{"placement":"in-place","user":{"kind":"explicit","ids":{"uid":0,"gid":0}}}"#;
        assert!(serde_json::from_str::<Target>(planned).is_err());
    }

    #[test]
    fn a_dedicated_user_knows_its_ids_only_when_both_are_given() {
        let gid_alone = TargetUser::Dedicated {
            name: "svc-db".into(),
            uid: None,
            gid: NonZeroU32::new(2001),
        };
        assert_eq!(gid_alone.known_ids(), None);
        assert_eq!(gid_alone.to_create(), Some("svc-db"));
        assert_eq!(gid_alone.to_string(), "dedicated user svc-db");
        let image = TargetUser::ImageUser {
            name: "app".into(),
            ids: Ids::new(999, 999).expect("non-root"),
        };
        assert_eq!(
            image.known_ids(),
            Some(Ids::new(999, 999).expect("non-root"))
        );
        assert_eq!(image.to_create(), None);
    }
}
