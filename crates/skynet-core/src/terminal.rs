//! Text that came from outside (a dead letter's reason, a user name, an incident's note, a
//! camera's error) as the CLI may print it. A terminal obeys control bytes: `ESC [2J` clears
//! the screen, `ESC ]0;…BEL` retitles the window, a CR overwrites the line before it, and
//! bidirectional overrides reorder what is shown. So every such character is written as an
//! escape (`\u{1b}`, `\r`), never as itself.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as itself: C0 controls, DEL, C1 controls
/// (U+0080..U+009F, which some terminals obey as ESC sequences) and the bidirectional
/// formatting characters, plus the Unicode line and paragraph separators.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| dangerous(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !dangerous(c) || keep(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// `text` for one line (a field of a tab-separated row, a message): every control
/// character escaped, newlines and tabs included.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` for output that is several lines by design (an error with its causes): as
/// [`escape_control`], but newlines are kept.
pub fn escape_control_lines(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n')
}

/// A serialised JSON document as it may be printed: JSON writers escape C0 controls
/// themselves, but write DEL, the C1 controls and bidirectional overrides as they are.
/// These can only stand inside strings, where `\uXXXX` means the same character, so the
/// document is unchanged for a JSON reader.
pub fn escape_json_controls(json: &str) -> Cow<'_, str> {
    if !json.chars().any(dangerous) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if dangerous(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(escape_control("\x1b[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(escape_control("a\rb\tc\nd\x07"), "a\\rb\\tc\\nd\\u{7}");
        assert_eq!(
            escape_control("c1 \u{9b}2J del \x7f"),
            "c1 \\u{9b}2J del \\u{7f}"
        );
        assert_eq!(escape_control("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert!(matches!(
            escape_control("plain ünïcode 中文"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn multi_line_output_keeps_its_newlines_only() {
        assert_eq!(
            escape_control_lines("error\n  caused by: \x1b]0;title\x07\r"),
            "error\n  caused by: \\u{1b}]0;title\\u{7}\\r"
        );
    }

    #[test]
    fn json_stays_the_same_document() {
        let value = serde_json::json!({"reason": "x\u{9b}y\u{7f}\u{202e}\x1b"});
        let text = serde_json::to_string(&value).unwrap();
        let escaped = escape_json_controls(&text);
        assert!(escaped.is_ascii(), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, value);
    }
}
