//! Observations (evidence from one rule) and incidents (what the case system receives).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{CameraId, Detection, GridId, OwnerKind, ReadingValue, SensorId};

/// What kind of device gave a piece of evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[default]
    Camera,
    Sensor,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Camera => "camera",
            Self::Sensor => "sensor",
        }
    }
}

/// The rule that produced a piece of evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRef {
    /// The rule's name in the config.
    pub name: String,
    /// What kind of rule it is (`zone_intrusion`, ...).
    pub kind: String,
    /// The zone it watches, when it watches one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Evidence that something worth attention happened in a grid cell.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The device that gave the evidence: a camera's id, or a sensor's when `source` is
    /// [`SourceKind::Sensor`] (the two share one namespace, so either keys the device).
    pub camera: CameraId,
    pub source: SourceKind,
    pub grid: GridId,
    pub owner: OwnerKind,
    pub category: String,
    pub rule: RuleRef,
    pub at: DateTime<Utc>,
    /// How much this evidence raises the grid's risk, in (0, 1].
    pub weight: f32,
    pub detections: Vec<Detection>,
    /// A sensor's value that made this evidence.
    pub reading: Option<ReadingValue>,
}

/// A device (a camera or a sensor) that has delivered nothing for too long: a fault of
/// the equipment, not a hazard. It opens an incident that stays open, whatever the quiet
/// period, until the device works again.
#[derive(Debug, Clone)]
pub struct DeviceFault {
    /// The device: a camera's id, or a sensor's when `source` is [`SourceKind::Sensor`].
    pub camera: CameraId,
    pub source: SourceKind,
    pub grid: GridId,
    pub owner: OwnerKind,
    /// The incident's category, e.g. `camera_offline`.
    pub category: String,
    /// The last time the device worked (its last frame), or when it was first expected to.
    pub since: DateTime<Utc>,
    /// When the fault was declared.
    pub at: DateTime<Utc>,
}

/// Risk levels of the national emergency scale, IV (blue, lowest) to I (red, highest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RiskLevel {
    IV,
    III,
    II,
    I,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 4] = [RiskLevel::IV, RiskLevel::III, RiskLevel::II, RiskLevel::I];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IV => "IV",
            Self::III => "III",
            Self::II => "II",
            Self::I => "I",
        }
    }

    pub fn colour(self) -> &'static str {
        match self {
            Self::IV => "blue",
            Self::III => "yellow",
            Self::II => "orange",
            Self::I => "red",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RiskLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RiskLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown risk level `{s}`, expected IV, III, II or I"
            ))
        })
    }
}

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// First emission.
    Opened,
    /// The grid's risk level rose while the incident was open.
    Escalated,
    /// New evidence since the last emission, sent when the pipeline shuts down or flushes.
    Updated,
    /// No evidence for the configured quiet period.
    Closed,
}

/// An incident as the case system sees it. Each emission carries a new `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub revision: u32,
    pub status: IncidentStatus,
    pub category: String,
    pub level: RiskLevel,
    pub level_colour: String,
    /// The grid's fused risk score, 0 to 1, when this revision was made.
    pub risk_score: f32,
    pub grid: GridId,
    /// The camera that saw it; left out for a sensor's incident.
    #[serde(default, skip_serializing_if = "CameraId::is_empty")]
    pub camera: CameraId,
    /// The sensor that measured it, for a sensor's incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<SensorId>,
    pub owner: OwnerKind,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub observations: u32,
    pub detections: Vec<Detection>,
    /// A sensor's incident: its latest value as evidence (`{"quantity": "co", "value": 98.5,
    /// "unit": "ppm", "at": ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<ReadingValue>,
    pub rule: RuleRef,
}

impl Incident {
    /// The device the incident belongs to (its sensor, else its camera), as the risk engine
    /// and the outbox key it.
    pub fn device(&self) -> CameraId {
        match &self.sensor {
            Some(sensor) => CameraId::new(sensor.as_str()),
            None => self.camera.clone(),
        }
    }

    /// Which kind of device the incident belongs to.
    pub fn source(&self) -> SourceKind {
        if self.sensor.is_some() {
            SourceKind::Sensor
        } else {
            SourceKind::Camera
        }
    }

    /// Sets the device from an observation's (or fault's) device id and kind.
    pub fn set_device(&mut self, device: &CameraId, source: SourceKind) {
        match source {
            SourceKind::Camera => {
                self.camera = device.clone();
                self.sensor = None;
            }
            SourceKind::Sensor => {
                self.camera = CameraId::default();
                self.sensor = Some(SensorId::new(device.as_str()));
            }
        }
    }
}
