//! What every component's config validation shares: an error naming the field, path
//! resolution relative to the config file, `${VAR}` expansion, and range checks that never
//! overflow.

use std::path::{Path, PathBuf};

/// A validation error inside one component's table. The binary turns `field` into
/// `file:line:column` (the key's position); an empty `field` points at the table itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The environment variable that moves everything set-up installs.
pub const DATA_DIR_ENV: &str = "SKYNET_DATA_DIR";

/// `$SKYNET_DATA_DIR`, else `$XDG_DATA_HOME/skynet`, else `~/.local/share/skynet`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("skynet");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/skynet")
}

/// Expands `${NAME}` and `${NAME:-default}` from the environment in a config value, as a
/// shell does: the default is used when the variable is unset or empty. `SKYNET_DATA_DIR`
/// always has a value (its default). Returns the name of an unset variable (without a
/// default) as the error; a value never appears in an error, since it may be a secret.
pub fn expand_vars(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed `${` in a config value".to_string());
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "`${{{name}}}` is not a variable name: use ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        let resolved = match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => v,
            (_, Some(default)) => default.to_string(),
            _ if name == DATA_DIR_ENV => data_dir().to_string_lossy().into_owned(),
            _ => return Err(format!("environment variable `{name}` is not set")),
        };
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a config file lives, for resolving what it names. Pure: no file is opened.
#[derive(Debug, Clone)]
pub struct ConfigContext {
    /// The directory of the config file.
    pub base_dir: PathBuf,
    /// The node's name (`[node] name`), for defaults that must differ between nodes sharing
    /// a broker (an MQTT client id); empty where the caller does not know it.
    pub node: String,
}

impl ConfigContext {
    pub fn new(config_file: &Path) -> Self {
        Self {
            base_dir: config_file.parent().unwrap_or(Path::new(".")).to_path_buf(),
            node: String::new(),
        }
    }

    /// The same context, knowing the node's name.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// `${VAR}` expanded, then relative to the config file.
    pub fn resolve_path(&self, field: &str, value: &str) -> Result<PathBuf, FieldError> {
        let expanded = expand_vars(value).map_err(|m| FieldError::new(field, m))?;
        let p = PathBuf::from(expanded);
        Ok(if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        })
    }

    pub fn expand(&self, field: &str, value: &str) -> Result<String, FieldError> {
        expand_vars(value).map_err(|m| FieldError::new(field, m))
    }

    /// A secret given as `secret` (`${VAR}` expanded) or as `secret_env` (the variable that
    /// holds it), never both; `None` when neither is given. The caller decides whether an
    /// absent or empty secret is allowed. Errors name the key, never the value.
    pub fn secret(
        &self,
        secret: Option<crate::Secret>,
        secret_env: Option<&str>,
    ) -> Result<Option<crate::Secret>, FieldError> {
        match (secret, secret_env) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "secret_env",
                "give either `secret` or `secret_env`, not both",
            )),
            (None, None) => Ok(None),
            (Some(secret), None) => Ok(Some(self.expand("secret", secret.expose())?.into())),
            (None, Some(var)) => std::env::var(var).map(|v| Some(v.into())).map_err(|_| {
                FieldError::new(
                    "secret_env",
                    format!("environment variable `{var}` is not set"),
                )
            }),
        }
    }
}

/// Checks that `value` lies in `[min, max]` (and is finite); the message names the field.
pub fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<f64, FieldError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("`{field}` must be between {min} and {max}, got {value}"),
        ))
    }
}

/// A number of seconds in `[min, max]` as a `chrono::Duration`, without overflow.
pub fn seconds_in(
    field: &str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<chrono::Duration, FieldError> {
    let s = check_range(field, value, min, max)?;
    // max is far below chrono's limit (about 292 million years) for every caller.
    Ok(chrono::Duration::milliseconds((s * 1000.0).round() as i64))
}

/// The longest duration any setting accepts: 100 years. Keeps every time sum far from overflow.
pub const MAX_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_variables_and_names_unknown_ones() {
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(expand_vars("${HOME}/x").unwrap(), format!("{home}/x"));
        }
        assert!(expand_vars("${SKYNET_DATA_DIR}/m").unwrap().ends_with("/m"));
        assert!(
            expand_vars("${SKYNET_SURELY_UNSET_VAR}")
                .unwrap_err()
                .contains("SKYNET_SURELY_UNSET_VAR")
        );
        assert_eq!(expand_vars("plain").unwrap(), "plain");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(
            expand_vars("${SKYNET_SURELY_UNSET_VAR:-mqtt://127.0.0.1:1883}").unwrap(),
            "mqtt://127.0.0.1:1883"
        );
        assert_eq!(expand_vars("a${SKYNET_SURELY_UNSET_VAR:-}b").unwrap(), "ab");
        assert_eq!(
            expand_vars("${SKYNET_SURELY_UNSET_VAR:-../var/city}/outbox.db").unwrap(),
            "../var/city/outbox.db"
        );
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(expand_vars("${HOME:-/nowhere}").unwrap(), home);
        }
        assert!(expand_vars("${:-x}").is_err());
        assert!(expand_vars("${A B}").is_err());
        assert!(expand_vars("${OPEN").is_err());
    }

    #[test]
    fn ranges_reject_nan_infinity_and_huge_values() {
        assert!(seconds_in("x", f64::NAN, 0.0, MAX_SECONDS).is_err());
        assert!(seconds_in("x", f64::INFINITY, 0.0, MAX_SECONDS).is_err());
        assert!(seconds_in("x", 1e300, 0.0, MAX_SECONDS).is_err());
        assert_eq!(
            seconds_in("x", 1.5, 0.0, MAX_SECONDS).unwrap(),
            chrono::Duration::milliseconds(1500)
        );
        assert_eq!(seconds_in("x", 1e8, 0.0, 1.0).unwrap_err().field, "x");
    }
}
