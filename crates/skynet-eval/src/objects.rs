//! Object-level labels in MOTChallenge `gt.txt` form, scored against the detections.
//! (Skeleton: filled in by the scoring work.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-class figures on the detections at IoU 0.5.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectReport {
    pub iou: f64,
    pub per_class: BTreeMap<String, ClassFigures>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    pub ground_truth: usize,
    pub detections: usize,
    pub precision: f64,
    pub recall: f64,
    pub ap: f64,
}
