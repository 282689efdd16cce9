//! The migration policy: per container, what identity it moves to (or why
//! it is exempt), with its backup hooks, health gate and ordering class.
//! Rules are tried in order; the first that matches decides. An empty
//! policy works: the image's own non-root user when it has one, else a
//! dedicated user. `load` reads and checks the file.

mod load;
mod placement;
mod plain;

pub use load::PolicyError;
pub use placement::{Placement, UsernsChoice};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::Host;

/// How a container's new identity is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// The image's own non-root user (the one its entrypoint drops to, or
    /// the one its passwd names after the image).
    ImageUser,
    /// A new host user for the service; named by the agent's rule unless
    /// given, ids from the agent's range unless given (a gid alone is the
    /// user's group, its uid still allocated).
    Dedicated {
        name: Option<String>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Explicit {
        uid: u32,
        gid: u32,
    },
}

pub use fleet_core::step::Probe;

/// What a plan does when a target uid or gid already belongs to an account
/// or group of the host (without a user namespace, the same id is the same
/// owner on the host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnHostIdCollision {
    /// Migrate, and mark each collision in the plan, naming the account.
    #[default]
    Warn,
    /// Refuse the container, naming the account.
    Refuse,
    /// Move it to a dedicated account (ids from the agent's range) instead.
    Dedicated,
}

impl OnHostIdCollision {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "warn" => Some(OnHostIdCollision::Warn),
            "refuse" => Some(OnHostIdCollision::Refuse),
            "dedicated" => Some(OnHostIdCollision::Dedicated),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnHostIdCollision::Warn => "warn",
            OnHostIdCollision::Refuse => "refuse",
            OnHostIdCollision::Dedicated => "dedicated",
        }
    }
}

/// What the policy says about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// None: the default (image user when there is one, else dedicated).
    pub strategy: Option<Strategy>,
    pub exempt: Option<String>,
    pub hooks: Vec<Vec<String>>,
    pub probe: Option<Probe>,
    pub min_healthy_secs: u64,
    pub deadline_secs: u64,
    pub retention_days: u64,
    /// A class name (stateless, cache, queue, database) or a rank.
    pub order: Option<String>,
    /// Which rule decided (1-based), if any.
    pub rule: Option<usize>,
    pub on_host_id_collision: OnHostIdCollision,
    /// The rule accepts that a recreate loses what the writable layer holds.
    pub allow_layer_loss: bool,
    /// Where it goes; None: where the plan's `--target` says.
    pub placement: Option<Placement>,
}

pub use fleet_core::plan::PolicySource;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    source: PolicySource,
    defaults: Defaults,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Defaults {
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    retention_days: Option<u64>,
    on_host_id_collision: Option<OnHostIdCollision>,
}

/// One checked rule: what it matches, and what it decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    name: Option<String>,
    image: Option<String>,
    compose_project: Option<String>,
    compose_service: Option<String>,
    host_labels: BTreeMap<String, String>,
    strategy: Option<Strategy>,
    exempt: Option<String>,
    hooks: Vec<Vec<String>>,
    probe: Option<Probe>,
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    order: Option<String>,
    on_host_id_collision: Option<OnHostIdCollision>,
    allow_layer_loss: bool,
    placement: Option<Placement>,
}

/// What a rule is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub compose_project: Option<&'a str>,
    pub compose_service: Option<&'a str>,
    pub host: &'a Host,
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

impl Policy {
    /// What this policy was read from (empty for the default policy).
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    pub fn decide(&self, subject: &Subject<'_>) -> Decision {
        let defaults = &self.defaults;
        let mut decision = Decision {
            strategy: None,
            exempt: None,
            hooks: Vec::new(),
            probe: None,
            min_healthy_secs: defaults.min_healthy_secs.unwrap_or(5),
            deadline_secs: defaults.deadline_secs.unwrap_or(60),
            retention_days: defaults.retention_days.unwrap_or(14),
            order: None,
            rule: None,
            on_host_id_collision: defaults.on_host_id_collision.unwrap_or_default(),
            allow_layer_loss: false,
            placement: None,
        };
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(r, subject))
        else {
            return decision;
        };
        decision.strategy = rule.strategy.clone();
        decision.exempt = rule.exempt.clone();
        decision.hooks = rule.hooks.clone();
        decision.probe = rule.probe.clone();
        decision.min_healthy_secs = rule.min_healthy_secs.unwrap_or(decision.min_healthy_secs);
        decision.deadline_secs = rule.deadline_secs.unwrap_or(decision.deadline_secs);
        decision.order = rule.order.clone();
        decision.rule = Some(index + 1);
        decision.allow_layer_loss = rule.allow_layer_loss;
        decision.placement = rule.placement.clone();
        decision.on_host_id_collision = rule
            .on_host_id_collision
            .unwrap_or(decision.on_host_id_collision);
        decision
    }
}

fn matches(rule: &Rule, s: &Subject<'_>) -> bool {
    let field = |pattern: &Option<String>, value: Option<&str>| match pattern {
        None => true,
        Some(p) => value.is_some_and(|v| glob(p, v)),
    };
    field(&rule.name, Some(s.name))
        && field(&rule.image, Some(s.image))
        && field(&rule.compose_project, s.compose_project)
        && field(&rule.compose_service, s.compose_service)
        && rule
            .host_labels
            .iter()
            .all(|(k, v)| s.host.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::HostSource;
    use std::path::Path;

    fn host() -> Host {
        Host {
            name: "db1".into(),
            address: "127.0.0.1:1".into(),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            source: HostSource::Store,
        }
    }

    fn subject<'a>(name: &'a str, image: &'a str, host: &'a Host) -> Subject<'a> {
        Subject {
            name,
            image,
            compose_project: Some("shop"),
            compose_service: Some("web"),
            host,
        }
    }

    #[test]
    fn first_matching_rule_decides_and_defaults_apply() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            r#"
[defaults]
min_healthy_secs = 7

[[rule]]
name = "monitor-*"
exempt = "needs host /proc"

[[rule]]
image = "postgres:*"
strategy = "image-user"
order = "database"
hooks = [["sh", "-c", "pg_dumpall > /backup.sql"]]

[[rule]]
compose_service = "web"
host_labels = { env = "prod" }
strategy = "1500:1501"
probe = { http = "http://127.0.0.1:8080/health" }
"#,
        )
        .unwrap();
        let h = host();
        let d = policy.decide(&subject("monitor-node", "prom/node", &h));
        assert_eq!(d.exempt.as_deref(), Some("needs host /proc"));
        let d = policy.decide(&subject("pg", "postgres:16", &h));
        assert_eq!(
            (d.strategy, d.order.as_deref(), d.rule),
            (Some(Strategy::ImageUser), Some("database"), Some(2))
        );
        assert_eq!(d.min_healthy_secs, 7);
        let d = policy.decide(&subject("frontend", "nginx", &h));
        assert_eq!(
            d.strategy,
            Some(Strategy::Explicit {
                uid: 1500,
                gid: 1501
            })
        );
        assert!(matches!(d.probe, Some(Probe::Http { .. })));
        let empty = Policy::parse(Path::new("p.toml"), "").unwrap();
        assert_eq!(empty.decide(&subject("x", "y", &h)).strategy, None);
    }

    #[test]
    fn globs() {
        assert!(glob("postgres:*", "postgres:16-alpine"));
        assert!(glob("*db?", "mydb1"));
        assert!(!glob("web", "web2"));
        assert!(glob("*", ""));
    }
}
