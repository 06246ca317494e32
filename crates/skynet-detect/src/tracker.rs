//! Placeholder until the tracker lands (branch `track`): the interface the pipeline uses.

use serde::Deserialize;
use skynet_core::{AnalysedFrame, FieldError};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerSettings {}

impl TrackerSettings {
    pub fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

#[derive(Debug)]
pub struct Tracker;

impl Tracker {
    pub fn new(_settings: TrackerSettings) -> Self {
        Self
    }

    pub fn update(&mut self, _frame: &mut AnalysedFrame) {}
}
