//! The example configurations in deploy/ are what an operator copies: every
//! key the agent reads is in its example (commented when it has no
//! universal value), and the example, commented keys included, is read by
//! the agent's own schema.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use fleet_agent::config::AgentFile;
use fleet_core::config::parse_toml;

const FILE: &str = "deploy/config/agent.toml";

fn example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/agent.toml");
    std::fs::read_to_string(path).unwrap()
}

/// The keys `AgentFile` accepts, as serde lists them when refusing one.
fn schema_keys() -> Vec<String> {
    let refused = parse_toml::<AgentFile>(Path::new(FILE), "no_such_key = 1\n")
        .unwrap_err()
        .to_string();
    let listed = refused
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("serde no longer lists the keys: {refused}"));
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_agent_key_is_in_the_example_and_the_example_is_valid() {
    let text = example();
    let keys = schema_keys();
    assert!(
        keys.len() > 10 && keys.contains(&"scope_label".to_string()),
        "{keys:?}"
    );
    // Commented examples become settings: all of them must parse too.
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| keys.iter().any(|x| x == k)) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: BTreeMap<String, serde_json::Value> =
        parse_toml(Path::new(FILE), &uncommented).unwrap();
    let missing: Vec<&String> = keys.iter().filter(|k| !parsed.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "deploy/config/agent.toml lacks {missing:?}: add each, commented if it has no universal value"
    );
    parse_toml::<AgentFile>(Path::new(FILE), &text).unwrap();
    parse_toml::<AgentFile>(Path::new(FILE), &uncommented).unwrap();
}
