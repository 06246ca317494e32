//! Where a config error is: byte offsets, and keys inside a component's table, turned into
//! `file:line:column: message`, so `skynet check` points at the fix. Every stage's
//! validation returns a [`FieldError`] naming a key; this module finds that key in the file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::{ConfigContext, FieldError, TableError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Turns byte offsets, and keys inside a table, into `file:line:column` errors.
pub struct Locator<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Resolves a path-like value: `${VAR}` expanded, then relative to the config file.
    pub fn path(&self, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        ConfigContext::new(self.path)
            .resolve_path("", value.get_ref())
            .map_err(|e| self.error(value.span(), e.message))
    }

    /// The text of a table whose header is at `header`: up to the next header that is not
    /// one of its own sub-tables (`[[cameras.zones]]` belongs to the `[[cameras]]` above it).
    pub fn table_region(&self, header: &Range<usize>) -> Range<usize> {
        let start = header.start.min(self.text.len());
        let name = header_name(&self.text[start..header.end.min(self.text.len())]).unwrap_or("");
        let own_prefix = format!("{name}.");
        let body_start = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i + 1);
        let mut offset = body_start;
        for line in self.text[body_start..].split_inclusive('\n') {
            if let Some(other) = header_name(line)
                && (name.is_empty() || !other.starts_with(&own_prefix))
            {
                return start..offset;
            }
            offset += line.len();
        }
        start..self.text.len()
    }

    /// The `n`-th sub-table `[[header]]` inside `region`, as a region of its own.
    pub fn sub_table(&self, region: &Range<usize>, header: &str, n: usize) -> Option<Range<usize>> {
        let mut offset = region.start;
        let mut seen = 0;
        for line in self.text[region.clone()].split_inclusive('\n') {
            if line
                .trim()
                .strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                == Some(header)
            {
                if seen == n {
                    let head = offset + (line.len() - line.trim_start().len());
                    return Some(self.table_region(&(head..head + line.trim().len())));
                }
                seen += 1;
            }
            offset += line.len();
        }
        None
    }

    /// Where `key` (dotted for nested keys, like `reconnect.max_backoff_s`) is written in
    /// `region`; the region's start when it is not written (a default).
    pub fn key(&self, region: &Range<usize>, key: &str) -> Range<usize> {
        let mut from = region.start;
        for part in key.split('.').filter(|p| !p.is_empty()) {
            if let Some(at) = find_key(&self.text[from..region.end], part) {
                from += at;
            }
        }
        from..from
    }

    /// Where the value of `key` starts (after `=`), or where the key is when it has none.
    pub fn value(&self, region: &Range<usize>, key: &str) -> Range<usize> {
        let at = self.key(region, key).start;
        let rest = &self.text[at..region.end.max(at)];
        let offset = rest
            .find('=')
            .map(|eq| eq + 1 + (rest[eq + 1..].len() - rest[eq + 1..].trim_start().len()))
            .filter(|o| !rest[..*o].contains('\n'))
            .unwrap_or(0);
        at + offset..at + offset
    }

    /// A component's error: at the value of the key it names, else at the table.
    pub fn field_error(&self, region: &Range<usize>, error: FieldError) -> ConfigError {
        let span = if error.field.is_empty() {
            region.start..region.start
        } else {
            self.value(region, &error.field)
        };
        self.error(span, error.message)
    }

    /// A component's refusal of its table, located.
    pub fn parse_error(&self, region: &Range<usize>, error: TableError) -> ConfigError {
        match error {
            TableError::Serde(e) => self.serde_error(region, &e),
            TableError::Field(e) => self.field_error(region, e),
        }
    }

    /// A serde error from deserialising a table: located at the key it names.
    pub fn serde_error(&self, region: &Range<usize>, error: &toml::de::Error) -> ConfigError {
        let e = serde_field_error(error);
        if e.message.starts_with("unknown field") {
            // The key itself is what is wrong.
            return self.error(self.key(region, &e.field), e.message);
        }
        self.field_error(region, e)
    }
}

