//! What a threshold change would have done, before it is saved: the console asks the
//! pipeline (which owns the recorded observations and the risk engine; this crate cannot
//! depend on it) through [`WhatIf`], given to the console at start with
//! [`Console::set_what_if`](super::Console::set_what_if).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use skynet_core::DeviceId;

/// Replays recorded observations with a camera's current and proposed thresholds and pairs
/// the incidents each makes. It blocks (reads a file, runs two engines): the console calls it
/// off the async runtime, one at a time.
pub trait WhatIf: Send + Sync {
    /// `current` and `proposed`: the camera's whole table, label to lowest kept score.
    fn thresholds(
        &self,
        camera: &DeviceId,
        current: &BTreeMap<String, f32>,
        proposed: &BTreeMap<String, f32>,
    ) -> Result<WhatIfReport, WhatIfError>;
}

#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    /// Nothing to replay: no `record_observations` configured (answered 409).
    #[error("{0}")]
    NoRecording(String),
    /// The recording could not be read, or the replay failed (answered 500).
    #[error("{0}")]
    Failed(String),
}

/// What the change would have done to the incidents of the last recorded day.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhatIfReport {
    /// Incidents only the proposed thresholds make.
    pub added: u64,
    /// Incidents only the current thresholds make.
    pub dropped: u64,
    /// Incidents both make, at different highest levels.
    pub changed: u64,
    pub unchanged: u64,
    /// Incidents the current thresholds make over the window.
    pub incidents: u64,
    /// Recorded observations replayed (read, in the window).
    pub observations: u64,
    /// The window replayed: 24 hours before the newest recorded observation.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// A few of the differences, in the order they first appeared.
    pub examples: Vec<WhatIfExample>,
}

/// One incident the change would add, drop or change in level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIfExample {
    /// `added`, `dropped` or `changed`.
    pub change: &'static str,
    pub grid: String,
    pub category: String,
    /// The camera or sensor that saw it first.
    pub device: String,
    pub first_seen: DateTime<Utc>,
    /// Its highest level with the current thresholds (`null` when added).
    pub old_level: Option<String>,
    /// Its highest level with the proposed ones (`null` when dropped).
    pub new_level: Option<String>,
}

/// How many examples an answer lists at most.
pub const WHAT_IF_EXAMPLES: usize = 10;
