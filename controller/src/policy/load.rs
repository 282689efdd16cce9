//! Reading a policy file: the TOML shape, and every check an operator's
//! typo deserves, each naming the file, the line and the fix. Nothing the
//! planner would silently reinterpret (an unknown order, a stray gid) gets
//! past this.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Defaults, OnHostIdCollision, Policy, PolicySource, Probe, Rule, Strategy};

/// A policy that cannot be used, naming the file, the line and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    retention_days: Option<u64>,
    on_host_id_collision: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    image: Option<String>,
    compose_project: Option<String>,
    compose_service: Option<String>,
    #[serde(default)]
    host_labels: BTreeMap<String, String>,
    strategy: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    /// Ids for the dedicated user (allocated from the agent's range if not).
    uid: Option<Spanned<u32>>,
    gid: Option<Spanned<u32>>,
    exempt: Option<Spanned<String>>,
    #[serde(default)]
    hooks: Vec<Vec<String>>,
    probe: Option<Spanned<ProbeFile>>,
    min_healthy_secs: Option<u64>,
    deadline_secs: Option<u64>,
    /// A name or a number, as a string or an integer: checked here.
    order: Option<Spanned<toml::Value>>,
    on_host_id_collision: Option<Spanned<String>>,
    /// Recreate even though the writable layer holds content it loses.
    #[serde(default)]
    allow_layer_loss: bool,
    /// "in-place" or "rootless", and the rootless target's keys.
    target: Option<Spanned<String>>,
    account: Option<Spanned<String>>,
    userns: Option<Spanned<String>>,
    publish_low_ports: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    tcp: Option<String>,
    http: Option<String>,
    exec: Option<Vec<String>>,
}

/// The ordering classes the planner ranks (a number ranks as itself).
const ORDER_CLASSES: &[&str] = crate::plan::class::CLASSES;

/// Where each complaint points: the file, and the line of a span.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, rule: usize, message: String) -> PolicyError {
        self.at(span, &format!("rule {rule}"), message)
    }

    fn at(&self, span: Range<usize>, place: &str, message: String) -> PolicyError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        PolicyError::Malformed {
            path: self.file.to_path_buf(),
            message: format!("line {line}: {place}: {message}"),
        }
    }
}

/// The TOML itself; a syntax error says in plain words what was expected.
fn parse_file(file: &Path, text: &str) -> Result<PolicyFile, PolicyError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (location, plain) = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (
                    format!("line {line}, column {column}: "),
                    super::plain::bare_word(text, span.start),
                )
            }
            None => (String::new(), None),
        };
        PolicyError::Malformed {
            path: file.to_path_buf(),
            message: format!(
                "{location}{}",
                plain.unwrap_or_else(|| e.message().to_string())
            ),
        }
    })
}

impl Policy {
    /// Parses a policy; errors name the file, the line and what is wrong.
    pub fn parse(file: &Path, text: &str) -> Result<Self, PolicyError> {
        let parsed = parse_file(file, text)?;
        let source = Source { file, text };
        let rules = parsed
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| check_rule(&source, index + 1, rule))
            .collect::<Result<_, _>>()?;
        let d = parsed.defaults;
        let on_host_id_collision = match &d.on_host_id_collision {
            None => None,
            Some(spanned) => Some(
                on_collision(spanned.get_ref())
                    .map_err(|m| source.at(spanned.span(), "[defaults]", m))?,
            ),
        };
        Ok(Policy {
            source: PolicySource {
                path: file.display().to_string(),
                text: text.to_string(),
            },
            defaults: Defaults {
                min_healthy_secs: d.min_healthy_secs,
                deadline_secs: d.deadline_secs,
                retention_days: d.retention_days,
                on_host_id_collision,
            },
            rules,
        })
    }

    /// The policy a source holds: empty text is the default policy.
    pub fn from_source(source: &PolicySource) -> Result<Self, PolicyError> {
        if source.text.trim().is_empty() {
            return Ok(Policy::default());
        }
        let path = if source.path.is_empty() {
            "policy.toml"
        } else {
            source.path.as_str()
        };
        Policy::parse(Path::new(path), &source.text)
    }
}

