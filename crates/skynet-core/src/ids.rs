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
    /// A camera, unique within a deployment (`cam-street-01`).
    CameraId
);
string_id!(
    /// A grid cell (網格) of the city map, as named in the grid GeoJSON.
    GridId
);

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
