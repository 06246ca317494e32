//! Identifiers that travel with every frame, observation and incident (and every tracing span).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Arc::from(id.as_ref()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self(Arc::from(""))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

string_id!(
    /// A device: a camera (`cam-street-01`) or a sensor (`gas-07`), unique within a
    /// deployment. Camera and sensor ids share one namespace, so one type names both.
    DeviceId
);
string_id!(
    /// A grid cell (網格) of the city map, as named in the grid GeoJSON.
    GridId
);

/// Checks an id (node, grid, camera, rule, sensor, sink): 1 to 128 characters from
/// `[A-Za-z0-9._-]`, so it is safe in metric labels, file names, subjects and topics.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "{what} id must be 1 to 128 characters, got {}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} id `{}` has `{}`: use only letters, digits, `.`, `_` and `-`",
            id.escape_debug(),
            bad.escape_debug()
        ));
    }
    Ok(())
}

/// Who owns a camera. Incidents carry it so the case system can route them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    /// Public security (公安) cameras.
    Police,
    /// Safety-production (安全生产) cameras at plants, sites and warehouses.
    SafetyProduction,
    /// Street and city-management (城管) cameras.
    CityManagement,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Police => "police",
            Self::SafetyProduction => "safety_production",
            Self::CityManagement => "city_management",
        }
    }
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_restricted_to_a_safe_alphabet() {
        assert!(validate_id("camera", "cam-street_01.a").is_ok());
        for bad in ["", "a b", "a/b", "a\"b", "ü", "a{b}", "x\n"] {
            assert!(validate_id("camera", bad).is_err(), "{bad:?}");
        }
        assert!(validate_id("camera", &"a".repeat(129)).is_err());
    }
}
