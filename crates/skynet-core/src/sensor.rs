//! Sensor readings: one validated, unit-normalised value from one sensor, as the sensor
//! ingest stage hands it to the sensor rules.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DeviceId;

/// A sensor's value as evidence in an observation and its incident: what an inspector reads
/// first (`co` 98.5 `ppm` at 10:02:07).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingValue {
    pub quantity: String,
    pub value: f64,
    pub unit: String,
    pub at: DateTime<Utc>,
}

impl SensorReading {
    pub fn value_evidence(&self) -> ReadingValue {
        ReadingValue {
            quantity: self.quantity.to_string(),
            value: self.value,
            unit: self.unit.to_string(),
            at: self.at,
        }
    }
}

/// A reading that passed validation: a finite value in the sensor kind's canonical unit,
/// within its physical range, at a time neither in the future nor too old.
#[derive(Debug, Clone)]
pub struct SensorReading {
    pub sensor: DeviceId,
    /// What was measured (`co`, `level`, ...), from the record's name or the sensor's kind.
    pub quantity: Arc<str>,
    pub value: f64,
    /// The canonical unit symbol of the value (`ppm`, `%LEL`, `Cel`, `m`, ...).
    pub unit: &'static str,
    /// When it was measured (the payload's time; the arrival time when it has none).
    pub at: DateTime<Utc>,
    /// When its message arrived, for the ingest-to-observation latency.
    pub received_at: Instant,
}
