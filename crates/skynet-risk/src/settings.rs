//! The `[risk]` table of the config: the engine's settings, their defaults and their checks.

use serde::Deserialize;
use skynet_core::config::{MAX_SECONDS, seconds_in};
use skynet_core::{FieldError, RiskLevel};

use crate::{LevelThresholds, RiskConfig};

/// `[risk]` as written. Every key has a default, so the table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSettings {
    /// A cell's risk halves after this long without evidence.
    #[serde(default = "default_half_life")]
    pub half_life_s: f64,
    /// An incident closes after this long without evidence from its camera.
    #[serde(default = "default_close_after")]
    pub close_after_s: f64,
    /// An open incident that keeps learning emits `updated` at most this often.
    #[serde(default = "default_update_every")]
    pub update_every_s: f64,
    /// The lowest level that opens an incident.
    #[serde(default = "default_open_at")]
    pub open_at: RiskLevel,
    /// Score thresholds of each level, rising from IV to I.
    #[serde(default)]
    pub levels: Option<LevelSettings>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelSettings {
    pub iv: f32,
    pub iii: f32,
    pub ii: f32,
    pub i: f32,
}

const fn default_half_life() -> f64 {
    60.0
}
const fn default_close_after() -> f64 {
    120.0
}
const fn default_update_every() -> f64 {
    30.0
}
const fn default_open_at() -> RiskLevel {
    RiskLevel::IV
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            half_life_s: default_half_life(),
            close_after_s: default_close_after(),
            update_every_s: default_update_every(),
            open_at: default_open_at(),
            levels: None,
        }
    }
}

impl RiskSettings {
    /// Checks every value (durations from 1 ms to 100 years, thresholds rising within
    /// (0, 1]) and gives the engine's config for `node`. Errors name the key.
    pub fn validate(&self, node: &str) -> Result<RiskConfig, FieldError> {
        let seconds = |name: &str, value: f64| {
            seconds_in(name, value, 0.001, MAX_SECONDS).map_err(|_| {
                FieldError::new(
                    name,
                    format!(
                        "`{name}` must be a positive number of seconds up to 100 years, got {value}"
                    ),
                )
            })
        };
        let thresholds = match self.levels {
            None => LevelThresholds::default(),
            Some(l) => {
                let t = LevelThresholds {
                    iv: l.iv,
                    iii: l.iii,
                    ii: l.ii,
                    i: l.i,
                };
                t.validate().map_err(|m| FieldError::new("levels", m))?;
                t
            }
        };
        Ok(RiskConfig {
            node: node.to_string(),
            half_life: seconds("half_life_s", self.half_life_s)?,
            close_after: seconds("close_after_s", self.close_after_s)?,
            update_every: seconds("update_every_s", self.update_every_s)?,
            thresholds,
            open_at: self.open_at,
            ..RiskConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_that_name_the_key() {
        let config = RiskSettings::default().validate("n").unwrap();
        assert_eq!(config.half_life, chrono::Duration::seconds(60));
        assert_eq!(config.update_every, chrono::Duration::seconds(30));
        for (field, settings) in [
            (
                "half_life_s",
                RiskSettings {
                    half_life_s: 0.0,
                    ..RiskSettings::default()
                },
            ),
            (
                "close_after_s",
                RiskSettings {
                    close_after_s: f64::NAN,
                    ..RiskSettings::default()
                },
            ),
            (
                "update_every_s",
                RiskSettings {
                    update_every_s: 1e300,
                    ..RiskSettings::default()
                },
            ),
            (
                "levels",
                RiskSettings {
                    levels: Some(LevelSettings {
                        iv: 0.5,
                        iii: 0.4,
                        ii: 0.7,
                        i: 0.9,
                    }),
                    ..RiskSettings::default()
                },
            ),
        ] {
            assert_eq!(settings.validate("n").unwrap_err().field, field);
        }
    }
}
