//! The `[risk]` table of the config: the engine's settings, their defaults and their checks.
//!
//! ```toml
//! [risk]
//! half_life_s = 60            # default half-life of a category's evidence
//! close_after_s = 120         # an untouched incident closes after this long without evidence
//! hysteresis = 0.05           # a cell's level falls only this far below its threshold
//! default_ceiling = "II"      # the highest level one kind of evidence reaches on its own
//!
//! [risk.categories.gas_leak]
//! weight = 1.0                # multiplies the observations' weights
//! half_life_s = 300
//! ceiling = "II"
//! department = "emergency_management"
//!
//! [risk.grid_kinds.school]
//! weight = 1.5                # a gas leak weighs more in a school cell
//! raise = 1                   # and its ceilings are one level higher
//!
//! [risk.deadlines]
//! I = { dispatch_s = 900, resolve_s = 7200 }
//!
//! [[risk.fusion]]
//! name = "person-exposed-to-gas"
//! when = [{ category = "gas_leak" }, { category = "person_present", source = "camera" }]
//! within_s = 300
//! category = "person_exposed_to_gas"
//! level = "I"
//! ```

use std::collections::BTreeMap;

use chrono::Duration;
use serde::Deserialize;
use skynet_core::config::{MAX_SECONDS, seconds_in};
use skynet_core::{FieldError, RiskLevel};

use crate::{LevelThresholds, RiskConfig};

pub use crate::fusion_rules::{Condition, FusionRule, FusionScope, FusionSettings};

/// `[risk]` as written. Every key has a default, so the table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSettings {
    /// Evidence halves after this long (unless its category says otherwise).
    #[serde(default = "default_half_life")]
    pub half_life_s: f64,
    /// An incident nobody acted on closes after this long without evidence.
    #[serde(default = "default_close_after")]
    pub close_after_s: f64,
    /// An open incident that keeps learning emits a revision at most this often.
    #[serde(default = "default_update_every")]
    pub update_every_s: f64,
    /// The lowest level that opens an incident.
    #[serde(default = "default_open_at")]
    pub open_at: RiskLevel,
    /// Score thresholds of each level, rising from IV to I.
    #[serde(default)]
    pub levels: Option<LevelSettings>,
    /// How far below its threshold a cell's score must fall before its level drops.
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f32,
    /// The ceiling of categories that do not set one.
    #[serde(default = "default_ceiling")]
    pub default_ceiling: RiskLevel,
    /// The department of incidents whose category and cell name none.
    #[serde(default = "default_department")]
    pub default_department: String,
    /// Evidence this soon after an incident closed reopens it instead of opening another.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f64,
    /// How far one input (a reading's time, the wall clock) may move the engine's clock
    /// forward; further is a jump (`skynet_clock_jumps_total`), followed in steps this size.
    #[serde(default = "default_max_clock_step")]
    pub max_clock_step_s: f64,
    #[serde(default)]
    pub categories: BTreeMap<String, CategorySettings>,
    #[serde(default)]
    pub grid_kinds: BTreeMap<String, GridKindSettings>,
    #[serde(default)]
    pub reliability: ReliabilitySettings,
    /// By level (`I`, `II`, `III`, `IV`); levels left out keep their defaults.
    #[serde(default)]
    pub deadlines: BTreeMap<String, DeadlineSettings>,
    #[serde(default)]
    pub fusion: Vec<FusionSettings>,
    /// Appends every observation the engine takes to this JSON Lines file, for
    /// `skynet replay`.
    #[serde(default)]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelSettings {
    pub iv: f32,
    pub iii: f32,
    pub ii: f32,
    pub i: f32,
}

/// `[risk.categories.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySettings {
    pub weight: Option<f32>,
    pub half_life_s: Option<f64>,
    /// The highest level this category reaches on its own.
    pub ceiling: Option<RiskLevel>,
    pub department: Option<String>,
    /// By level, like `[risk.deadlines]`.
    #[serde(default)]
    pub deadlines: BTreeMap<String, DeadlineSettings>,
}

/// `[risk.grid_kinds.<kind>]`, for cells whose GeoJSON `kind` is `<kind>`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridKindSettings {
    #[serde(default = "one")]
    pub weight: f32,
    /// Levels above each category's ceiling that evidence reaches in such a cell.
    #[serde(default)]
    pub raise: u8,
}

