//! TOML's syntax errors in an operator's words. A bare word where a value
//! belongs (`strategy = image-user`) reads to the TOML parser as a broken
//! number ("invalid float, expected `inf`"); what was expected is quotes.

/// Keys whose values are numbers, with an example of each.
const NUMBERS: &[(&str, &str)] = &[
    ("uid", "2001"),
    ("gid", "2001"),
    ("min_healthy_secs", "5"),
    ("deadline_secs", "60"),
    ("retention_days", "14"),
];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '*' | '?' | '@')
}

/// What was expected at `offset`, when a bare word stands where a value
/// belongs; None for any other syntax error.
pub fn bare_word(text: &str, offset: usize) -> Option<String> {
    let rest = text.get(offset..)?;
    let word: String = rest.chars().take_while(|c| is_word_char(*c)).collect();
    if word.is_empty() || matches!(word.as_str(), "true" | "false") || word.parse::<f64>().is_ok() {
        return None;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = text[line_start..offset].trim_end();
    if let Some(key_part) = before.strip_suffix('=') {
        let key: String = key_part
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if key.is_empty() {
            return None;
        }
        if let Some((_, example)) = NUMBERS.iter().find(|(k, _)| *k == key) {
            return Some(format!(
                "expected a number, not `{word}`, e.g. {key} = {example}"
            ));
        }
        return Some(format!("expected a quoted string, e.g. {key} = \"{word}\""));
    }
    if before.ends_with('[') || before.ends_with(',') {
        return Some(format!("expected a quoted string, e.g. \"{word}\""));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::policy::Policy;
    use std::path::Path;

    fn error(text: &str) -> String {
        Policy::parse(Path::new("/etc/fleet/policy.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_bare_word_is_asked_to_be_quoted_and_the_file_is_called_a_policy() {
        assert_eq!(
            error("[[rule]]\nname = \"web\"\nstrategy = image-user\n"),
            "policy /etc/fleet/policy.toml is malformed: line 3, column 12: expected a quoted string, e.g. strategy = \"image-user\""
        );
        assert_eq!(
            error("[[rule]]\nname = web-*\n"),
            "policy /etc/fleet/policy.toml is malformed: line 2, column 8: expected a quoted string, e.g. name = \"web-*\""
        );
        assert!(
            error("[[rule]]\nname = \"a\"\nstrategy = \"dedicated\"\nuid = abc\n")
                .ends_with("line 4, column 7: expected a number, not `abc`, e.g. uid = 2001"),
        );
        assert!(
            error("[[rule]]\nname = \"a\"\nprobe = { tcp = localhost:5432 }\n")
                .contains("expected a quoted string, e.g. tcp = \"localhost:5432\""),
        );
        assert!(
            error("[[rule]]\nname = \"a\"\nhooks = [[sh, \"-c\", \"true\"]]\n")
                .contains("expected a quoted string, e.g. \"sh\""),
        );
        // Other syntax errors keep TOML's own words, still as a policy.
        let unclosed = error("[[rule]\nname = \"a\"\n");
        assert!(
            unclosed.starts_with("policy /etc/fleet/policy.toml is malformed: line 1")
                && !unclosed.contains("config file"),
            "{unclosed}"
        );
    }
}
