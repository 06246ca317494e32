//! Sensor readings: one validated, unit-normalised value from one sensor, as the sensor
//! ingest stage hands it to the sensor rules.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::SensorId;

/// A reading that passed validation: a finite value in the sensor kind's canonical unit,
/// within its physical range, at a time neither in the future nor too old.
#[derive(Debug, Clone)]
pub struct SensorReading {
    pub sensor: SensorId,
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
