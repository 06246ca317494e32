//! Observations (evidence from one rule) and incidents (what the case system receives).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Detection, DeviceId, GridId, OwnerKind, ReadingValue};

/// What kind of device gave a piece of evidence.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
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

/// The device an observation came from: `{"kind": "camera", "id": "cam-safety-03"}`.
/// Camera and sensor ids share one namespace, so the id alone keys the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub kind: SourceKind,
    pub id: DeviceId,
}

impl SourceRef {
    pub fn camera(id: &DeviceId) -> Self {
        Self {
            kind: SourceKind::Camera,
            id: id.clone(),
        }
    }

    pub fn sensor(id: &DeviceId) -> Self {
        Self {
            kind: SourceKind::Sensor,
            id: id.clone(),
        }
    }
}

/// A device fault carried by an observation: the device stopped (`offline`, with the time it
/// last worked) or works again (`recovered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FaultEvidence {
    Offline { since: DateTime<Utc> },
    Recovered,
}

/// What supports an observation: the rule, the detections, the reading, a device fault.
/// Every part is optional in the JSON form; keys it does not know are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Who owns the device (routes the incident); a replay may leave it to the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerKind>,
    /// The rule that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// A camera's supporting detections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detections: Vec<Detection>,
    /// A sensor's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<ReadingValue>,
    /// A device fault or recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultEvidence>,
    /// Anything else a producer attached, kept as it came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One piece of evidence about a grid cell, from any source: video rules, sensor rules and
/// device faults all produce it, and the risk engine consumes nothing else. Its JSON form is
/// a public interface (`schemas/observation.schema.json`):
///
/// `{"at": RFC 3339, "source": {"kind": "camera"|"sensor", "id": ID}, "grid": ID,
///   "category": NAME, "weight": 0..1, "confidence": 0..1, "evidence": {...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// Event time: when it was seen or measured.
    pub at: DateTime<Utc>,
    pub source: SourceRef,
    pub grid: GridId,
    pub category: String,
    /// How severe this evidence is on its own, in [0, 1].
    pub weight: f32,
    /// How sure the source is of it, in [0, 1] (a camera: its best detection's score).
    #[serde(default = "full_confidence")]
    pub confidence: f32,
    #[serde(default)]
    pub evidence: Evidence,
}

fn full_confidence() -> f32 {
    1.0
}

impl Observation {
    /// The device's id (camera or sensor).
    pub fn device(&self) -> &DeviceId {
        &self.source.id
    }

    /// Checks the values the engine relies on; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        crate::validate_id("grid", self.grid.as_str())?;
        crate::validate_id("source", self.source.id.as_str())?;
        if self.category.is_empty() || self.category.len() > 64 {
            return Err("`category` must be 1 to 64 characters".into());
        }
        if let Some(bad) = self
            .category
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(format!(
                "`category` `{}` has `{}`: use lower-case letters, digits and `_`",
                self.category.escape_debug(),
                bad.escape_debug()
            ));
        }
        for (name, v) in [("weight", self.weight), ("confidence", self.confidence)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("`{name}` must be within [0, 1], got {v}"));
            }
        }
        Ok(())
    }
}

/// A device (a camera or a sensor) that has delivered nothing for too long: a fault of
/// the equipment, not a hazard. It reaches the engine as an observation whose evidence
/// carries the fault, and opens an incident that stays open, whatever the quiet period,
/// until the device works again.
#[derive(Debug, Clone)]
pub struct DeviceFault {
    /// The device: a camera's id, or a sensor's when `source` is [`SourceKind::Sensor`].
    pub camera: DeviceId,
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

impl DeviceFault {
    /// The fault as the observation the engine takes.
    pub fn observation(&self) -> Observation {
        Observation {
            at: self.at,
            source: SourceRef {
                kind: self.source,
                id: self.camera.clone(),
            },
            grid: self.grid.clone(),
            category: self.category.clone(),
            weight: 0.0,
            confidence: 1.0,
            evidence: Evidence {
                owner: Some(self.owner),
                fault: Some(FaultEvidence::Offline { since: self.since }),
                ..Evidence::default()
            },
        }
    }

