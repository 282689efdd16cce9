//! The migration policy: per container, what identity it moves to (or why
//! it is exempt), with its backup hooks, health gate and ordering class.
//! Rules are tried in order; the first that matches decides. An empty
//! policy works: the image's own non-root user when it has one, else a
//! dedicated user.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_core::config::{ConfigError, parse_toml};
use serde::{Deserialize, Serialize};

use crate::inventory::Host;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    retention_days: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    image: Option<String>,
    compose_project: Option<String>,
    compose_service: Option<String>,
    #[serde(default)]
    host_labels: BTreeMap<String, String>,
    strategy: Option<toml::Spanned<String>>,
    user: Option<String>,
    /// Ids for the dedicated user (allocated from the agent's range if not).
    uid: Option<toml::Spanned<u32>>,
    gid: Option<u32>,
    exempt: Option<toml::Spanned<String>>,
    #[serde(default)]
    hooks: Vec<Vec<String>>,
    probe: Option<ProbeFile>,
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    order: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    tcp: Option<String>,
    http: Option<String>,
    exec: Option<Vec<String>>,
}

/// How a container's new identity is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// The image's own non-root user (the one its entrypoint drops to, or
    /// the one its passwd names after the image).
    ImageUser,
    /// A new host user for the service; named by the agent's rule unless given.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    Tcp { address: String },
    Http { url: String },
    Exec { argv: Vec<String> },
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
    pub order: Option<String>,
    /// Which rule decided (1-based), if any.
    pub rule: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    defaults: DefaultsFile,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    matcher: RuleFile,
    strategy: Option<Strategy>,
    exempt: Option<String>,
    probe: Option<Probe>,
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
    /// Parses a policy; errors name the file, the line and what is wrong.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let parsed: PolicyFile = parse_toml(file, text)?;
        let at = |span: std::ops::Range<usize>| {
            let before = &text[..span.start.min(text.len())];
            before.matches('\n').count() + 1
        };
        let invalid = |line: usize, message: String| ConfigError::Malformed {
            path: file.to_path_buf(),
            message: format!("line {line}: {message}"),
        };
        let mut rules = Vec::new();
        for (index, rule) in parsed.rules.into_iter().enumerate() {
            let strategy = match &rule.strategy {
                None => None,
                Some(spanned) => Some(
                    parse_strategy(spanned.get_ref(), rule.user.clone())
                        .map_err(|m| invalid(at(spanned.span()), m))?,
                ),
            };
            let strategy = match (strategy, &rule.uid) {
                (Some(Strategy::Dedicated { name, .. }), Some(uid)) => {
                    let gid = rule.gid.unwrap_or(*uid.get_ref());
                    if *uid.get_ref() == 0 || gid == 0 {
                        return Err(invalid(
                            at(uid.span()),
                            format!(
                                "rule {}: a target uid or gid of 0 is root, the very thing to leave",
                                index + 1
                            ),
                        ));
                    }
                    Some(Strategy::Dedicated {
                        name,
                        uid: Some(*uid.get_ref()),
                        gid: Some(gid),
                    })
                }
                (_, Some(uid)) => {
                    return Err(invalid(
                        at(uid.span()),
                        format!(
                            "rule {}: `uid` goes with strategy = \"dedicated\" (for fixed ids without a user, write strategy = \"UID:GID\")",
                            index + 1
                        ),
                    ));
                }
                (strategy, None) => strategy,
            };
            if rule.user.is_some() && !matches!(strategy, Some(Strategy::Dedicated { .. })) {
                return Err(invalid(
                    at(rule.strategy.as_ref().map_or(0..0, |s| s.span())),
                    format!(
                        "rule {}: `user` goes with strategy = \"dedicated\"",
                        index + 1
                    ),
                ));
            }
            let exempt = match &rule.exempt {
                Some(reason) if reason.get_ref().trim().is_empty() => {
                    return Err(invalid(
                        at(reason.span()),
                        format!(
                            "rule {}: `exempt` needs a justification, e.g. exempt = \"monitoring agent: needs host /proc\"",
                            index + 1
                        ),
                    ));
                }
                Some(reason) => Some(reason.get_ref().clone()),
                None => None,
            };
            if exempt.is_some() && strategy.is_some() {
                return Err(invalid(
                    at(rule.exempt.as_ref().map_or(0..0, |s| s.span())),
                    format!(
                        "rule {}: a rule either exempts or sets a strategy, not both",
                        index + 1
                    ),
                ));
            }
            let probe = match &rule.probe {
                None => None,
                Some(ProbeFile {
                    tcp: Some(address),
                    http: None,
                    exec: None,
                }) => Some(Probe::Tcp {
                    address: address.clone(),
                }),
                Some(ProbeFile {
                    tcp: None,
                    http: Some(url),
                    exec: None,
                }) => Some(Probe::Http { url: url.clone() }),
                Some(ProbeFile {
                    tcp: None,
                    http: None,
                    exec: Some(argv),
                }) if !argv.is_empty() => Some(Probe::Exec { argv: argv.clone() }),
                Some(_) => {
                    return Err(invalid(
                        0,
                        format!(
                            "rule {}: a probe is exactly one of tcp = \"host:port\", http = \"http://...\" or exec = [\"cmd\", ...]",
                            index + 1
                        ),
                    ));
                }
            };
            rules.push(Rule {
                matcher: rule,
                strategy,
                exempt,
                probe,
            });
        }
        Ok(Policy {
            defaults: parsed.defaults,
            rules,
        })
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
        };
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.matcher, subject))
        else {
            return decision;
        };
        let m = &rule.matcher;
        decision.strategy = rule.strategy.clone();
        decision.exempt = rule.exempt.clone();
        decision.hooks = m.hooks.clone();
        decision.probe = rule.probe.clone();
        decision.min_healthy_secs = m.min_healthy_secs.unwrap_or(decision.min_healthy_secs);
        decision.deadline_secs = m.deadline_secs.unwrap_or(decision.deadline_secs);
        decision.order = m.order.clone();
        decision.rule = Some(index + 1);
        decision
    }
}

