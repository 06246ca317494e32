//! What the unit tests of this crate share.

use chrono::{DateTime, Utc};
use skynet_core::{
    Deadlines, DeviceId, GridId, Incident, IncidentChange, IncidentState, IncidentStatus,
    OwnerKind, RiskLevel, RuleRef,
};

/// Revision `revision` of one incident, `inc-1`, with `risk_score`.
pub(crate) fn incident(revision: u32, risk_score: f32) -> Incident {
    Incident {
        id: "inc-1".into(),
        revision,
        status: IncidentStatus::Opened,
        state: IncidentState::Open,
        change: IncidentChange::Opened,
        category: "intrusion".into(),
        level: RiskLevel::IV,
        level_colour: "blue".into(),
        risk_score,
        confidence: 1.0,
        verification: None,
        grid: GridId::new("G1"),
        department: "command_center".into(),
        deadlines: Deadlines::default(),
        assignee: None,
        note: None,
        missed: Vec::new(),
        camera: DeviceId::new("cam"),
        sensor: None,
        owner: OwnerKind::Police,
        first_seen: DateTime::<Utc>::UNIX_EPOCH,
        last_seen: DateTime::<Utc>::UNIX_EPOCH,
        observations: 1,
        contributions: Vec::new(),
        detections: Vec::new(),
        reading: None,
        rule: RuleRef {
            name: "r".into(),
            kind: "zone_intrusion".into(),
            zone: None,
        },
        evidence: Vec::new(),
    }
}