    /// The observation that says the device works again (closes its `category` fault).
    pub fn recovery(
        device: SourceRef,
        grid: GridId,
        category: &str,
        at: DateTime<Utc>,
    ) -> Observation {
        Observation {
            at,
            source: device,
            grid,
            category: category.to_string(),
            weight: 0.0,
            confidence: 1.0,
            evidence: Evidence {
                fault: Some(FaultEvidence::Recovered),
                ..Evidence::default()
            },
        }
    }
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

/// Where an incident is in the case system's hands (its lifecycle). skynet opens it; the
/// case system's feedback moves it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Raised, not yet taken by anyone.
    #[default]
    Open,
    /// An operator has seen it.
    Acknowledged,
    /// A crew or department has been sent.
    Dispatched,
    /// The department reports it solved; waiting for verification.
    Resolved,
    /// The solution was checked on site.
    Verified,
    /// A false alarm.
    Rejected,
    /// Over: quiet with nobody acting on it, or closed by the case system.
    Closed,
}

impl IncidentState {
    pub const ALL: [IncidentState; 7] = [
        Self::Open,
        Self::Acknowledged,
        Self::Dispatched,
        Self::Resolved,
        Self::Verified,
        Self::Rejected,
        Self::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Dispatched => "dispatched",
            Self::Resolved => "resolved",
            Self::Verified => "verified",
            Self::Rejected => "rejected",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further state follows: the incident has left the engine.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Verified | Self::Rejected | Self::Closed)
    }

    /// Whether the case system may move an incident from `self` to `next`: forward along
    /// open → acknowledged → dispatched → resolved → verified, or to rejected or closed
    /// from any state that is not final.
    pub fn may_become(self, next: IncidentState) -> bool {
        use IncidentState::*;
        if self.is_final() {
            return false;
        }
        match next {
            Rejected | Closed => true,
            Acknowledged => self == Open,
            Dispatched => matches!(self, Open | Acknowledged),
            Resolved => matches!(self, Open | Acknowledged | Dispatched),
            Verified => self == Resolved,
            Open => false,
        }
    }
}

/// The CloudEvent type of the case system's feedback.
pub const CASE_STATUS_EVENT_TYPE: &str = "skynet.case_status.v1";

/// The statuses the case system may report.
pub const CASE_STATUSES: [IncidentState; 5] = [
    IncidentState::Acknowledged,
    IncidentState::Dispatched,
    IncidentState::Resolved,
    IncidentState::Verified,
    IncidentState::Rejected,
];

/// The `data` of a `skynet.case_status.v1` event: what the case system did with an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseStatus {
    /// The incident's id (not the event id of one of its revisions).
    pub incident: String,
    pub status: IncidentState,
    /// The department now handling it, when the case system reassigned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at: DateTime<Utc>,
}

impl CaseStatus {
    /// Checks what serde cannot: the status is one the case system may send, and the texts
    /// are of a sane size. The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        // Lengths in characters, as the schema's maxLength counts them.
        if self.incident.trim().is_empty() || self.incident.chars().count() > 256 {
            return Err("`incident` must be an incident id (1 to 256 characters)".into());
        }
        if !CASE_STATUSES.contains(&self.status) {
            return Err(format!(
                "`status` {} is not one the case system sends (acknowledged, dispatched, resolved, verified, rejected)",
                self.status.as_str()
            ));
        }
        // A department is an id like those in the config: the incident schema holds it so.
        if let Some(department) = &self.department
            && (department.is_empty()
                || department.chars().count() > 128
                || !department
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "`department` `{department}` must be 1 to 128 letters, digits, `.`, `_` or `-`"
            ));
        }
        for (field, value, max) in [
            ("assignee", &self.assignee, 256),
            ("note", &self.note, 4096),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(format!("`{field}` is longer than {max} characters"));
            }
        }
        Ok(())
    }
}

/// What made a revision of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentChange {
    /// First revision.
    Opened,
    /// New evidence (sent at most every `update_every_s`).
    Evidence,
    /// The level rose with the evidence.
    Escalated,
    /// A deadline passed: the level rose one step.
    DeadlineMissed,
    /// A camera of the cell confirmed a sensor's alarm that was waiting for verification.
    Confirmed,
    /// Evidence came back within the cooldown after closing: the same incident again.
    Reopened,
    /// No evidence for the quiet period while nobody acted on it.
    Quiet,
    /// The faulty device works again.
    Recovered,
    /// The case system's feedback (the new `state` says which).
    Feedback,
    /// Closed by `skynet state recover`: the engine's saved state was unreadable, so nothing
    /// would ever close it otherwise.
    StateLost,
}