/// A serde error from deserialising a table, as a [`FieldError`] naming the key it is about
/// (empty when toml names none).
pub fn serde_field_error(error: &toml::de::Error) -> FieldError {
    let message = error.message().trim_end().to_string();
    // toml names the key path in its Display ("in `reconnect.a`"); unknown fields are named
    // in the message itself.
    let shown = error.to_string();
    let key = shown
        .lines()
        .find_map(|l| l.strip_prefix("in `").and_then(|k| k.strip_suffix('`')))
        .or_else(|| {
            message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
        })
        .unwrap_or("")
        .to_string();
    FieldError::new(key, message)
}

/// The table name when `line` is a header (`[name]` or `[[name]]` alone on its line).
fn header_name(line: &str) -> Option<&str> {
    let t = line.trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?
        .trim();
    let is_name = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '"'));
    is_name.then_some(inner)
}

/// Byte offset of `key =` (at a line start, or inside an inline table) in `text`.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut search = 0;
    while let Some(found) = text[search..].find(key) {
        let at = search + found;
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].trim_start();
        let starts_key =
            before.is_none_or(|c| c == '\n' || c == ' ' || c == '{' || c == ',' || c == '\t');
        if starts_key && after.starts_with('=') {
            return Some(at);
        }
        search = at + key.len();
    }
    None
}

/// A settings table (`[detect]`, `[risk]`, `[outbox]`) as its stage crate's type, with the
/// table's region for locating errors; a table left out takes every default.
pub fn section<T: DeserializeOwned>(
    at: &Locator<'_>,
    table: Option<&Spanned<toml::Table>>,
) -> Result<(T, Range<usize>), ConfigError> {
    let (table, region) = match table {
        Some(t) => (t.get_ref().clone(), at.table_region(&t.span())),
        None => (toml::Table::new(), 0..0),
    };
    let settings = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| at.serde_error(&region, &e))?;
    Ok((settings, region))
}

/// A field error of a nested `[[section.sub]]` table (`topics[2].pattern`), located in the
/// sub-table it names.
pub fn nested(
    at: &Locator<'_>,
    region: &Range<usize>,
    header: &str,
    e: FieldError,
) -> (Range<usize>, FieldError) {
    let Some((head, rest)) = e.field.split_once("].") else {
        return (region.clone(), e);
    };
    let n = head
        .rsplit_once('[')
        .and_then(|(_, n)| n.parse::<usize>().ok());
    match n.and_then(|n| at.sub_table(region, header, n)) {
        Some(sub) => (sub, FieldError::new(rest, e.message)),
        None => (region.clone(), e),
    }
}

/// Removes `key` from a component's table as a string (`kind`, `name`), if present.
pub fn take_string(
    at: &Locator<'_>,
    region: &Range<usize>,
    table: &mut toml::Table,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(at.error(
            at.key(region, key),
            format!("`{key}` must be a string, got {}", other.type_str()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_inside_their_table() {
        let text = "[a]\nx = 1\n\n[[sinks]]\nkind = \"jsonl\"\npath = \"p\"\nr = { a = 1, b = 2 }\n\n[[sinks]]\nkind = \"stdout\"\n";
        let at = Locator {
            path: Path::new("t.toml"),
            text,
        };
        let header = text.find("[[sinks]]").unwrap();
        let region = at.table_region(&(header..header + 9));
        assert!(
            text[region.clone()].ends_with("b = 2 }\n\n"),
            "{:?}",
            &text[region.clone()]
        );
        let e = at.field_error(&region, FieldError::new("path", "bad"));
        assert_eq!(e.to_string(), "t.toml:6:8: bad");
        let e = at.field_error(&region, FieldError::new("r.b", "bad"));
        assert_eq!(e.to_string(), "t.toml:7:18: bad");
    }
}
