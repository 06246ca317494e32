//! A credential read from config: a password, a token, an HMAC key.
//!
//! Its `Debug`, `Display` and `Serialize` never show the value, so a config struct that
//! holds one can derive `Debug` and be logged, put in an error or serialised without
//! leaking it. The value is read only through [`Secret::expose`], at the one place that
//! sends it (a CONNECT packet, an `Authorization` header, an HMAC).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A credential; see the module docs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a secret shows in logs, errors and serialised output.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// A URI that may carry a user name and password (`rtsp://user:pw@cam/x`). `Debug` and
/// `Display` show it without them ([`redact_uri`](crate::redact_uri)); the whole URI is read
/// through [`MaskedUri::expose`] or as a `&str` (`Deref`), where it is used.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MaskedUri(String);

impl MaskedUri {
    pub fn new(uri: impl Into<String>) -> Self {
        Self(uri.into())
    }

    /// The URI with its credentials, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URI without credentials.
    pub fn redacted(&self) -> String {
        crate::redact_uri(&self.0)
    }
}

impl std::ops::Deref for MaskedUri {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for MaskedUri {
    fn from(uri: String) -> Self {
        Self(uri)
    }
}

impl From<&str> for MaskedUri {
    fn from(uri: &str) -> Self {
        Self(uri.to_string())
    }
}

impl fmt::Debug for MaskedUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for MaskedUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for MaskedUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_never_shows() {
        let secret: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(secret.expose(), "hunter2");
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{:?}", Some(&secret)),
            serde_json::to_string(&secret).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    #[test]
    fn a_masked_uri_shows_no_credentials() {
        let uri: MaskedUri = serde_json::from_str("\"rtsp://admin:hunter2@cam:554/x\"").unwrap();
        assert_eq!(uri.expose(), "rtsp://admin:hunter2@cam:554/x");
        assert!(uri.starts_with("rtsp://"));
        for shown in [
            format!("{uri:?}"),
            format!("{uri}"),
            serde_json::to_string(&uri).unwrap(),
        ] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("admin"),
                "{shown}"
            );
            assert!(shown.contains("cam:554/x"), "{shown}");
        }
    }
}
