//! One `[[sensors]]` table: a sensor of the registry, its place and its rules.
//!
//! This crate checks what is the sensor's own (id, kind, quantity, unit, range, expected
//! interval); the binary resolves the grid cell (`grid` or `location`, against the city's
//! cells) and hands each `[[sensors.rules]]` table to the sensor rule family.

use serde::Deserialize;
use skynet_core::{DeviceId, FieldError, OwnerKind, validate_id};

use super::{SensorKind, SensorSpec, convert};

/// One `[[sensors]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSettings {
    pub id: String,
    pub kind: SensorKind,
    pub owner: OwnerKind,
    pub grid: Option<String>,
    pub location: Option<[f64; 2]>,
    /// The record name its readings carry; default: the kind's (`co` for `gas_co`).
    pub quantity: Option<String>,
    /// The unit of readings that name none; default: the kind's canonical unit.
    pub unit: Option<String>,
    /// `[min, max]` a working sensor reports, in the canonical unit; default: the kind's
    /// physical range.
    pub range: Option<[f64; 2]>,
    /// Nothing for this long: a `sensor_offline` incident. Default 60; 0 never.
    #[serde(default = "default_expected_interval")]
    pub expected_interval_s: f64,
    #[serde(default)]
    pub rules: Vec<toml::Table>,
}

fn default_expected_interval() -> f64 {
    60.0
}

/// A checked `[[sensors]]` table: the sensor as ingest validates its readings, and what the
/// binary still resolves (the cell, the rules).
#[derive(Debug)]
pub struct ValidSensor {
    pub spec: SensorSpec,
    pub owner: OwnerKind,
    pub grid: Option<String>,
    pub location: Option<[f64; 2]>,
    /// `None`: the sensor is never reported offline.
    pub expected_interval: Option<chrono::Duration>,
    pub rules: Vec<toml::Table>,
}

impl SensorSettings {
    /// Pure checks; errors name the key.
    pub fn validate(self) -> Result<ValidSensor, FieldError> {
        let id = self.id.as_str();
        validate_id("sensor", id).map_err(|m| FieldError::new("id", m))?;
        if self.kind == SensorKind::Unassigned {
            return Err(FieldError::new(
                "kind",
                "`unassigned` is what unknown sensors are registered as; give this sensor its kind",
            ));
        }
        let mut spec = SensorSpec::new(DeviceId::new(id), self.kind);
        if let Some(q) = &self.quantity {
            validate_id("quantity", q).map_err(|m| FieldError::new("quantity", m))?;
            spec.quantity = q.clone();
        }
        if let Some(unit) = &self.unit {
            if convert(0.0, unit, self.kind.canonical_unit()).is_none() {
                return Err(FieldError::new(
                    "unit",
                    format!(
                        "unit `{unit}` does not measure a {} sensor's quantity (its unit is `{}`)",
                        self.kind.as_str(),
                        self.kind.canonical_unit()
                    ),
                ));
            }
            spec.unit = Some(unit.clone());
        }
        if let Some([lo, hi]) = self.range {
            let (min, max) = self.kind.physical_range();
            if !(lo.is_finite() && hi.is_finite() && lo < hi && lo >= min && hi <= max) {
                return Err(FieldError::new(
                    "range",
                    format!(
                        "`range` must be [min, max] with min < max, within the kind's physical range [{min}, {max}]"
                    ),
                ));
            }
            spec.range = (lo, hi);
        }
        let expected_interval = match self.expected_interval_s {
            0.0 => None,
            s => Some(skynet_core::config::seconds_in(
                "expected_interval_s",
                s,
                1.0,
                30.0 * 86_400.0,
            )?),
        };
        Ok(ValidSensor {
            spec,
            owner: self.owner,
            grid: self.grid,
            location: self.location,
            expected_interval,
            rules: self.rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<ValidSensor, FieldError> {
        toml::from_str::<SensorSettings>(text)
            .map_err(|e| FieldError::new("<toml>", e.to_string()))?
            .validate()
    }

    #[test]
    fn a_sensor_takes_its_kinds_defaults_and_refuses_bad_values_by_key() {
        let ok = check(
            "id = \"gas-07\"\nkind = \"gas_co\"\nowner = \"safety_production\"\ngrid = \"G-1\"",
        )
        .unwrap();
        assert_eq!(ok.spec.quantity, "co");
        assert_eq!(ok.expected_interval, Some(chrono::Duration::seconds(60)));
        let base = "id = \"gas-07\"\nkind = \"gas_co\"\nowner = \"police\"\n";
        for (extra, field) in [
            ("unit = \"celsius\"", "unit"),
            ("range = [10.0, 5.0]", "range"),
            ("quantity = \"a b\"", "quantity"),
            ("expected_interval_s = 0.5", "expected_interval_s"),
        ] {
            assert_eq!(
                check(&format!("{base}{extra}")).unwrap_err().field,
                field,
                "{extra}"
            );
        }
        let unassigned =
            check("id = \"x\"\nkind = \"unassigned\"\nowner = \"police\"").unwrap_err();
        assert_eq!(unassigned.field, "kind");
        assert!(
            check(&format!("{base}expected_interval_s = 0"))
                .unwrap()
                .expected_interval
                .is_none()
        );
    }
}