fn check_rule(source: &Source<'_>, n: usize, rule: RuleFile) -> Result<Rule, PolicyError> {
    let strategy = strategy(source, n, &rule)?;
    if let Some(user) = &rule.user
        && !matches!(strategy, Some(Strategy::Dedicated { .. }))
    {
        return Err(source.error(
            user.span(),
            n,
            "`user` goes with strategy = \"dedicated\"".into(),
        ));
    }
    let exempt = match &rule.exempt {
        Some(reason) if reason.get_ref().trim().is_empty() => {
            return Err(source.error(
                reason.span(),
                n,
                "`exempt` needs a justification, e.g. exempt = \"monitoring agent: needs host /proc\"".into(),
            ));
        }
        Some(_) if strategy.is_some() => {
            return Err(source.error(
                rule.exempt.as_ref().map_or(0..0, Spanned::span),
                n,
                "a rule either exempts or sets a strategy, not both".into(),
            ));
        }
        Some(reason) => Some(reason.get_ref().clone()),
        None => None,
    };
    let probe = match &rule.probe {
        None => None,
        Some(spanned) => {
            Some(probe(spanned.get_ref()).map_err(|m| source.error(spanned.span(), n, m))?)
        }
    };
    let order = match &rule.order {
        None => None,
        Some(spanned) => {
            Some(order(spanned.get_ref()).map_err(|m| source.error(spanned.span(), n, m))?)
        }
    };
    let on_host_id_collision = match &rule.on_host_id_collision {
        None => None,
        Some(spanned) => {
            Some(on_collision(spanned.get_ref()).map_err(|m| source.error(spanned.span(), n, m))?)
        }
    };
    let placement = super::placement::placement(&super::placement::PlacementKeys {
        target: rule.target.as_ref(),
        account: rule.account.as_ref(),
        userns: rule.userns.as_ref(),
        publish_low_ports: rule.publish_low_ports.as_ref(),
    })
    .map_err(|(span, m)| source.error(span, n, m))?;
    Ok(Rule {
        placement,
        name: rule.name,
        image: rule.image,
        compose_project: rule.compose_project,
        compose_service: rule.compose_service,
        host_labels: rule.host_labels,
        strategy,
        exempt,
        hooks: rule.hooks,
        probe,
        min_healthy_secs: rule.min_healthy_secs,
        deadline_secs: rule.deadline_secs,
        order,
        on_host_id_collision,
        allow_layer_loss: rule.allow_layer_loss,
    })
}

fn on_collision(text: &str) -> Result<OnHostIdCollision, String> {
    OnHostIdCollision::parse(text).ok_or_else(|| {
        format!(
            "unknown on_host_id_collision \"{text}\": use \"warn\" (plan it, marked), \"refuse\" or \"dedicated\" (a dedicated account instead)"
        )
    })
}