/// When the department must act, from the incident's level (`[risk.deadlines]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_by: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_by: Option<DateTime<Utc>>,
}

/// One observation (the latest of its source and category) that an incident rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub at: DateTime<Utc>,
    pub source: SourceRef,
    pub category: String,
    pub weight: f32,
    pub confidence: f32,
    /// How many observations of this source and category it stands for.
    pub count: u32,
}

/// A file that documents a revision: an annotated JPEG snapshot (`kind: "snapshot"`) of the
/// frame its new detections came from, privacy masks blurred; or an MP4 event clip
/// (`kind: "clip"`, with `start`, `end` and `duration_s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    /// `snapshot`.
    pub kind: String,
    /// Where the file is: `[evidence] url_base` followed by `<incident id>/<revision>.jpg`.
    pub url: String,
    /// SHA-256 of the file's bytes, lower-case hex: proves the file is the one referenced.
    pub sha256: String,
    /// The camera whose frame it is.
    pub camera: DeviceId,
    /// The frame's event time.
    pub frame_at: DateTime<Utc>,
    /// The image's size in pixels (the analysed frame's, which may be below the camera's).
    pub width: u32,
    pub height: u32,
    /// A clip's first frame (event time); `frame_at` is the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// A clip's last frame (event time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// A clip's length in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

impl EvidenceRef {
    pub const SNAPSHOT: &'static str = "snapshot";
    /// An MP4 event clip (`<incident id>/<revision>.mp4`) with `start`, `end`, `duration_s`.
    pub const CLIP: &'static str = "clip";
}

/// An incident as the case system sees it. Each emission carries a new `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub revision: u32,
    pub status: IncidentStatus,
    /// Where it is in the case system's hands.
    #[serde(default)]
    pub state: IncidentState,
    /// What made this revision.
    pub change: IncidentChange,
    pub category: String,
    pub level: RiskLevel,
    pub level_colour: String,
    /// The incident's category score in its cell, 0 to 1, when this revision was made.
    pub risk_score: f32,
    /// How sure the evidence is, 0 to 1: it grows with each agreeing observation.
    pub confidence: f32,
    /// `required` when a sensor's alarm is not (yet) seen by the cameras of its cell,
    /// `confirmed` once one of them saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    pub grid: GridId,
    /// The department that must act.
    pub department: String,
    /// Who the case system assigned, from its last status event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// The case system's last note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub deadlines: Deadlines,
    /// Deadlines it has missed (`dispatch`, `resolve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<String>,
    /// The camera that saw it first; left out for a sensor's incident.
    #[serde(default, skip_serializing_if = "DeviceId::is_empty")]
    pub camera: DeviceId,
    /// The sensor that measured it first, for a sensor's incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<DeviceId>,
    pub owner: OwnerKind,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub observations: u32,
    /// Every source and category the incident rests on (a fused incident lists each part).
    #[serde(default)]
    pub contributions: Vec<Contribution>,
    pub detections: Vec<Detection>,
    /// A sensor's incident: its latest value as evidence (`{"quantity": "co", "value": 98.5,
    /// "unit": "ppm", "at": ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<ReadingValue>,
    pub rule: RuleRef,
    /// Files taken for this revision: a snapshot when it brought new detections. Left out
    /// when there are none (an earlier revision's files stay listed on that revision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<EvidenceRef>,
}

/// A grid cell's risk level changed (`skynet.grid_risk.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRisk {
    /// Stable for the same change (a UUIDv5 of node, cell, revision and time).
    pub id: String,
    pub grid: GridId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Counts this cell's level changes, from 1.
    pub revision: u64,
    /// The new level; `null` when the cell is back to no risk.
    pub level: Option<RiskLevel>,
    pub level_colour: Option<String>,
    pub previous_level: Option<RiskLevel>,
    /// The fused score, 0 to 1.
    pub score: f32,
    pub at: DateTime<Utc>,
    /// Each category's (capped) score in the cell.
    pub categories: std::collections::BTreeMap<String, f32>,
    /// The incidents open in the cell.
    pub incidents: Vec<String>,
}