/// `[risk.reliability]`: how much each source's evidence is trusted, 0 to 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilitySettings {
    #[serde(default = "one")]
    pub camera: f32,
    #[serde(default = "one")]
    pub sensor: f32,
    /// By device id; overrides the kind's value.
    #[serde(default)]
    pub devices: BTreeMap<String, f32>,
}

impl Default for ReliabilitySettings {
    fn default() -> Self {
        Self {
            camera: 1.0,
            sensor: 1.0,
            devices: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineSettings {
    pub dispatch_s: Option<f64>,
    pub resolve_s: Option<f64>,
}

const fn one() -> f32 {
    1.0
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
const fn default_hysteresis() -> f32 {
    0.05
}
const fn default_ceiling() -> RiskLevel {
    RiskLevel::II
}
fn default_department() -> String {
    "command_center".into()
}
const fn default_cooldown() -> f64 {
    300.0
}
#[allow(clippy::cast_precision_loss)] // a small constant
const fn default_max_clock_step() -> f64 {
    crate::engine::DEFAULT_MAX_CLOCK_STEP_S as f64
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            half_life_s: default_half_life(),
            close_after_s: default_close_after(),
            update_every_s: default_update_every(),
            open_at: default_open_at(),
            levels: None,
            hysteresis: default_hysteresis(),
            default_ceiling: default_ceiling(),
            default_department: default_department(),
            cooldown_s: default_cooldown(),
            max_clock_step_s: default_max_clock_step(),
            categories: BTreeMap::new(),
            grid_kinds: BTreeMap::new(),
            reliability: ReliabilitySettings::default(),
            deadlines: BTreeMap::new(),
            fusion: Vec::new(),
            record: None,
        }
    }
}

/// A category's policy, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryPolicy {
    pub weight: f32,
    pub half_life: Duration,
    pub ceiling: RiskLevel,
    pub department: Option<String>,
    /// By level, IV to I.
    pub deadlines: [LevelDeadlines; 4],
}

/// How long after an incident opens it must be dispatched and resolved, at one level.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LevelDeadlines {
    pub dispatch: Option<Duration>,
    pub resolve: Option<Duration>,
}

/// A grid kind's policy, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridKindPolicy {
    pub weight: f32,
    pub raise: u8,
}

/// Default deadlines by level, IV to I: level I dispatched within 15 min, resolved within
/// 2 h; level IV has no dispatch deadline and three days to be resolved.
pub fn default_deadlines() -> [LevelDeadlines; 4] {
    let d = |dispatch: Option<i64>, resolve: i64| LevelDeadlines {
        dispatch: dispatch.map(Duration::minutes),
        resolve: Some(Duration::minutes(resolve)),
    };
    [
        d(None, 72 * 60),
        d(Some(120), 24 * 60),
        d(Some(30), 8 * 60),
        d(Some(15), 120),
    ]
}

/// Index of a level in arrays ordered IV to I.
pub(crate) fn level_index(level: RiskLevel) -> usize {
    match level {
        RiskLevel::IV => 0,
        RiskLevel::III => 1,
        RiskLevel::II => 2,
        RiskLevel::I => 3,
    }
}

pub(crate) fn seconds(name: &str, value: f64) -> Result<Duration, FieldError> {
    seconds_in(name, value, 0.001, MAX_SECONDS).map_err(|_| {
        FieldError::new(
            name,
            format!("`{name}` must be a positive number of seconds up to 100 years, got {value}"),
        )
    })
}

pub(crate) fn unit(name: &str, value: f32, allow_zero: bool) -> Result<f32, FieldError> {
    let ok = value.is_finite() && value <= 1.0 && (value > 0.0 || (allow_zero && value == 0.0));
    if ok {
        Ok(value)
    } else {
        Err(FieldError::new(
            name,
            format!("`{name}` must be within (0, 1], got {value}"),
        ))
    }
}

pub(crate) fn category_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("category `{name}` must be 1 to 64 lower-case letters, digits or `_`"),
        ))
    }
}

