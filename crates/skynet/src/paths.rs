//! Where `scripts/setup.sh` puts what is not in git: the ONNX Runtime library, model weights
//! and media. `SKYNET_DATA_DIR` moves it all; otherwise `$XDG_DATA_HOME/skynet` or
//! `~/.local/share/skynet`.

use std::path::PathBuf;

pub const DATA_DIR_ENV: &str = "SKYNET_DATA_DIR";

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

/// Expands `${NAME}` from the environment in a config value. `SKYNET_DATA_DIR` always has a
/// value (its default). Returns the name of an unset variable as the error.
pub fn expand_vars(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{value}`"));
        };
        let name = &after[..end];
        let resolved = match std::env::var(name) {
            Ok(v) if !v.is_empty() => v,
            _ if name == DATA_DIR_ENV => data_dir().to_string_lossy().into_owned(),
            _ => return Err(format!("environment variable `{name}` is not set")),
        };
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

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
}
