//! Naming rules shared by the agent (which creates users) and the
//! controller (which plans them).

use sha2::{Digest, Sha256};

/// `svc-` + the service name lowercased, every other character than
/// a-z 0-9 _ - made '-', repeats collapsed, '-' trimmed; longer than 32
/// characters in all, it is cut and ends in '-' + 6 hex of its sha256.
pub fn derive_user_name(service: &str) -> String {
    let mut cleaned = String::new();
    for c in service.to_lowercase().chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '-'
        };
        if !(c == '-' && cleaned.ends_with('-')) {
            cleaned.push(c);
        }
    }
    let cleaned = cleaned.trim_matches('-');
    let cleaned = if cleaned.is_empty() {
        "service"
    } else {
        cleaned
    };
    let name = format!("svc-{cleaned}");
    if name.len() <= 32 {
        return name;
    }
    let digest = hex::encode(Sha256::digest(service.as_bytes()));
    format!(
        "svc-{}-{}",
        &cleaned[..21].trim_end_matches('-'),
        &digest[..6]
    )
}

/// What useradd accepts (and Debian's default NAME_REGEX), at most 32 chars;
/// `Err` says what to change.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err("use 1 to 32 characters".into());
    }
    let first = name.chars().next().unwrap_or('0');
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err("start with a lowercase letter or '_'".into());
    }
    let body_ok = name
        .trim_end_matches('$')
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !body_ok {
        return Err("use only a-z, 0-9, '_' and '-' (and a final '$')".into());
    }
    Ok(())
}
