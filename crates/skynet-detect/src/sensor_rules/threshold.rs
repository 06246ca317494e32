//! `threshold`: a value above (or below) a limit for at least `for_s` seconds raises
//! evidence; it clears only past `clear` (hysteresis), and an alarm that changes state more
//! than `flap_changes` times within `flap_window_s` is flapping: its evidence is suppressed
//! (and counted) until it settles.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use skynet_core::config::{MAX_SECONDS, seconds_in};
use skynet_core::{Component, FieldError};

use super::{BuildSensorRule, Gate, SensorCondition, SensorRuleContext, SensorRuleFamily};
use super::{SensorRuleKind, finite};

fn default_flap_changes() -> u32 {
    6
}
fn default_flap_window() -> f64 {
    300.0
}

/// A `threshold` rule's own keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
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
}

impl SensorRuleKind for ThresholdConfig {
    const KEYS: &'static [&'static str] = &[
        "above",
        "below",
        "clear",
        "for_s",
        "flap_changes",
        "flap_window_s",
    ];
    const REFUSED: &'static [&'static str] = &["rise", "fall"];
    const IGNORED: &'static [&'static str] = &["window_s"];
}

/// A validated threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// true: alarm above `limit`; false: below.
    pub above: bool,
    pub limit: f64,
    pub clear: f64,
    pub hold: Duration,
    pub flap_changes: u32,
    pub flap_window: Duration,
}

impl Component<SensorRuleFamily> for ThresholdConfig {
    const KIND: &'static str = "threshold";
    const EXAMPLE: &'static str = "category = \"gas_leak\"\nabove = 50.0\nclear = 40.0\nfor_s = 10";
    type Validated = Threshold;

    fn validate(self, _cx: &SensorRuleContext<'_>) -> Result<Threshold, FieldError> {
        let (above, limit) = match (finite("above", self.above)?, finite("below", self.below)?) {
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
        Ok(Threshold {
            above,
            limit,
            clear,
            hold: seconds_in("for_s", self.for_s, 0.0, MAX_SECONDS)?,
            flap_changes: self.flap_changes,
            flap_window: seconds_in("flap_window_s", self.flap_window_s, 1.0, MAX_SECONDS)?,
        })
    }
}

impl BuildSensorRule for Threshold {
    fn build(&self) -> Box<dyn SensorCondition> {
        Box::new(ThresholdState {
            spec: self.clone(),
            pending_since: None,
            active: false,
            changes: VecDeque::new(),
        })
    }
}

/// What a threshold keeps across a restart.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedThreshold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_since: Option<DateTime<Utc>>,
    #[serde(default)]
    active: bool,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    changes: VecDeque<DateTime<Utc>>,
}

/// A running threshold's memory.
#[derive(Debug)]
struct ThresholdState {
    spec: Threshold,
    /// When the value first passed the limit (waiting for `for_s`).
    pending_since: Option<DateTime<Utc>>,
    active: bool,
    /// Times the alarm changed state, within the flap window.
    changes: VecDeque<DateTime<Utc>>,
}

impl SensorCondition for ThresholdState {
    fn evaluate(&mut self, at: DateTime<Utc>, value: f64, due: bool, gate: &mut Gate) -> bool {
        let Threshold {
            above,
            limit,
            clear,
            hold,
            ..
        } = self.spec;
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
                self.changed(at, gate);
                return false;
            }
            return gate.emit(at, due);
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
        self.changed(at, gate);
        // A new alarm is always news, whatever `repeat_s`.
        gate.emit(at, true)
    }

    fn state(&self) -> serde_json::Value {
        if self.pending_since.is_none() && !self.active && self.changes.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::to_value(SavedThreshold {
            pending_since: self.pending_since,
            active: self.active,
            changes: self.changes.clone(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) {
        if let Ok(saved) = serde_json::from_value::<SavedThreshold>(state) {
            self.pending_since = saved.pending_since;
            self.active = saved.active;
            self.changes = saved.changes;
        }
    }
}

impl ThresholdState {
    /// Records a change of alarm state and updates flapping: on at `flap_changes` changes in
    /// the window, off again below half of that.
    fn changed(&mut self, at: DateTime<Utc>, gate: &mut Gate) {
        let (flap_changes, window) = (self.spec.flap_changes, self.spec.flap_window);
        self.changes.push_back(at);
        while self.changes.front().is_some_and(|t| at - *t > window) {
            self.changes.pop_front();
        }
        let n = self.changes.len() as u32;
        let mut flapping = gate.flapping();
        if !flapping && n >= flap_changes {
            flapping = true;
            tracing::warn!(rule = %gate.name(), changes = n, "sensor alarm is flapping; its evidence is suppressed until it settles");
        } else if flapping && n < flap_changes / 2 {
            flapping = false;
            tracing::info!(rule = %gate.name(), "sensor alarm settled");
        }
        gate.set_flapping(flapping);
    }
}
