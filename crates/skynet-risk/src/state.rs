//! The persisted state schema: what survives a restart, stored in the outbox with the
//! revisions it led to. Its JSON is a public contract of the outbox: field names and
//! `version` change only together.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a saved state cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("state version {found} is not the {expected} this build reads")]
    Version { found: u32, expected: u32 },
}

/// What survives a restart, stored in the outbox with the revisions it led to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineState {
    pub version: u32,
    /// Each camera's last applied frame time.
    pub cameras: BTreeMap<String, DateTime<Utc>>,
    /// Each camera's rules' memory (streaks, cooldowns), by camera and rule.
    #[serde(default)]
    pub rules: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Each sensor's rules' memory (a `for_s` streak, rate-of-change windows, flapping
    /// history), by sensor and rule: saved with the commit that acknowledges the readings
    /// that made it, so a restart goes on where the streak was.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensor_rules: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    pub engine: Box<serde_json::value::RawValue>,
}

impl PipelineState {
    /// The engine's cells and incident ids are rows of their own (`state_cells`,
    /// `state_ids`); `engine` holds only its small global part.
    pub const VERSION: u32 = 2;
    /// The old layout, still read once: `engine` is the engine's whole snapshot.
    pub const VERSION_ONE_ROW: u32 = 1;

    pub fn parse(text: &str) -> Result<Self, StateError> {
        let state: Self = serde_json::from_str(text)?;
        if state.version != Self::VERSION && state.version != Self::VERSION_ONE_ROW {
            return Err(StateError::Version {
                found: state.version,
                expected: Self::VERSION,
            });
        }
        Ok(state)
    }
}

/// The risk engine's rows changed since the last commit
/// ([`RiskEngine::take_changes`](crate::RiskEngine::take_changes)): what a commit writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineChanges {
    /// The engine's small global part (version, node, clock, last sweep), as JSON: always.
    pub meta: String,
    /// By cell id: the cell's JSON, or `None` for a cell the engine forgot.
    pub cells: Vec<(String, Option<String>)>,
    /// Incident-id bookkeeping by key (the key as JSON): its JSON, or `None` when removed.
    pub ids: Vec<(String, Option<String>)>,
}

/// The risk engine's stored rows, as read back at start
/// ([`RiskEngine::restore_rows`](crate::RiskEngine::restore_rows)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineRows {
    pub meta: String,
    pub cells: Vec<(String, String)>,
    pub ids: Vec<(String, String)>,
}
