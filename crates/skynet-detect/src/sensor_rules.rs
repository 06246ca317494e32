//! Sensor rules: readings in, evidence ([`Observation`]s) and device faults out, into the
//! same risk engine as the cameras' rules.
//!
//! - `threshold`: a value above (or below) a limit for at least `for_s` seconds raises
//!   evidence; it clears only past `clear` (hysteresis), and an alarm that changes state
//!   more than `flap_changes` times within `flap_window_s` is flapping: its evidence is
//!   suppressed (and counted) until it settles.
//! - `rate_of_change`: a rise (or fall) of more than a given amount within `window_s`.
//! - Staleness: a sensor that sends nothing for `expected_interval_s` is offline: a
//!   device-fault of category `sensor_offline`, closed when readings come back.
//!
//! Rules see event times (the readings' times); staleness uses the arrival clock, since a
//! dead sensor sends no times at all.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use skynet_core::config::{MAX_SECONDS, check_range, seconds_in};
use skynet_core::{
    DeviceFault, DeviceId, Evidence, FieldError, GridId, Observation, OwnerKind, RuleRef,
    SensorReading, SourceKind, SourceRef,
};

/// The category of a stale sensor's device-fault incident.
pub const SENSOR_OFFLINE: &str = "sensor_offline";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorRuleKind {
    Threshold,
    RateOfChange,
}

impl SensorRuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::RateOfChange => "rate_of_change",
        }
    }
}

fn default_weight() -> f32 {
    0.5
}
fn default_repeat() -> f64 {
    10.0
}
fn default_flap_changes() -> u32 {
    6
}
fn default_flap_window() -> f64 {
    300.0
}
fn default_window() -> f64 {
    60.0
}

/// One `[[sensors.rules]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRuleSettings {
    pub kind: SensorRuleKind,
    /// Unique on its sensor; default: the kind.
    pub name: Option<String>,
    /// The incident category its evidence opens (`gas_leak`).
    pub category: String,
    #[serde(default = "default_weight")]
    pub weight: f32,
    /// While the condition holds, evidence is repeated at most this often (event time).
    #[serde(default = "default_repeat")]
    pub repeat_s: f64,
    // threshold
    pub above: Option<f64>,
    pub below: Option<f64>,
    /// Where an active alarm clears (hysteresis); default: the limit itself.
    pub clear: Option<f64>,
    #[serde(default)]
    pub for_s: f64,
    #[serde(default = "default_flap_changes")]
    pub flap_changes: u32,
    #[serde(default = "default_flap_window")]
    pub flap_window_s: f64,
    // rate_of_change
    pub rise: Option<f64>,
    pub fall: Option<f64>,
    #[serde(default = "default_window")]
    pub window_s: f64,
}

/// A validated sensor rule, ready to build.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRuleSpec {
    pub name: String,
    pub kind: SensorRuleKind,
    pub category: String,
    pub weight: f32,
    pub repeat: Duration,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Threshold {
        /// true: alarm above `limit`; false: below.
        above: bool,
        limit: f64,
        clear: f64,
        hold: Duration,
        flap_changes: u32,
        flap_window: Duration,
    },
    RateOfChange {
        /// Alarm when the value rose by more than this within the window (`None`: never).
        rise: Option<f64>,
        fall: Option<f64>,
        window: Duration,
    },
}

