//! CloudEvents 1.0, structured JSON mode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::Incident;

pub const INCIDENT_EVENT_TYPE: &str = "skynet.incident.v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// `<incident id>/<revision>`: stable, so a redelivered event deduplicates downstream.
    pub id: String,
    /// `skynet/<node>`.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The incident id, for consumers that route or filter by it.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: Incident,
}

impl CloudEvent {
    pub fn incident(node: &str, incident: &Incident) -> Self {
        Self {
            specversion: "1.0".into(),
            id: format!("{}/{}", incident.id, incident.revision),
            source: format!("skynet/{node}"),
            event_type: INCIDENT_EVENT_TYPE.into(),
            subject: incident.id.clone(),
            // The time of the occurrence the revision reports: when it was last seen.
            time: incident.last_seen,
            datacontenttype: "application/json".into(),
            data: incident.clone(),
        }
    }
}
