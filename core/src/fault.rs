//! Fault injection — a TEST AID, not a feature.
//!
//! The crash-safety tests must kill a process at exact points (after a
//! step's intent is journaled, in the middle of an ownership walk...). The
//! only way to arm a point is the environment of the process itself:
//! `FLEET_FAULT=controller:after-intent:ownership,agent:ownership-entries:500`.
//! Nothing in any API can set it. When an armed point is reached the process
//! aborts at once (SIGABRT: no destructors, no flush — like `kill -9`).
//! Unset, every check is one relaxed load of a cached empty list.

use std::sync::OnceLock;

/// The environment variable that arms fault points.
pub const FAULT_ENV: &str = "FLEET_FAULT";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| parse(std::env::var(FAULT_ENV).ok().as_deref()))
}

fn parse(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Aborts the process if `point` is armed.
pub fn point(point: &str) {
    let armed = armed();
    if !armed.is_empty() && armed.iter().any(|p| p == point) {
        abort(point);
    }
}

/// Aborts the process if `prefix:N` is armed and `count` has reached N.
pub fn count(prefix: &str, count: u64) {
    let armed = armed();
    if armed.is_empty() {
        return;
    }
    for p in armed {
        if let Some(n) = p.strip_prefix(prefix).and_then(|r| r.strip_prefix(':'))
            && n.parse::<u64>().is_ok_and(|n| count >= n)
        {
            abort(p);
        }
    }
}

fn abort(point: &str) -> ! {
    eprintln!("{FAULT_ENV}: aborting at armed fault point {point} (test aid)");
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_a_comma_list_and_ignores_blanks() {
        assert_eq!(
            parse(Some(" a:b , ,c:1")),
            vec!["a:b".to_string(), "c:1".to_string()]
        );
        assert!(parse(None).is_empty());
    }
}