/// The strategy with its ids. `uid` and `gid` belong to a dedicated user:
/// a uid alone gives the group the same id; a gid alone is honoured as the
/// user's group, its uid allocated by the agent; 0 is refused either way.
fn strategy(
    source: &Source<'_>,
    n: usize,
    rule: &RuleFile,
) -> Result<Option<Strategy>, PolicyError> {
    let strategy = match &rule.strategy {
        None => None,
        Some(spanned) => Some(
            parse_strategy(
                spanned.get_ref(),
                rule.user.as_ref().map(|u| u.get_ref().clone()),
            )
            .map_err(|m| source.error(spanned.span(), n, m))?,
        ),
    };
    let ids = [("uid", &rule.uid), ("gid", &rule.gid)];
    let Some(Strategy::Dedicated { name, .. }) = strategy else {
        if let Some((key, id)) = ids.iter().find_map(|(k, id)| id.as_ref().map(|id| (k, id))) {
            return Err(source.error(
                id.span(),
                n,
                format!(
                    "`{key}` goes with strategy = \"dedicated\" (for fixed ids without a user, write strategy = \"UID:GID\")"
                ),
            ));
        }
        return Ok(strategy);
    };
    for (key, id) in ids {
        if let Some(id) = id
            && *id.get_ref() == 0
        {
            return Err(source.error(
                id.span(),
                n,
                format!(
                    "{key} = 0 is root, the very thing to leave: choose a free id (e.g. {key} = 2001), or leave `{key}` out to have the agent allocate one"
                ),
            ));
        }
    }
    let uid = rule.uid.as_ref().map(|u| *u.get_ref());
    let gid = rule.gid.as_ref().map(|g| *g.get_ref()).or(uid);
    Ok(Some(Strategy::Dedicated { name, uid, gid }))
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

/// Exactly one probe, in a form the agent can carry out: it dials TCP
/// `host:port` and speaks plain HTTP only.
fn probe(p: &ProbeFile) -> Result<Probe, String> {
    const SHAPE: &str = "a probe is exactly one of tcp = \"host:port\", http = \"http://...\" or exec = [\"cmd\", ...]";
    match (&p.tcp, &p.http, &p.exec) {
        (Some(address), None, None) => match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Probe::Tcp {
                    address: address.clone(),
                })
            }
            _ => Err(format!(
                "probe tcp = \"{address}\" is not host:port, e.g. tcp = \"127.0.0.1:5432\""
            )),
        },
        (None, Some(url), None) if url.starts_with("http://") => {
            Ok(Probe::Http { url: url.clone() })
        }
        (None, Some(url), None) => Err(format!(
            "probe http = \"{url}\": only http:// URLs are probed, e.g. http = \"http://127.0.0.1:8080/health\""
        )),
        (None, None, Some(argv)) if !argv.is_empty() => Ok(Probe::Exec { argv: argv.clone() }),
        (None, None, Some(_)) => Err(format!("probe exec = [] runs nothing: {SHAPE}")),
        _ => Err(SHAPE.into()),
    }
}

