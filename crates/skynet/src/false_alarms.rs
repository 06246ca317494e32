//! `skynet outbox false-alarms`: how often each rule on each device raised an incident the
//! case system rejected, from the outbox's incident history (the latest revision of each).
//!
//! This is the figure engineers tune thresholds against. The live counter
//! `skynet_false_alarms_total` starts from zero with each process; the history does not.

use std::collections::BTreeMap;

use serde::Serialize;
use skynet_core::{Incident, IncidentState};

/// One rule on one device: its incidents, and how many the case system rejected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FalseAlarmRate {
    pub category: String,
    pub rule: String,
    pub device: String,
    pub incidents: u64,
    /// Incidents the case system has decided on (verified, resolved or rejected).
    pub decided: u64,
    pub rejected: u64,
    /// `rejected / decided`: of the incidents someone judged, the share that were false.
    pub rate: Option<f64>,
}

/// Groups the incidents by category, rule and device; the worst (most rejected, then the
/// highest rate) first.
pub fn rates(incidents: &[Incident]) -> Vec<FalseAlarmRate> {
    let mut by_key: BTreeMap<(String, String, String), (u64, u64, u64)> = BTreeMap::new();
    for incident in incidents {
        let entry = by_key
            .entry((
                incident.category.clone(),
                incident.rule.name.clone(),
                incident.device().to_string(),
            ))
            .or_default();
        entry.0 += 1;
        let decided = matches!(
            incident.state,
            IncidentState::Resolved | IncidentState::Verified | IncidentState::Rejected
        );
        entry.1 += u64::from(decided);
        entry.2 += u64::from(incident.state == IncidentState::Rejected);
    }
    let mut rates: Vec<FalseAlarmRate> = by_key
        .into_iter()
        .map(
            |((category, rule, device), (incidents, decided, rejected))| FalseAlarmRate {
                category,
                rule,
                device,
                incidents,
                decided,
                rejected,
                rate: (decided > 0).then(|| rejected as f64 / decided as f64),
            },
        )
        .collect();
    rates.sort_by(|a, b| {
        b.rejected
            .cmp(&a.rejected)
            .then(b.rate.unwrap_or(0.0).total_cmp(&a.rate.unwrap_or(0.0)))
    });
    rates
}

/// One tab-separated line: category, rule, device, incidents, decided, rejected, rate.
pub fn text_line(rate: &FalseAlarmRate) -> String {
    use skynet_core::escape_control;
    // Names come from the stored history, which another node or an old config wrote:
    // printed escaped, never obeyed by the terminal.
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        escape_control(&rate.category),
        escape_control(&rate.rule),
        escape_control(&rate.device),
        rate.incidents,
        rate.decided,
        rate.rejected,
        rate.rate
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(device: &str, state: IncidentState) -> Incident {
        let mut incident: Incident = serde_json::from_value(serde_json::json!({
            "id": "i", "revision": 1, "status": "closed", "change": "feedback",
            "category": "intrusion", "level": "III", "level_colour": "yellow", "risk_score": 0.5,
            "confidence": 1.0, "grid": "G-1", "department": "police", "deadlines": {},
            "camera": device, "owner": "police", "first_seen": "2026-11-27T08:00:00Z",
            "last_seen": "2026-11-27T08:00:00Z", "observations": 1, "detections": [],
            "rule": {"name": "gate-zone", "kind": "zone_intrusion"}
        }))
        .unwrap();
        incident.state = state;
        incident
    }

    #[test]
    fn rejected_incidents_give_each_rule_and_device_its_false_alarm_rate() {
        use IncidentState::*;
        let history = [
            incident("cam-1", Rejected),
            incident("cam-1", Rejected),
            incident("cam-1", Verified),
            incident("cam-1", Open),
            incident("cam-2", Resolved),
            incident("cam-3", Closed),
        ];
        let rates = rates(&history);
        assert_eq!(rates[0].device, "cam-1");
        assert_eq!(
            (rates[0].incidents, rates[0].decided, rates[0].rejected),
            (4, 3, 2)
        );
        assert_eq!(
            text_line(&rates[0]),
            "intrusion\tgate-zone\tcam-1\t4\t3\t2\t0.67"
        );
        assert_eq!(rates[1].rate, Some(0.0));
        assert_eq!(rates[2].rate, None, "nobody judged cam-3's incident");
    }
}
