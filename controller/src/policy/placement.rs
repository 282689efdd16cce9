//! A rule's placement keys: `target = "in-place" | "rootless"`, and for a
//! rootless target `account`, `userns` and `publish_low_ports`. Each
//! mistake names the rule's line and the fix.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Where a migrated container goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "kebab-case")]
pub enum Placement {
    /// The same engine, recreated with `User` set.
    InPlace,
    /// Under its own account's rootless Podman.
    Rootless {
        /// The account; named after the service when unset.
        account: Option<String>,
        userns: UsernsChoice,
    },
}

impl Placement {
    /// `--target rootless` with nothing else said.
    pub fn rootless() -> Self {
        Placement::Rootless {
            account: None,
            userns: UsernsChoice::Default,
        }
    }
}

/// ROOTLESS.md §3: the account's namespace as it is (container root is
/// the account), or `keep-id` (the container's user is the account).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsernsChoice {
    #[default]
    Default,
    KeepId,
}

/// The rule's keys as written.
pub(super) struct PlacementKeys<'a> {
    pub target: Option<&'a Spanned<String>>,
    pub account: Option<&'a Spanned<String>>,
    pub userns: Option<&'a Spanned<String>>,
    pub publish_low_ports: Option<&'a Spanned<String>>,
}

/// The rule's placement, or the span and the complaint.
pub(super) fn placement(
    keys: &PlacementKeys<'_>,
) -> Result<Option<Placement>, (std::ops::Range<usize>, String)> {
    let rootless = match keys.target {
        None => None,
        Some(t) => match t.get_ref().as_str() {
            "in-place" => Some(false),
            "rootless" => Some(true),
            other => {
                return Err((
                    t.span(),
                    format!(
                        "unknown target \"{other}\": use \"in-place\" (User set on the same engine) or \"rootless\" (its own account's rootless Podman)"
                    ),
                ));
            }
        },
    };
    if rootless != Some(true) {
        for (key, value) in [
            ("account", keys.account),
            ("userns", keys.userns),
            ("publish_low_ports", keys.publish_low_ports),
        ] {
            if let Some(v) = value {
                return Err((v.span(), format!("`{key}` goes with target = \"rootless\"")));
            }
        }
        return Ok(rootless.map(|_| Placement::InPlace));
    }
    let account = match keys.account {
        None => None,
        Some(a) => {
            fleet_core::names::validate_user_name(a.get_ref())
                .map_err(|why| (a.span(), format!("account \"{}\": {why}", a.get_ref())))?;
            Some(a.get_ref().clone())
        }
    };
    let userns = match keys.userns.map(|u| (u.span(), u.get_ref().as_str())) {
        None | Some((_, "default")) => UsernsChoice::Default,
        Some((_, "keep-id")) => UsernsChoice::KeepId,
        Some((span, other)) => {
            return Err((
                span,
                format!(
                    "unknown userns \"{other}\": use \"default\" (root inside is the account) or \"keep-id\" (the container's user is the account)"
                ),
            ));
        }
    };
    if let Some(p) = keys.publish_low_ports {
        match p.get_ref().as_str() {
            "refuse" => {}
            other if other.starts_with("remap:") => {
                return Err((
                    p.span(),
                    format!(
                        "publish_low_ports = \"{other}\" is not supported yet: publish the port from the host's unprivileged start up, or keep \"refuse\""
                    ),
                ));
            }
            other => {
                return Err((
                    p.span(),
                    format!("unknown publish_low_ports \"{other}\": use \"refuse\""),
                ));
            }
        }
    }
    Ok(Some(Placement::Rootless { account, userns }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use std::path::Path;

    fn err(text: &str) -> String {
        Policy::parse(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn each_placement_mistake_names_its_line_and_the_fix() {
        for (text, line, says) in [
            (
                "[[rule]]\nname = \"a\"\ntarget = \"rootful\"\n",
                3,
                "use \"in-place\"",
            ),
            (
                "[[rule]]\nname = \"a\"\naccount = \"svc-a\"\n",
                3,
                "`account` goes with target = \"rootless\"",
            ),
            (
                "[[rule]]\ntarget = \"in-place\"\nuserns = \"keep-id\"\n",
                3,
                "`userns` goes with",
            ),
            (
                "[[rule]]\ntarget = \"rootless\"\nuserns = \"auto\"\n",
                3,
                "unknown userns \"auto\"",
            ),
            (
                "[[rule]]\ntarget = \"rootless\"\naccount = \"Bad Name\"\n",
                3,
                "account \"Bad Name\"",
            ),
            (
                "[[rule]]\ntarget = \"rootless\"\npublish_low_ports = \"remap:+8000\"\n",
                3,
                "not supported yet",
            ),
        ] {
            let e = err(text);
            assert!(
                e.contains(&format!("line {line}: rule 1")) && e.contains(says),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_rootless_rule_decides_the_account_and_namespace() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[[rule]]\nname = \"web\"\ntarget = \"rootless\"\naccount = \"svc-web\"\nuserns = \"keep-id\"\npublish_low_ports = \"refuse\"\n\n[[rule]]\nname = \"db\"\ntarget = \"in-place\"\n",
        )
        .unwrap();
        let rules: Vec<Option<Placement>> =
            policy.rules.iter().map(|r| r.placement.clone()).collect();
        assert_eq!(
            rules,
            [
                Some(Placement::Rootless {
                    account: Some("svc-web".into()),
                    userns: UsernsChoice::KeepId
                }),
                Some(Placement::InPlace)
            ]
        );
    }
}