fn deadlines_by_level(
    field: &str,
    base: [LevelDeadlines; 4],
    table: &BTreeMap<String, DeadlineSettings>,
) -> Result<[LevelDeadlines; 4], FieldError> {
    let mut out = base;
    for (key, d) in table {
        let Some(level) = RiskLevel::parse(key) else {
            return Err(FieldError::new(
                field,
                format!("`{field}.{key}`: levels are I, II, III and IV"),
            ));
        };
        let slot = &mut out[level_index(level)];
        if let Some(s) = d.dispatch_s {
            slot.dispatch = Some(seconds(&format!("{field}.{key}.dispatch_s"), s)?);
        }
        if let Some(s) = d.resolve_s {
            slot.resolve = Some(seconds(&format!("{field}.{key}.resolve_s"), s)?);
        }
    }
    Ok(out)
}

impl RiskSettings {
    /// Where to record observations (`record`), resolved against the config file.
    pub fn record_path(
        &self,
        cx: &skynet_core::ConfigContext,
    ) -> Result<Option<std::path::PathBuf>, FieldError> {
        self.record
            .as_deref()
            .map(|p| cx.resolve_path("record", p))
            .transpose()
    }

    /// Checks every value and gives the engine's config for `node`. Errors name the key.
    pub fn validate(&self, node: &str) -> Result<RiskConfig, FieldError> {
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
        if !(0.0..0.5).contains(&self.hysteresis) {
            return Err(FieldError::new(
                "hysteresis",
                format!(
                    "`hysteresis` must be within [0, 0.5), got {}",
                    self.hysteresis
                ),
            ));
        }
        let half_life = seconds("half_life_s", self.half_life_s)?;
        let deadlines = deadlines_by_level("deadlines", default_deadlines(), &self.deadlines)?;
        skynet_core::validate_id("department", &self.default_department)
            .map_err(|m| FieldError::new("default_department", m))?;

        let mut categories = BTreeMap::new();
        for (name, c) in &self.categories {
            let field = format!("categories.{name}");
            category_name(&field, name)?;
            let weight = match c.weight {
                None => 1.0,
                Some(w) if w.is_finite() && w > 0.0 && w <= 10.0 => w,
                Some(w) => {
                    return Err(FieldError::new(
                        format!("{field}.weight"),
                        format!("`weight` multiplies evidence: within (0, 10], got {w}"),
                    ));
                }
            };
            if let Some(d) = &c.department {
                skynet_core::validate_id("department", d)
                    .map_err(|m| FieldError::new(format!("{field}.department"), m))?;
            }
            categories.insert(
                name.clone(),
                CategoryPolicy {
                    weight,
                    half_life: match c.half_life_s {
                        None => half_life,
                        Some(s) => seconds(&format!("{field}.half_life_s"), s)?,
                    },
                    ceiling: c.ceiling.unwrap_or(self.default_ceiling),
                    department: c.department.clone(),
                    deadlines: deadlines_by_level(
                        &format!("{field}.deadlines"),
                        deadlines,
                        &c.deadlines,
                    )?,
                },
            );
        }

        let mut grid_kinds = BTreeMap::new();
        for (kind, k) in &self.grid_kinds {
            if !(k.weight.is_finite() && k.weight > 0.0 && k.weight <= 10.0) {
                return Err(FieldError::new(
                    format!("grid_kinds.{kind}.weight"),
                    format!("`weight` must be within (0, 10], got {}", k.weight),
                ));
            }
            if k.raise > 3 {
                return Err(FieldError::new(
                    format!("grid_kinds.{kind}.raise"),
                    format!("`raise` is 0 to 3 levels, got {}", k.raise),
                ));
            }
            grid_kinds.insert(
                kind.clone(),
                GridKindPolicy {
                    weight: k.weight,
                    raise: k.raise,
                },
            );
        }

        let r = &self.reliability;
        unit("reliability.camera", r.camera, true)?;
        unit("reliability.sensor", r.sensor, true)?;
        for (device, v) in &r.devices {
            unit(&format!("reliability.devices.{device}"), *v, true)?;
        }

        let mut fusion = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, f) in self.fusion.iter().enumerate() {
            let field = |key: &str| format!("fusion[{i}].{key}");
            let rule = f.validate(i)?;
            skynet_core::validate_id("fusion", rule.name())
                .map_err(|m| FieldError::new(field("name"), m))?;
            if !names.insert(rule.name().to_string()) {
                return Err(FieldError::new(
                    field("name"),
                    format!("fusion `{}` is named twice", rule.name()),
                ));
            }
            fusion.push(rule);
        }

