//! Incidents matched against labelled events.
//!
//! An incident matches a label when the camera (or, for a label on a cell, the grid) and the
//! category agree and the incident's `[first_seen, last_seen]` overlaps the labelled span.
//! (Skeleton: the matching and figures are filled in by the scoring work.)

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::labels::ResolvedLabel;

/// An incident as evaluation sees it: its latest revision, and when it opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalIncident {
    pub id: String,
    pub grid: String,
    pub category: String,
    /// Every camera whose evidence it rests on (the first one first).
    pub cameras: Vec<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The event time of its first revision: when an operator would have seen it.
    pub opened_at: DateTime<Utc>,
    /// The highest level it reached (`IV` to `I`).
    pub level: String,
}

/// One camera's footage in the run: where it is and the event times of its first and last
/// frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footage {
    pub camera: String,
    pub grid: String,
    pub first_frame: DateTime<Utc>,
    pub last_frame: DateTime<Utc>,
}

/// Precision, recall and the rest, for one slice (a category, a camera, or everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub labels: usize,
    pub incidents: usize,
    /// Labels at least one incident matched.
    pub matched_labels: usize,
    /// Incidents that matched at least one label.
    pub matched_incidents: usize,
    /// Incidents that matched no label.
    pub false_alarms: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub footage_hours: f64,
    pub false_alarms_per_hour: f64,
    /// Incident open minus label start, over the matched labels (seconds).
    pub delay_median_s: Option<f64>,
    pub delay_worst_s: Option<f64>,
}

/// What `skynet eval` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub overall: Figures,
    pub per_category: BTreeMap<String, Figures>,
    pub per_camera: BTreeMap<String, Figures>,
    pub matches: Vec<Match>,
    pub misses: Vec<Miss>,
    pub false_alarms: Vec<FalseAlarm>,
    /// Object-level figures, when `gt.txt` labels were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<crate::objects::ObjectReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The label's line in the labels file.
    pub label_line: usize,
    pub target: String,
    pub category: String,
    pub incident: String,
    pub delay_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    pub label_line: usize,
    pub target: String,
    pub category: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalseAlarm {
    pub incident: String,
    pub grid: String,
    pub camera: Option<String>,
    pub category: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Scores `incidents` against `labels` over `footage`.
pub fn score(incidents: &[EvalIncident], labels: &[ResolvedLabel], footage: &[Footage]) -> Report {
    let _ = (incidents, labels, footage);
    Report::default()
}
