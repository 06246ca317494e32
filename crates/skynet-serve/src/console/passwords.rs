//! What a console password must be: at least [`MIN_CHARS`] characters, and not on the list of
//! common passwords shipped with the binary. Length does more against guessing than rules
//! about character classes (NIST SP 800-63B, 5.1.1.2); the list refuses the long passwords
//! that crackers try first all the same (`qwertyuiopasdfgh`, `1qaz2wsx3edc`).

use std::collections::HashSet;
use std::sync::OnceLock;

/// The fewest characters a password may have.
pub const MIN_CHARS: usize = 12;

/// The list, one lower-cased password a line; its header names its source.
const COMMON: &str = include_str!("common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    })
}

/// Why `password` may not be used, or `None` when it may. The message never repeats the
/// password.
pub fn problem(password: &str) -> Option<String> {
    if password.chars().count() < MIN_CHARS {
        return Some(format!(
            "the password must be at least {MIN_CHARS} characters (a few words make a good one)"
        ));
    }
    if common().contains(password.trim().to_lowercase().as_str()) {
        return Some(
            "the password is on the list of common passwords that are guessed first: choose another"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_common_passwords_are_refused_and_long_uncommon_ones_accepted() {
        assert!(problem("short").unwrap().contains("at least 12"));
        assert!(problem("elevenchars").is_some());
        // On the list, whatever the case.
        assert!(problem("1qaz2wsx3edc").unwrap().contains("common"));
        assert!(problem("QWERTY123456").unwrap().contains("common"));
        assert_eq!(problem("correct horse battery"), None);
        // The header is not a password.
        assert!(
            common()
                .iter()
                .all(|p| !p.starts_with('#') && p.len() >= MIN_CHARS)
        );
        assert!(common().len() > 250);
    }
}
