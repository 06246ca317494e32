//! Sensor rules: readings in, evidence ([`Observation`]s) and device faults out, into the
//! same risk engine as the cameras' rules.
//!
//! Kinds: [`threshold`] (with hysteresis and flapping suppression) and [`rate_of_change`].
//! Each is a [`Component`] of the [`SensorRuleFamily`]: one `[[sensors.rules]]` table is
//! `kind`, the keys every sensor rule has ([`SensorRuleCommon`]) and the kind's own keys.
//! Staleness is not a rule: [`SensorRules`] declares a sensor offline when it sends nothing
//! for `expected_interval_s` (a device-fault of category `sensor_offline`, closed when
//! readings come back).
//!
//! Rules see event times (the readings' times); staleness uses the arrival clock, since a
//! dead sensor sends no times at all.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde::de::Error as _;
use skynet_core::config::{MAX_SECONDS, check_range, seconds_in};
use skynet_core::{
    Component, DeviceFault, DeviceId, Evidence, Family, FieldError, GridId, Kind, Observation,
    OwnerKind, Registry, RuleRef, SensorReading, SourceKind, SourceRef, TableError,
};

pub mod conformance;
pub mod rate_of_change;
pub mod threshold;

#[cfg(test)]
mod tests;

pub use rate_of_change::{RateOfChange, RateOfChangeConfig};
pub use threshold::{Threshold, ThresholdConfig};

/// The category of a stale sensor's device-fault incident.
pub const SENSOR_OFFLINE: &str = "sensor_offline";

/// What a sensor rule's validation may look at. Today's kinds check their own keys only;
/// the sensor is named for messages and for kinds that will depend on it.
#[derive(Debug, Clone, Copy)]
pub struct SensorRuleContext<'a> {
    /// The sensor's id (empty where it is not known, as in [`SensorRuleSettings`]).
    pub sensor: &'a str,
}

/// The sensor-rule family: one `[[sensors.rules]]` table each. A kind is a [`Component`]
/// whose validated value is a [`BuildSensorRule`]; the family validates the shared keys and
/// holds both in a [`SensorRuleSpec`].
#[derive(Debug)]
pub struct SensorRuleFamily;

impl Family for SensorRuleFamily {
    const NAME: &'static str = "sensor rule";
    type Context<'a> = SensorRuleContext<'a>;
    type Validated = SensorRuleSpec;
}

/// A sensor rule kind: a [`Component`] of the family, with the keys it reads.
///
/// The keys of other kinds are listed because `[[sensors.rules]]` was one flat table before
/// kinds had their own modules, and configs rely on how it answered: keys in `REFUSED` are
/// refused with "`<key>` does not apply to a `<kind>` rule", keys in `IGNORED` (they had
/// defaults, so nobody noticed them) are accepted and ignored.
pub trait SensorRuleKind: Component<SensorRuleFamily, Validated: BuildSensorRule> {
    /// The kind's own keys, in the order error messages list them.
    const KEYS: &'static [&'static str];
    const REFUSED: &'static [&'static str] = &[];
    const IGNORED: &'static [&'static str] = &[];
}

/// A validated rule condition of any kind: builds its running state, fresh, once per run.
pub trait BuildSensorRule: std::fmt::Debug + Send + Sync {
    fn build(&self) -> Box<dyn SensorCondition>;
}

/// A running rule condition, fed its sensor's readings in order.
pub trait SensorCondition: Send {
    /// Whether this reading is evidence. `due`: whether `repeat_s` has passed since the last
    /// evidence; a kind calls [`Gate::emit`] to give evidence (which flapping may suppress).
    fn evaluate(&mut self, at: DateTime<Utc>, value: f64, due: bool, gate: &mut Gate) -> bool;

    /// The condition's memory (a `for_s` streak, a window of readings, flapping history),
    /// saved with the pipeline state so a restart goes on where it stopped. `Null`: nothing
    /// worth keeping.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Takes back what [`state`](Self::state) gave; anything it cannot read is ignored (the
    /// condition then starts afresh, as on a first run).
    fn restore(&mut self, _state: serde_json::Value) {}
}

/// The registered kind `T` (the family reads the shared keys itself, so the kind's table
/// reader is the family's, not [`Kind::of`]'s).
pub fn kind<T: SensorRuleKind>() -> Kind<SensorRuleFamily> {
    Kind {
        name: T::KIND,
        example: T::EXAMPLE,
        parse: parse_kind::<T>,
    }
}

/// This crate's sensor rule kinds.
pub fn register(registry: &mut Registry) {
    registry
        .add(kind::<ThresholdConfig>())
        .add(kind::<RateOfChangeConfig>());
}

