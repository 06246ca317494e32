//! `rate_of_change`: a rise (or fall) of more than a given amount within `window_s`.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use skynet_core::config::{MAX_SECONDS, seconds_in};
use skynet_core::{Component, FieldError};

use super::{BuildSensorRule, Gate, SensorCondition, SensorRuleContext, SensorRuleFamily};
use super::{SensorRuleKind, finite};

fn default_window() -> f64 {
    60.0
}

/// A `rate_of_change` rule's own keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOfChangeConfig {
    pub rise: Option<f64>,
    pub fall: Option<f64>,
    #[serde(default = "default_window")]
    pub window_s: f64,
}

impl SensorRuleKind for RateOfChangeConfig {
    const KEYS: &'static [&'static str] = &["rise", "fall", "window_s"];
    const REFUSED: &'static [&'static str] = &["above", "below", "clear"];
    const IGNORED: &'static [&'static str] = &["for_s", "flap_changes", "flap_window_s"];
}

/// A validated rate of change.
#[derive(Debug, Clone, PartialEq)]
pub struct RateOfChange {
    /// Alarm when the value rose by more than this within the window (`None`: never).
    pub rise: Option<f64>,
    pub fall: Option<f64>,
    pub window: Duration,
}

impl Component<SensorRuleFamily> for RateOfChangeConfig {
    const KIND: &'static str = "rate_of_change";
    const EXAMPLE: &'static str = "category = \"water_rising\"\nrise = 20.0\nwindow_s = 60";
    type Validated = RateOfChange;

    fn validate(self, _cx: &SensorRuleContext<'_>) -> Result<RateOfChange, FieldError> {
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
        Ok(RateOfChange {
            rise,
            fall,
            window: seconds_in("window_s", self.window_s, 0.001, MAX_SECONDS)?,
        })
    }
}

impl BuildSensorRule for RateOfChange {
    fn build(&self) -> Box<dyn SensorCondition> {
        Box::new(RateOfChangeState {
            spec: self.clone(),
            window: VecDeque::new(),
        })
    }
}

/// A running rate of change's memory.
#[derive(Debug)]
struct RateOfChangeState {
    spec: RateOfChange,
    /// Readings within the window.
    window: VecDeque<(DateTime<Utc>, f64)>,
}

impl SensorCondition for RateOfChangeState {
    fn evaluate(&mut self, at: DateTime<Utc>, value: f64, due: bool, gate: &mut Gate) -> bool {
        let RateOfChange { rise, fall, window } = self.spec;
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
        (rose || fell) && gate.emit(at, due)
    }

    /// The readings within the window, as `[[time, value], …]`.
    fn state(&self) -> serde_json::Value {
        if self.window.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::to_value(&self.window).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) {
        if let Ok(window) = serde_json::from_value::<VecDeque<(DateTime<Utc>, f64)>>(state) {
            // Only finite values in time order: what `evaluate` itself would have kept.
            if window.iter().all(|(_, v)| v.is_finite())
                && window
                    .iter()
                    .zip(window.iter().skip(1))
                    .all(|(a, b)| a.0 <= b.0)
            {
                self.window = window;
            }
        }
    }
}