fn parse_strategy(text: &str, user: Option<String>) -> Result<Strategy, String> {
    match text {
        "image-user" => Ok(Strategy::ImageUser),
        "dedicated" => Ok(Strategy::Dedicated {
            name: user,
            uid: None,
            gid: None,
        }),
        explicit => {
            let (uid, gid) = explicit.split_once(':').unwrap_or((explicit, explicit));
            match (uid.parse::<u32>(), gid.parse::<u32>()) {
                (Ok(0), _) | (_, Ok(0)) => Err(format!(
                    "strategy \"{explicit}\": a target uid or gid of 0 is root, the very thing to leave"
                )),
                (Ok(uid), Ok(gid)) => Ok(Strategy::Explicit { uid, gid }),
                _ => Err(format!(
                    "unknown strategy \"{explicit}\": use \"image-user\", \"dedicated\" or \"UID:GID\""
                )),
            }
        }
    }
}

fn matches(rule: &RuleFile, s: &Subject<'_>) -> bool {
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
    fn bad_policies_name_file_line_and_fix() {
        let err = |text: &str| {
            Policy::parse(Path::new("/etc/fleet/policy.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let e = err("[[rule]]\nname = \"x\"\nstrategy = \"0:0\"\n");
        assert!(
            e.contains("policy.toml") && e.contains("line 3") && e.contains("uid or gid of 0"),
            "{e}"
        );
        let e = err("[[rule]]\nexempt = \"  \"\n");
        assert!(e.contains("line 2") && e.contains("justification"), "{e}");
        let e = err("[[rule]]\nstrategy = \"sometimes\"\n");
        assert!(e.contains("unknown strategy \"sometimes\""), "{e}");
        let e = err("[[rule]]\nnmae = \"x\"\n");
        assert!(e.contains("line 2") && e.contains("nmae"), "{e}");
        let e = err("[[rule]]\nexempt = \"r\"\nstrategy = \"dedicated\"\n");
        assert!(e.contains("either exempts or sets a strategy"), "{e}");
    }

    #[test]
    fn globs() {
        assert!(glob("postgres:*", "postgres:16-alpine"));
        assert!(glob("*db?", "mydb1"));
        assert!(!glob("web", "web2"));
        assert!(glob("*", ""));
    }
}