/// This crate's kinds, for [`SensorRuleSettings`] (which has no registry at hand).
fn builtin() -> &'static (Registry, Vec<&'static str>) {
    static BUILTIN: OnceLock<(Registry, Vec<&'static str>)> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let mut registry = Registry::default();
        register(&mut registry);
        let names = registry.names::<SensorRuleFamily>();
        (registry, names)
    })
}

fn default_weight() -> f32 {
    0.5
}
fn default_repeat() -> f64 {
    10.0
}

/// The keys every sensor rule has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRuleCommon {
    /// Unique on its sensor; default: the kind.
    pub name: Option<String>,
    /// The incident category its evidence opens (`gas_leak`).
    pub category: String,
    #[serde(default = "default_weight")]
    pub weight: f32,
    /// While the condition holds, evidence is repeated at most this often (event time).
    #[serde(default = "default_repeat")]
    pub repeat_s: f64,
}

impl SensorRuleCommon {
    const KEYS: [&'static str; 4] = ["name", "category", "weight", "repeat_s"];
}

/// A validated sensor rule, ready to build.
#[derive(Debug, Clone)]
pub struct SensorRuleSpec {
    pub name: String,
    pub kind: &'static str,
    pub category: String,
    pub weight: f32,
    pub repeat: Duration,
    pub condition: Arc<dyn BuildSensorRule>,
}

/// Reads and validates one table (without `kind`) as a rule of kind `T`: the same checks,
/// in the same order and with the same messages, as the flat table before the split.
fn parse_kind<T: SensorRuleKind>(
    table: toml::Table,
    cx: &SensorRuleContext<'_>,
) -> Result<Arc<SensorRuleSpec>, TableError> {
    let mut common = toml::Table::new();
    let mut own = toml::Table::new();
    let mut refused = Vec::new();
    for (key, value) in table {
        let k = key.as_str();
        if SensorRuleCommon::KEYS.contains(&k) {
            common.insert(key, value);
        } else if T::KEYS.contains(&k) {
            own.insert(key, value);
        } else if T::REFUSED.contains(&k) {
            refused.push(key);
        } else if !T::IGNORED.contains(&k) {
            let expected: Vec<&str> = ["kind"]
                .iter()
                .chain(&SensorRuleCommon::KEYS)
                .chain(T::KEYS)
                .chain(T::REFUSED)
                .chain(T::IGNORED)
                .copied()
                .collect();
            return Err(toml::de::Error::custom(unknown_field(k, &expected)).into());
        }
    }
    let config: T = toml::Value::Table(own).try_into()?;
    let common: SensorRuleCommon = toml::Value::Table(common).try_into()?;

    let name = common.name.unwrap_or_else(|| T::KIND.to_string());
    skynet_core::validate_id("rule", &name).map_err(|m| FieldError::new("name", m))?;
    skynet_core::validate_id("category", &common.category)
        .map_err(|m| FieldError::new("category", m))?;
    let weight = check_range("weight", f64::from(common.weight), 0.01, 1.0)? as f32;
    let repeat = seconds_in("repeat_s", common.repeat_s, 0.0, MAX_SECONDS)?;
    if let Some(field) = T::REFUSED.iter().find(|k| refused.iter().any(|r| r == *k)) {
        return Err(FieldError::new(
            *field,
            format!("`{field}` does not apply to a `{}` rule", T::KIND),
        )
        .into());
    }
    let condition = config.validate(cx)?;
    Ok(Arc::new(SensorRuleSpec {
        name,
        kind: T::KIND,
        category: common.category,
        weight,
        repeat,
        condition: Arc::new(condition),
    }))
}

/// serde's words for an unknown key, so the message reads as it did from the flat table.
fn unknown_field(field: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{field}`, there are no fields"),
        [one] => format!("unknown field `{field}`, expected {one}"),
        [a, b] => format!("unknown field `{field}`, expected {a} or {b}"),
        all => format!(
            "unknown field `{field}`, expected one of {}",
            all.join(", ")
        ),
    }
}

/// A number a rule compares readings with: finite, where present.
pub(crate) fn finite(field: &str, v: Option<f64>) -> Result<Option<f64>, FieldError> {
    match v {
        Some(x) if !x.is_finite() => Err(FieldError::new(
            field,
            format!("`{field}` must be a finite number"),
        )),
        other => Ok(other),
    }
}

/// One `[[sensors.rules]]` table (with `kind`), read as one of this crate's kinds: what the
/// binary reads a sensor's rules with. Reading checks the kind and the keys' types (serde
/// errors, as before); [`validate`](Self::validate) gives the kind's verdict.
#[derive(Debug, Clone)]
pub struct SensorRuleSettings {
    pub kind: String,
    validated: Result<SensorRuleSpec, FieldError>,
}

impl<'de> Deserialize<'de> for SensorRuleSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = skynet_core::component::take_kind::<D::Error>(&mut table)?;
        let (registry, names) = builtin();
        let Some(found) = registry.kind::<SensorRuleFamily>(&kind) else {
            return Err(D::Error::unknown_variant(&kind, names));
        };
        let validated = match (found.parse)(table, &SensorRuleContext { sensor: "" }) {
            Ok(spec) => Ok(SensorRuleSpec::clone(&spec)),
            Err(TableError::Field(e)) => Err(e),
            Err(TableError::Serde(e)) => return Err(D::Error::custom(e.message())),
        };
        Ok(Self { kind, validated })
    }
}

impl SensorRuleSettings {
    pub fn validate(&self) -> Result<SensorRuleSpec, FieldError> {
        self.validated.clone()
    }
}

/// What every running rule shares: when it last gave evidence, whether it is flapping, and
/// its metrics.
#[derive(Debug)]
pub struct Gate {
    name: String,
    last_emitted: Option<DateTime<Utc>>,
    flapping: bool,
    flapping_gauge: metrics::Gauge,
    suppressed: metrics::Counter,
    observations: metrics::Counter,
}

impl Gate {
    fn new(sensor: &str, rule: &str) -> Self {
        let (s, r) = (sensor.to_string(), rule.to_string());
        Self {
            name: rule.to_string(),
            last_emitted: None,
            flapping: false,
            flapping_gauge: metrics::gauge!("skynet_sensor_flapping", "sensor" => s.clone(), "rule" => r.clone()),
            suppressed: metrics::counter!("skynet_sensor_suppressed_total", "sensor" => s.clone(), "rule" => r.clone()),
            observations: metrics::counter!("skynet_sensor_observations_total", "sensor" => s, "rule" => r),
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn flapping(&self) -> bool {
        self.flapping
    }

    /// Marks the rule flapping (its evidence suppressed) or settled.
    pub fn set_flapping(&mut self, flapping: bool) {
        self.flapping = flapping;
        self.flapping_gauge.set(if flapping { 1.0 } else { 0.0 });
    }

    /// Gives evidence at `at` if `due` and not flapping (a flapping rule's is counted as
    /// suppressed).
    pub fn emit(&mut self, at: DateTime<Utc>, due: bool) -> bool {
        if !due {
            return false;
        }
        if self.flapping {
            self.suppressed.increment(1);
            return false;
        }
        self.last_emitted = Some(at);
        self.observations.increment(1);
        true
    }
}

/// What a rule's [`Gate`] keeps across a restart.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_emitted: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    flapping: bool,
}

/// One rule's memory.
struct RuleState {
    spec: SensorRuleSpec,
    gate: Gate,
    condition: Box<dyn SensorCondition>,
}

impl RuleState {
    fn new(sensor: &str, spec: SensorRuleSpec) -> Self {
        Self {
            gate: Gate::new(sensor, &spec.name),
            condition: spec.condition.build(),
            spec,
        }
    }

    /// Whether this reading is evidence.
    fn evaluate(&mut self, at: DateTime<Utc>, value: f64) -> bool {
        let due = self
            .gate
            .last_emitted
            .is_none_or(|t| at - t >= self.spec.repeat);
        self.condition.evaluate(at, value, due, &mut self.gate)
    }

    /// `{"gate": …, "condition": …}`, without the parts that hold nothing.
    fn state(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let gate = SavedGate {
            last_emitted: self.gate.last_emitted,
            flapping: self.gate.flapping,
        };
        if (gate.last_emitted.is_some() || gate.flapping)
            && let Ok(v) = serde_json::to_value(&gate)
        {
            out.insert("gate".into(), v);
        }
        let condition = self.condition.state();
        if !condition.is_null() {
            out.insert("condition".into(), condition);
        }
        if out.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Object(out)
        }
    }

    fn restore(&mut self, mut state: serde_json::Value) {
        if let Some(gate) = state
            .get_mut("gate")
            .map(serde_json::Value::take)
            .and_then(|v| serde_json::from_value::<SavedGate>(v).ok())
        {
            self.gate.last_emitted = gate.last_emitted;
            self.gate.set_flapping(gate.flapping);
        }
        if let Some(condition) = state.get_mut("condition").map(serde_json::Value::take) {
            self.condition.restore(condition);
        }
    }
}

/// A change of a sensor's liveness.
#[derive(Debug, Clone)]
pub enum Liveness {
    /// No reading within its expected interval: open its `sensor_offline` incident.
    Offline(DeviceFault),
    /// Readings again: close it.
    Recovered { device: DeviceId, at: DateTime<Utc> },
}

/// Where a sensor is, who owns it, and how often it should speak.
#[derive(Debug, Clone)]
pub struct SensorPlacement {
    pub sensor: DeviceId,
    pub grid: GridId,
    pub owner: OwnerKind,
    /// `None`: never declared offline.
    pub expected_interval: Option<Duration>,
}

/// One sensor's rules and liveness.
pub struct SensorRules {
    placement: SensorPlacement,
    device: DeviceId,
    rules: Vec<RuleState>,
    /// Arrival time of the last reading (or the start).
    last_arrival: DateTime<Utc>,
    offline: bool,
    /// Until the first reading: a `sensor_offline` incident from before a restart may still
    /// be open, and the first reading closes it.
    first_reading: bool,
}

impl SensorRules {
    pub fn new(
        placement: SensorPlacement,
        rules: Vec<SensorRuleSpec>,
        started: DateTime<Utc>,
    ) -> Self {
        let id = placement.sensor.to_string();
        Self {
            device: DeviceId::new(placement.sensor.as_str()),
            rules: rules.into_iter().map(|r| RuleState::new(&id, r)).collect(),
            placement,
            last_arrival: started,
            offline: false,
            first_reading: true,
        }
    }

    pub fn sensor(&self) -> &DeviceId {
        &self.placement.sensor
    }

    /// The sensor's key in the risk engine.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Applies one reading (arrived at `arrived`); returns the evidence it gives, and the
    /// recovery when the sensor was offline.
    pub fn apply(
        &mut self,
        reading: &SensorReading,
        arrived: DateTime<Utc>,
    ) -> (Vec<Observation>, Option<Liveness>) {
        self.last_arrival = self.last_arrival.max(arrived);
        let was_offline = std::mem::take(&mut self.offline);
        let first = std::mem::take(&mut self.first_reading);
        let recovered = (was_offline || first).then(|| {
            if was_offline {
                tracing::info!(sensor = %self.placement.sensor, "sensor back online");
            }
            Liveness::Recovered {
                device: self.device.clone(),
                at: arrived,
            }
        });
        let mut out = Vec::new();
        for rule in &mut self.rules {
            if rule.evaluate(reading.at, reading.value) {
                out.push(Observation {
                    at: reading.at,
                    source: SourceRef::sensor(&self.device),
                    grid: self.placement.grid.clone(),
                    category: rule.spec.category.clone(),
                    weight: rule.spec.weight,
                    confidence: 1.0,
                    evidence: Evidence {
                        owner: Some(self.placement.owner),
                        rule: Some(RuleRef {
                            name: rule.spec.name.clone(),
                            kind: rule.spec.kind.into(),
                            zone: None,
                        }),
                        reading: Some(reading.value_evidence()),
                        ..Evidence::default()
                    },
                });
            }
        }
        (out, recovered)
    }

    /// Each rule's memory, by rule name (rules with nothing to keep are left out): part of
    /// the pipeline's saved state, so a `for_s` streak or a rate-of-change window that began
    /// before a restart goes on after it.
    pub fn state(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.rules
            .iter()
            .map(|r| (r.spec.name.clone(), r.state()))
            .filter(|(_, s)| !s.is_null())
            .collect()
    }

    /// Gives each rule its saved memory (rules not in `saved` start afresh; a rule whose kind
    /// changed ignores what it cannot read).
    pub fn restore(&mut self, mut saved: std::collections::BTreeMap<String, serde_json::Value>) {
        for rule in &mut self.rules {
            if let Some(state) = saved.remove(&rule.spec.name) {
                rule.restore(state);
            }
        }
    }

    /// Declares the sensor offline once nothing has arrived for its expected interval.
    pub fn check_liveness(&mut self, now: DateTime<Utc>) -> Option<Liveness> {
        let interval = self.placement.expected_interval?;
        if self.offline || now - self.last_arrival < interval {
            return None;
        }
        self.offline = true;
        tracing::warn!(sensor = %self.placement.sensor, since = %self.last_arrival, "sensor offline: nothing within its expected interval");
        Some(Liveness::Offline(DeviceFault {
            camera: self.device.clone(),
            source: SourceKind::Sensor,
            grid: self.placement.grid.clone(),
            owner: self.placement.owner,
            category: SENSOR_OFFLINE.into(),
            since: self.last_arrival,
            at: now,
        }))
    }
}
