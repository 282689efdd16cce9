//! Text that came from a container (file names, user names) on its way to
//! an operator's terminal: a hostile container picks its file names, and a
//! newline or an escape sequence in one could fake or erase lines of the
//! plan the operator is approving.

/// `text` with every control character (C0, DEL, C1) escaped as `\n`,
/// `\t`, `\e` or `\u{XX}`; everything else kept as is. Idempotent, so
/// text escaped where it was read can be escaped again where it is shown.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_cannot_reach_a_terminal() {
        assert_eq!(printable("data/plain-name"), "data/plain-name");
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("\u{1b}[2J\u{1b}[Hok"), "\\e[2J\\e[Hok");
        assert_eq!(printable("x\u{7f}\u{9b}y"), "x\\u{7f}\\u{9b}y");
        let once = printable("a\u{1b}b\nc");
        assert_eq!(printable(&once), once, "idempotent");
        assert_eq!(printable("héllo wörld"), "héllo wörld");
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(c).unwrap();
            assert!(!printable(&format!("a{c}b")).contains(c), "{c:?}");
        }
    }
}