impl SensorRuleSettings {
    pub fn validate(&self) -> Result<SensorRuleSpec, FieldError> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| self.kind.as_str().to_string());
        skynet_core::validate_id("rule", &name).map_err(|m| FieldError::new("name", m))?;
        skynet_core::validate_id("category", &self.category)
            .map_err(|m| FieldError::new("category", m))?;
        let weight = check_range("weight", f64::from(self.weight), 0.01, 1.0)? as f32;
        let repeat = seconds_in("repeat_s", self.repeat_s, 0.0, MAX_SECONDS)?;
        let finite = |field: &str, v: Option<f64>| -> Result<Option<f64>, FieldError> {
            match v {
                Some(x) if !x.is_finite() => Err(FieldError::new(
                    field,
                    format!("`{field}` must be a finite number"),
                )),
                other => Ok(other),
            }
        };
        let not_for = |field: &str, present: bool| -> Result<(), FieldError> {
            if present {
                Err(FieldError::new(
                    field,
                    format!(
                        "`{field}` does not apply to a `{}` rule",
                        self.kind.as_str()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let condition = match self.kind {
            SensorRuleKind::Threshold => {
                not_for("rise", self.rise.is_some())?;
                not_for("fall", self.fall.is_some())?;
                let (above, limit) =
                    match (finite("above", self.above)?, finite("below", self.below)?) {
                        (Some(a), None) => (true, a),
                        (None, Some(b)) => (false, b),
                        _ => {
                            return Err(FieldError::new(
                                "above",
                                "a threshold rule needs exactly one of `above` or `below`",
                            ));
                        }
                    };
                let clear = finite("clear", self.clear)?.unwrap_or(limit);
                if (above && clear > limit) || (!above && clear < limit) {
                    return Err(FieldError::new(
                        "clear",
                        format!(
                            "`clear` ({clear}) must be on the safe side of the limit ({limit}): {} it",
                            if above { "at or below" } else { "at or above" }
                        ),
                    ));
                }
                if self.flap_changes < 2 {
                    return Err(FieldError::new(
                        "flap_changes",
                        "`flap_changes` must be at least 2",
                    ));
                }
                Condition::Threshold {
                    above,
                    limit,
                    clear,
                    hold: seconds_in("for_s", self.for_s, 0.0, MAX_SECONDS)?,
                    flap_changes: self.flap_changes,
                    flap_window: seconds_in("flap_window_s", self.flap_window_s, 1.0, MAX_SECONDS)?,
                }
            }
            SensorRuleKind::RateOfChange => {
                for (k, present) in [
                    ("above", self.above.is_some()),
                    ("below", self.below.is_some()),
                    ("clear", self.clear.is_some()),
                ] {
                    not_for(k, present)?;
                }
                let rise = finite("rise", self.rise)?;
                let fall = finite("fall", self.fall)?;
                if rise.is_none() && fall.is_none() {
                    return Err(FieldError::new(
                        "rise",
                        "a rate_of_change rule needs `rise`, `fall` or both",
                    ));
                }
                for (k, v) in [("rise", rise), ("fall", fall)] {
                    if v.is_some_and(|v| v <= 0.0) {
                        return Err(FieldError::new(
                            k,
                            format!("`{k}` must be above 0 (an amount of change)"),
                        ));
                    }
                }
                Condition::RateOfChange {
                    rise,
                    fall,
                    window: seconds_in("window_s", self.window_s, 0.001, MAX_SECONDS)?,
                }
            }
        };
        Ok(SensorRuleSpec {
            name,
            kind: self.kind,
            category: self.category.clone(),
            weight,
            repeat,
            condition,
        })
    }
}

/// One rule's memory.
#[derive(Debug)]
struct RuleState {
    spec: SensorRuleSpec,
    /// Threshold: when the value first passed the limit (waiting for `for_s`).
    pending_since: Option<DateTime<Utc>>,
    active: bool,
    last_emitted: Option<DateTime<Utc>>,
    /// Threshold: times the alarm changed state, within the flap window.
    changes: VecDeque<DateTime<Utc>>,
    flapping: bool,
    /// Rate of change: readings within the window.
    window: VecDeque<(DateTime<Utc>, f64)>,
    flapping_gauge: metrics::Gauge,
    suppressed: metrics::Counter,
    observations: metrics::Counter,
}

impl RuleState {
    fn new(sensor: &str, spec: SensorRuleSpec) -> Self {
        let (s, r) = (sensor.to_string(), spec.name.clone());
        Self {
            pending_since: None,
            active: false,
            last_emitted: None,
            changes: VecDeque::new(),
            flapping: false,
            window: VecDeque::new(),
            flapping_gauge: metrics::gauge!("skynet_sensor_flapping", "sensor" => s.clone(), "rule" => r.clone()),
            suppressed: metrics::counter!("skynet_sensor_suppressed_total", "sensor" => s.clone(), "rule" => r.clone()),
            observations: metrics::counter!("skynet_sensor_observations_total", "sensor" => s, "rule" => r),
            spec,
        }
    }

    /// Whether this reading is evidence.
    fn evaluate(&mut self, at: DateTime<Utc>, value: f64) -> bool {
        let due = self.last_emitted.is_none_or(|t| at - t >= self.spec.repeat);
        match self.spec.condition.clone() {
            Condition::Threshold {
                above,
                limit,
                clear,
                hold,
                flap_changes,
                flap_window,
            } => {
                let over = if above { value > limit } else { value < limit };
                let cleared = if above {
                    value <= clear
                } else {
                    value >= clear
                };
                if self.active {
                    if cleared {
                        self.active = false;
                        self.pending_since = None;
                        self.changed(at, flap_changes, flap_window);
                        return false;
                    }
                    return self.emit(at, due);
                }
                if !over {
                    self.pending_since = None;
                    return false;
                }
                let since = *self.pending_since.get_or_insert(at);
                if at - since < hold {
                    return false;
                }
                self.active = true;
                self.changed(at, flap_changes, flap_window);
                // A new alarm is always news, whatever `repeat_s`.
                self.emit(at, true)
            }
            Condition::RateOfChange { rise, fall, window } => {
                while self.window.front().is_some_and(|(t, _)| at - *t > window) {
                    self.window.pop_front();
                }
                self.window.push_back((at, value));
                let (lo, hi) = self
                    .window
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
                        (lo.min(*v), hi.max(*v))
                    });
                let rose = rise.is_some_and(|r| value - lo > r);
                let fell = fall.is_some_and(|f| hi - value > f);
                (rose || fell) && self.emit(at, due)
            }
        }
    }

    fn emit(&mut self, at: DateTime<Utc>, due: bool) -> bool {
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

    /// Records a change of alarm state and updates flapping: on at `flap_changes` changes in
    /// the window, off again below half of that.
    fn changed(&mut self, at: DateTime<Utc>, flap_changes: u32, window: Duration) {
        self.changes.push_back(at);
        while self.changes.front().is_some_and(|t| at - *t > window) {
            self.changes.pop_front();
        }
        let n = self.changes.len() as u32;
        if !self.flapping && n >= flap_changes {
            self.flapping = true;
            tracing::warn!(rule = %self.spec.name, changes = n, "sensor alarm is flapping; its evidence is suppressed until it settles");
        } else if self.flapping && n < flap_changes / 2 {
            self.flapping = false;
            tracing::info!(rule = %self.spec.name, "sensor alarm settled");
        }
        self.flapping_gauge
            .set(if self.flapping { 1.0 } else { 0.0 });
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
                            kind: rule.spec.kind.as_str().into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn rule(toml_text: &str) -> SensorRuleSpec {
        let s: SensorRuleSettings = toml::from_str(toml_text).unwrap();
        s.validate().unwrap()
    }

    fn gas(rules: Vec<SensorRuleSpec>) -> SensorRules {
        SensorRules::new(
            SensorPlacement {
                sensor: DeviceId::new("gas-07"),
                grid: GridId::new("G-0201"),
                owner: OwnerKind::SafetyProduction,
                expected_interval: Some(Duration::seconds(30)),
            },
            rules,
            t(0),
        )
    }

    fn reading(s: i64, value: f64) -> SensorReading {
        SensorReading {
            sensor: DeviceId::new("gas-07"),
            quantity: Arc::from("co"),
            value,
            unit: "ppm",
            at: t(s),
            received_at: Instant::now(),
        }
    }

    fn feed(rules: &mut SensorRules, series: &[(i64, f64)]) -> Vec<i64> {
        series
            .iter()
            .flat_map(|(s, v)| rules.apply(&reading(*s, *v), t(*s)).0)
            .map(|o| (o.at - t(0)).num_seconds())
            .collect()
    }

    const CO: &str = "kind = \"threshold\"\ncategory = \"gas_leak\"\nabove = 50.0\nclear = 40.0\nfor_s = 10\nrepeat_s = 5";

    #[test]
    fn threshold_waits_for_its_duration_then_repeats_and_clears_with_hysteresis() {
        let mut rules = gas(vec![rule(CO)]);
        // Above 50 from t=1; 10 s later it is evidence; then every 5 s while above 40.
        let series: Vec<(i64, f64)> = (0..=30)
            .map(|s| {
                (
                    s,
                    if s == 0 {
                        10.0
                    } else if s < 25 {
                        60.0
                    } else {
                        45.0
                    },
                )
            })
            .collect();
        assert_eq!(feed(&mut rules, &series), vec![11, 16, 21, 26]);
        // 45 is below the limit but above `clear`: still active. 39 clears it.
        assert_eq!(
            feed(&mut rules, &[(31, 39.0), (40, 45.0), (60, 45.0)]),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn a_short_spike_is_not_a_leak() {
        let mut rules = gas(vec![rule(CO)]);
        let spike = [
            (0, 60.0),
            (5, 70.0),
            (9, 55.0),
            (10, 30.0),
            (12, 60.0),
            (21, 61.0),
        ];
        assert_eq!(feed(&mut rules, &spike), Vec::<i64>::new());
        assert_eq!(feed(&mut rules, &[(22, 61.0)]), vec![22]);
    }

    #[test]
    fn flapping_is_suppressed_until_it_settles() {
        let spec = rule(
            "kind = \"threshold\"\ncategory = \"gas_leak\"\nabove = 50.0\nflap_changes = 4\nflap_window_s = 60",
        );
        let mut rules = gas(vec![spec]);
        let mut series = Vec::new();
        for i in 0..10 {
            series.push((i * 2, 60.0));
            series.push((i * 2 + 1, 10.0));
        }
        // Two alarms (changes 1 and 3) before the 4th change marks it flapping.
        assert_eq!(feed(&mut rules, &series), vec![0, 2]);
        // Quiet for a long time, then a real alarm is evidence again.
        assert_eq!(feed(&mut rules, &[(300, 10.0), (400, 60.0)]), vec![400]);
    }

    #[test]
    fn rate_of_change_sees_a_rising_river() {
        let spec = rule(
            "kind = \"rate_of_change\"\ncategory = \"water_rising\"\nrise = 0.5\nwindow_s = 60\nrepeat_s = 30",
        );
        let mut rules = gas(vec![spec]);
        let series: Vec<(i64, f64)> = (0..20).map(|i| (i * 10, 1.0 + 0.02 * i as f64)).collect();
        assert!(feed(&mut rules, &series).is_empty());
        let flood: Vec<(i64, f64)> = (20..30)
            .map(|i| (i * 10, 1.4 + 0.2 * (i - 20) as f64))
            .collect();
        assert_eq!(feed(&mut rules, &flood), vec![230, 260, 290]);
    }

    #[test]
    fn a_silent_sensor_goes_offline_once_and_recovers() {
        let mut rules = gas(vec![]);
        // The first reading after a start closes an offline incident left open before it.
        assert!(matches!(
            rules.apply(&reading(0, 1.0), t(0)).1,
            Some(Liveness::Recovered { .. })
        ));
        assert!(rules.apply(&reading(1, 1.0), t(1)).1.is_none());
        assert!(rules.check_liveness(t(30)).is_none());
        let Some(Liveness::Offline(fault)) = rules.check_liveness(t(32)) else {
            panic!()
        };
        assert_eq!(
            (fault.category.as_str(), fault.source, fault.since),
            (SENSOR_OFFLINE, SourceKind::Sensor, t(1))
        );
        assert!(rules.check_liveness(t(60)).is_none());
        let (_, back) = rules.apply(&reading(61, 1.0), t(61));
        assert!(matches!(back, Some(Liveness::Recovered { .. })));
        assert!(rules.check_liveness(t(80)).is_none());
    }

    #[test]
    fn settings_errors_name_their_field() {
        let err = |text: &str| {
            toml::from_str::<SensorRuleSettings>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .field
        };
        assert_eq!(err("kind = \"threshold\"\ncategory = \"x\""), "above");
        assert_eq!(
            err("kind = \"threshold\"\ncategory = \"x\"\nabove = 5.0\nclear = 6.0"),
            "clear"
        );
        assert_eq!(
            err("kind = \"threshold\"\ncategory = \"x\"\nabove = 5.0\nrise = 1.0"),
            "rise"
        );
        assert_eq!(err("kind = \"rate_of_change\"\ncategory = \"x\""), "rise");
        assert_eq!(
            err("kind = \"rate_of_change\"\ncategory = \"x\"\nrise = -1.0"),
            "rise"
        );
        assert_eq!(
            err("kind = \"threshold\"\ncategory = \"x y\"\nabove = 1.0"),
            "category"
        );
        assert_eq!(
            err("kind = \"threshold\"\ncategory = \"x\"\nabove = 1.0\nweight = 2.0"),
            "weight"
        );
    }
}