/// A class the planner ranks, or a rank (stateless is 10, cache and queue
/// 20, database 30): a misspelt class must not quietly land in between.
fn order(value: &toml::Value) -> Result<String, String> {
    let wrong = |shown: String| {
        format!(
            "unknown order {shown}: use one of {} (ranked 10, 20, 20, 30, 30), or a number to rank it yourself, e.g. order = 15",
            ORDER_CLASSES.join(", ")
        )
    };
    match value {
        toml::Value::String(s) if ORDER_CLASSES.contains(&s.as_str()) => Ok(s.clone()),
        toml::Value::String(s) if s.parse::<u32>().is_ok() => Ok(s.clone()),
        toml::Value::Integer(i) if u32::try_from(*i).is_ok() => Ok(i.to_string()),
        toml::Value::String(s) => Err(wrong(format!("\"{s}\""))),
        other => Err(wrong(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/fleet/policy.toml";

    fn err(text: &str) -> String {
        Policy::parse(Path::new(FILE), text)
            .unwrap_err()
            .to_string()
    }

    /// The message names the file, the line, the rule, and says `needles`.
    fn assert_names(text: &str, line: usize, needles: &[&str]) {
        let e = err(text);
        let at = format!("policy {FILE} is malformed: line {line}: rule ");
        assert!(e.starts_with(&at), "want {at:?}: {e}");
        for needle in needles {
            assert!(e.contains(needle), "want {needle:?}: {e}");
        }
    }

    #[test]
    fn bad_policies_name_file_line_and_fix() {
        assert_names(
            "[[rule]]\nname = \"x\"\nstrategy = \"0:0\"\n",
            3,
            &["uid or gid of 0"],
        );
        assert_names("[[rule]]\nexempt = \"  \"\n", 2, &["justification"]);
        assert_names(
            "[[rule]]\nstrategy = \"sometimes\"\n",
            2,
            &[
                "unknown strategy \"sometimes\"",
                "\"image-user\", \"dedicated\" or \"UID:GID\"",
            ],
        );
        let e = err("[[rule]]\nnmae = \"x\"\n");
        assert!(e.contains("line 2") && e.contains("nmae"), "{e}");
        assert_names(
            "[[rule]]\nexempt = \"r\"\nstrategy = \"dedicated\"\n",
            2,
            &["either exempts or sets a strategy"],
        );
        assert_names(
            "[[rule]]\nname = \"x\"\nuser = \"svc-x\"\n",
            3,
            &["`user` goes with strategy = \"dedicated\""],
        );
    }

    #[test]
    fn a_bad_probe_is_reported_at_its_own_line() {
        let text = "[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"b\"\nprobe = { tcp = \"x:1\", http = \"http://x\" }\n";
        assert_names(text, 6, &["rule 2", "exactly one of tcp"]);
        assert_names(
            "[[rule]]\nname = \"a\"\nprobe = { tcp = \"localhost\" }\n",
            3,
            &["not host:port", "127.0.0.1:5432"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nprobe = { http = \"https://x/health\" }\n",
            3,
            &["only http:// URLs"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nprobe = { exec = [] }\n",
            3,
            &["runs nothing"],
        );
        // A probe written as its own table is found at that table's header.
        assert_names(
            "[[rule]]\nname = \"a\"\n\n[rule.probe]\ntcp = \"x\"\n",
            4,
            &["not host:port"],
        );
    }

    #[test]
    fn a_misspelt_order_is_refused_with_the_classes() {
        assert_names(
            "[[rule]]\nimage = \"*pg*\"\nstrategy = \"image-user\"\norder = \"databse\"\n",
            4,
            &[
                "unknown order \"databse\"",
                "stateless, cache, queue, database",
                "a number",
            ],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\norder = -3\n",
            3,
            &["unknown order -3"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\norder = true\n",
            3,
            &["unknown order true"],
        );
        let policy = Policy::parse(
            Path::new(FILE),
            "[[rule]]\nname = \"a\"\norder = 15\n[[rule]]\nname = \"b\"\norder = \"25\"\n[[rule]]\nname = \"c\"\norder = \"queue\"\n",
        )
        .unwrap();
        let orders: Vec<_> = policy.rules.iter().map(|r| r.order.as_deref()).collect();
        assert_eq!(orders, [Some("15"), Some("25"), Some("queue")]);
    }

    #[test]
    fn dedicated_ids_never_zero_and_a_gid_alone_is_honoured() {
        assert_names(
            "[[rule]]\nname = \"a\"\nstrategy = \"dedicated\"\nuid = 0\n",
            4,
            &["uid = 0 is root", "leave `uid` out"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nstrategy = \"dedicated\"\nuid = 2001\ngid = 0\n",
            5,
            &["gid = 0 is root"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nstrategy = \"dedicated\"\ngid = 0\n",
            4,
            &["gid = 0 is root"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nstrategy = \"image-user\"\n\ngid = 2001\n",
            5,
            &["`gid` goes with strategy = \"dedicated\"", "UID:GID"],
        );
        assert_names(
            "[[rule]]\nname = \"a\"\nuid = 2001\n",
            3,
            &["`uid` goes with strategy = \"dedicated\""],
        );
        let strategies = |text: &str| {
            Policy::parse(Path::new(FILE), text)
                .unwrap()
                .rules
                .into_iter()
                .map(|r| r.strategy)
                .collect::<Vec<_>>()
        };
        let dedicated = |uid, gid| {
            Some(Strategy::Dedicated {
                name: None,
                uid,
                gid,
            })
        };
        assert_eq!(
            strategies(
                "[[rule]]\nname = \"a\"\nstrategy = \"dedicated\"\ngid = 2001\n\
                 [[rule]]\nname = \"b\"\nstrategy = \"dedicated\"\nuid = 2002\n\
                 [[rule]]\nname = \"c\"\nstrategy = \"dedicated\"\nuid = 2003\ngid = 2004\n"
            ),
            [
                dedicated(None, Some(2001)),
                dedicated(Some(2002), Some(2002)),
                dedicated(Some(2003), Some(2004)),
            ]
        );
    }

    #[test]
    fn the_source_is_kept_so_a_saved_plan_can_be_made_again() {
        let text = "[[rule]]\nname = \"a\"\nexempt = \"why\"\n";
        let policy = Policy::parse(Path::new(FILE), text).unwrap();
        assert_eq!(policy.source().text, text);
        assert_eq!(Policy::from_source(policy.source()).unwrap(), policy);
        assert_eq!(
            Policy::from_source(&PolicySource::default()).unwrap(),
            Policy::default()
        );
    }
}