        Ok(RiskConfig {
            node: node.to_string(),
            half_life,
            close_after: seconds("close_after_s", self.close_after_s)?,
            update_every: seconds("update_every_s", self.update_every_s)?,
            cooldown: seconds("cooldown_s", self.cooldown_s)?,
            // At least a sweep's interval: a smaller step would never reach the next sweep.
            max_clock_step: seconds_in("max_clock_step_s", self.max_clock_step_s, 1.0, MAX_SECONDS)
                .map_err(|_| {
                    FieldError::new(
                        "max_clock_step_s",
                        format!(
                            "`max_clock_step_s` must be at least 1 second and at most 100 years, got {}",
                            self.max_clock_step_s
                        ),
                    )
                })?,
            thresholds,
            open_at: self.open_at,
            hysteresis: self.hysteresis,
            default_ceiling: self.default_ceiling,
            default_department: self.default_department.clone(),
            deadlines,
            categories,
            grid_kinds,
            reliability_camera: r.camera,
            reliability_sensor: r.sensor,
            reliability: r.devices.clone(),
            fusion,
            ..RiskConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RiskConfig, FieldError> {
        let s: RiskSettings =
            toml::from_str(text).map_err(|e| FieldError::new("toml", e.to_string()))?;
        s.validate("n")
    }

    #[test]
    fn defaults_and_errors_that_name_the_key() {
        let config = RiskSettings::default().validate("n").unwrap();
        assert_eq!(config.half_life, chrono::Duration::seconds(60));
        assert_eq!(config.update_every, chrono::Duration::seconds(30));
        assert_eq!(config.default_ceiling, RiskLevel::II);
        assert_eq!(
            config.deadlines[3].dispatch,
            Some(chrono::Duration::minutes(15))
        );
        for (field, text) in [
            ("half_life_s", "half_life_s = 0"),
            ("close_after_s", "close_after_s = -1"),
            ("max_clock_step_s", "max_clock_step_s = 0.5"),
            ("update_every_s", "update_every_s = 1e300"),
            (
                "levels",
                "levels = { iv = 0.5, iii = 0.4, ii = 0.7, i = 0.9 }",
            ),
            ("hysteresis", "hysteresis = 0.7"),
            (
                "categories.gas_leak.weight",
                "categories.gas_leak = { weight = 0 }",
            ),
            ("categories.Gas", "categories.Gas = {}"),
            ("deadlines", "deadlines.V = { resolve_s = 1 }"),
            ("deadlines.I.dispatch_s", "deadlines.I = { dispatch_s = 0 }"),
            (
                "grid_kinds.school.raise",
                "grid_kinds.school = { raise = 4 }",
            ),
            (
                "reliability.devices.gas-1",
                "reliability.devices = { gas-1 = 2.0 }",
            ),
            (
                "fusion[0].when",
                "[[fusion]]\nkind = \"all\"\nname = \"x\"\nwhen = [{ category = \"a\" }]\nwithin_s = 1\ncategory = \"b\"\nlevel = \"I\"",
            ),
            (
                "fusion[1].name",
                "[[fusion]]\nkind = \"unconfirmed\"\nname = \"x\"\nsensor = [\"a\"]\nwithin_s = 1\nconfidence = 0.5\n[[fusion]]\nkind = \"unconfirmed\"\nname = \"x\"\nsensor = [\"a\"]\nwithin_s = 1\nconfidence = 0.5",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.field, field, "{text}: {}", err.message);
        }
    }

    #[test]
    fn categories_inherit_and_override() {
        let config = parse(
            "half_life_s = 30\ndeadlines.I = { dispatch_s = 60 }\n\
             [categories.gas_leak]\nceiling = \"I\"\nhalf_life_s = 300\ndepartment = \"fire\"\ndeadlines.I = { resolve_s = 600 }\n\
             [categories.loitering]\n",
        )
        .unwrap();
        let gas = &config.categories["gas_leak"];
        assert_eq!(gas.ceiling, RiskLevel::I);
        assert_eq!(gas.half_life, Duration::seconds(300));
        assert_eq!(gas.deadlines[3].dispatch, Some(Duration::seconds(60)));
        assert_eq!(gas.deadlines[3].resolve, Some(Duration::seconds(600)));
        let loitering = &config.categories["loitering"];
        assert_eq!(loitering.ceiling, RiskLevel::II);
        assert_eq!(loitering.half_life, Duration::seconds(30));
    }
}
