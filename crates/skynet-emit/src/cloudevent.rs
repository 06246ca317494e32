//! CloudEvents 1.0, structured JSON mode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{GridRisk, Incident, PatrolRound, RiskEvent};

pub use skynet_core::PATROL_ROUND_EVENT_TYPE;

pub const INCIDENT_EVENT_TYPE: &str = "skynet.incident.v1";
pub const GRID_RISK_EVENT_TYPE: &str = "skynet.grid_risk.v1";

/// The district an event comes from: its `source` without `skynet/` (the cluster's name,
/// `[cluster] name`, or on a single node the node's name). The city console shows it with
/// each incident and filters by it.
pub fn district_of_source(source: &str) -> &str {
    source.strip_prefix("skynet/").unwrap_or(source)
}

/// One CloudEvent; `data` is an [`Incident`] revision (`skynet.incident.v1`) or a cell's
/// level change, [`GridRisk`] (`skynet.grid_risk.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T = Incident> {
    pub specversion: String,
    /// Stable, so a redelivered event deduplicates downstream: `<incident id>/<revision>`,
    /// or the grid-risk change's id.
    pub id: String,
    /// `skynet/<node>`.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The incident id, or the grid cell id, for consumers that route or filter by it.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: T,
}

fn envelope<T>(
    node: &str,
    id: String,
    event_type: &str,
    subject: String,
    time: DateTime<Utc>,
    data: T,
) -> CloudEvent<T> {
    CloudEvent {
        specversion: "1.0".into(),
        id,
        source: format!("skynet/{node}"),
        event_type: event_type.into(),
        subject,
        time,
        datacontenttype: "application/json".into(),
        data,
    }
}

impl CloudEvent<Incident> {
    pub fn incident(node: &str, incident: &Incident) -> Self {
        // The time of the occurrence the revision reports: when it was last seen.
        envelope(
            node,
            format!("{}/{}", incident.id, incident.revision),
            INCIDENT_EVENT_TYPE,
            incident.id.clone(),
            incident.last_seen,
            incident.clone(),
        )
    }
}

impl CloudEvent<GridRisk> {
    pub fn grid_risk(node: &str, change: &GridRisk) -> Self {
        envelope(
            node,
            change.id.clone(),
            GRID_RISK_EVENT_TYPE,
            change.grid.to_string(),
            change.at,
            change.clone(),
        )
    }
}

impl CloudEvent<PatrolRound> {
    /// A finished round: id `<patrol>/<round>`, subject the patrol, time when it finished.
    pub fn patrol_round(node: &str, round: &PatrolRound) -> Self {
        envelope(
            node,
            round.id(),
            PATROL_ROUND_EVENT_TYPE,
            round.patrol.clone(),
            round.finished,
            round.clone(),
        )
    }
}

/// Any kind of event, as the outbox stores it.
// Mostly incident revisions, briefly held: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxEvent {
    Incident(CloudEvent<Incident>),
    GridRisk(CloudEvent<GridRisk>),
    PatrolRound(CloudEvent<PatrolRound>),
}

impl OutboxEvent {
    pub fn new(node: &str, event: &RiskEvent) -> Self {
        match event {
            RiskEvent::Incident(i) => Self::Incident(CloudEvent::incident(node, i)),
            RiskEvent::GridRisk(g) => Self::GridRisk(CloudEvent::grid_risk(node, g)),
            RiskEvent::PatrolRound(r) => Self::PatrolRound(CloudEvent::patrol_round(node, r)),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Incident(e) => &e.id,
            Self::GridRisk(e) => &e.id,
            Self::PatrolRound(e) => &e.id,
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Self::Incident(e) => &e.event_type,
            Self::GridRisk(e) => &e.event_type,
            Self::PatrolRound(e) => &e.event_type,
        }
    }

    pub fn subject(&self) -> &str {
        match self {
            Self::Incident(e) => &e.subject,
            Self::GridRisk(e) => &e.subject,
            Self::PatrolRound(e) => &e.subject,
        }
    }

    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Incident(e) => e.time,
            Self::GridRisk(e) => e.time,
            Self::PatrolRound(e) => e.time,
        }
    }

    /// The event as one line of JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        match self {
            Self::Incident(e) => serde_json::to_string(e),
            Self::GridRisk(e) => serde_json::to_string(e),
            Self::PatrolRound(e) => serde_json::to_string(e),
        }
    }
}