/// What the risk engine emits: incident revisions and cell level changes.
// Most events are incident revisions: boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RiskEvent {
    Incident(Incident),
    GridRisk(GridRisk),
    /// A finished patrol round (`skynet.patrol_round.v1`): not the risk engine's, but it
    /// goes through the commit stage and the outbox like the others.
    PatrolRound(crate::PatrolRound),
}

impl RiskEvent {
    pub fn as_incident(&self) -> Option<&Incident> {
        match self {
            Self::Incident(i) => Some(i),
            Self::GridRisk(_) | Self::PatrolRound(_) => None,
        }
    }
}

impl Incident {
    /// The device the incident belongs to (its sensor, else its camera), as the risk engine
    /// and the outbox key it.
    pub fn device(&self) -> DeviceId {
        match &self.sensor {
            Some(sensor) => DeviceId::new(sensor.as_str()),
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
    pub fn set_device(&mut self, device: &DeviceId, source: SourceKind) {
        match source {
            SourceKind::Camera => {
                self.camera = device.clone();
                self.sensor = None;
            }
            SourceKind::Sensor => {
                self.camera = DeviceId::default();
                self.sensor = Some(DeviceId::new(device.as_str()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../../schemas/observation.schema.json");

    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The published schema and the type agree: its example parses, and everything the type
    /// writes is a property the schema names.
    #[test]
    fn the_json_schema_describes_the_observation_type() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let example = schema["examples"][0].clone();
        let parsed: Observation = serde_json::from_value(example.clone()).unwrap();
        assert!(parsed.validate().is_ok());
        let text = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<Observation>(&text).unwrap(), parsed);

        let fault = DeviceFault {
            camera: DeviceId::new("cam-1"),
            source: SourceKind::Camera,
            grid: GridId::new("G-1"),
            owner: OwnerKind::Police,
            category: "camera_offline".into(),
            since: DateTime::UNIX_EPOCH,
            at: DateTime::UNIX_EPOCH,
        };
        let mut full = fault.observation();
        full.evidence.rule = Some(RuleRef {
            name: "r".into(),
            kind: "zone_intrusion".into(),
            zone: Some("z".into()),
        });
        full.evidence.detections = vec![Detection {
            label: "person".into(),
            score: 0.9,
            bbox: crate::BBox::new(1.0, 2.0, 3.0, 4.0),
            track: Some(7),
        }];
        full.evidence.reading = Some(ReadingValue {
            quantity: "co".into(),
            value: 1.0,
            unit: "ppm".into(),
            at: DateTime::UNIX_EPOCH,
        });
        let json = serde_json::to_value(&full).unwrap();
        let properties = &schema["properties"];
        for key in keys(&json) {
            assert!(
                properties.get(&key).is_some(),
                "`{key}` is not in the schema"
            );
        }
        for key in keys(&json["evidence"]) {
            assert!(
                properties["evidence"]["properties"].get(&key).is_some(),
                "`evidence.{key}` is not in the schema"
            );
        }
        for key in schema["required"].as_array().unwrap() {
            assert!(json.get(key.as_str().unwrap()).is_some());
        }
        // Unknown top-level keys are refused, as the schema says.
        let mut extra = example;
        extra["colour"] = "red".into();
        assert!(serde_json::from_value::<Observation>(extra).is_err());
    }

    #[test]
    fn the_lifecycle_moves_forward_or_ends() {
        use IncidentState::*;
        assert!(Open.may_become(Acknowledged));
        assert!(Acknowledged.may_become(Dispatched));
        assert!(Dispatched.may_become(Resolved));
        assert!(Resolved.may_become(Verified));
        assert!(Open.may_become(Rejected) && Dispatched.may_become(Closed));
        assert!(!Dispatched.may_become(Acknowledged));
        assert!(!Open.may_become(Verified));
        assert!(!Closed.may_become(Open) && !Verified.may_become(Closed));
        for s in IncidentState::ALL {
            assert_eq!(IncidentState::parse(s.as_str()), Some(s));
        }
    }
}
