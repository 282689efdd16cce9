//! What a caller asks for (the account's name and ids, rootless or not),
//! where ids and homes come from (the agent's settings), what was made,
//! and the one naming rule.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::UserError;

/// Where ids and homes come from (agent configuration).
#[derive(Debug, Clone)]
pub struct UserSettings {
    pub uid_range: (u32, u32),
    pub home_root: PathBuf,
    /// Subordinate id ranges for rootless targets start at or above this.
    pub subid_base: u32,
    pub subid_count: u32,
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub subuid: PathBuf,
    pub subgid: PathBuf,
    /// The record of every id fleet ever allocated on this host
    /// (`id_record`); beside the passwd file when unset.
    pub id_record: Option<PathBuf>,
}

impl UserSettings {
    pub fn id_record_path(&self) -> PathBuf {
        self.id_record
            .clone()
            .unwrap_or_else(|| self.passwd.with_file_name(".fleet-allocated-ids"))
    }
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            uid_range: (61000, 61999),
            home_root: PathBuf::from("/var/lib/fleet-users"),
            subid_base: 1_000_000,
            subid_count: 65536,
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
            id_record: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Subordinate uid/gid ranges and linger, for a rootless Podman target.
    pub rootless: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOutcome {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub created_user: bool,
    pub created_group: bool,
    pub created_home: bool,
    pub subuids: Option<(u32, u32)>,
    pub subgids: Option<(u32, u32)>,
    pub linger_enabled: bool,
    pub notes: Vec<String>,
}

/// The one naming rule for dedicated users (shared with the controller's
/// planner): see `fleet_core::names`.
pub use fleet_core::names::derive_user_name as derive_name;

/// What useradd accepts (and Debian's default NAME_REGEX), at most 32 chars.
pub fn validate_name(name: &str) -> Result<(), UserError> {
    fleet_core::names::validate_user_name(name).map_err(|reason| UserError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        assert_eq!(derive_name("silly-tavern"), "svc-silly-tavern");
        assert_eq!(derive_name("My App_2!"), "svc-my-app_2");
        assert_eq!(derive_name("--"), "svc-service");
        let long = derive_name("a-very-long-service-name-that-goes-on-and-on");
        assert!(
            long.len() <= 32 && long.starts_with("svc-a-very-long-service"),
            "{long}"
        );
        assert_eq!(
            long,
            derive_name("a-very-long-service-name-that-goes-on-and-on"),
            "stable"
        );
        for name in ["svc-silly-tavern", "_x", "a1-b_c"] {
            validate_name(name).unwrap();
        }
        for bad in ["", "1abc", "Root", "a b", "a/b", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
