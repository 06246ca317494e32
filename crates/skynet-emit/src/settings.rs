//! The `[outbox]` table of the config: where the outbox lives and how long delivered events stay.

use std::path::PathBuf;

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{ConfigContext, FieldError};

/// `[outbox]` as written. Every key has a default, so the table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// The SQLite file: outbox, incident history and pipeline state. One process per file.
    #[serde(default = "default_path")]
    pub path: String,
    /// Days a delivered event stays; the incident history is kept.
    #[serde(default = "default_retain_days")]
    pub retain_days: f64,
}

fn default_path() -> String {
    "${SKYNET_DATA_DIR}/outbox.sqlite".into()
}
const fn default_retain_days() -> f64 {
    7.0
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            path: default_path(),
            retain_days: default_retain_days(),
        }
    }
}

/// `[outbox]` checked.
#[derive(Debug, Clone)]
pub struct OutboxPlan {
    pub path: PathBuf,
    pub retention: chrono::Duration,
}

impl OutboxSettings {
    /// Resolves the path and checks the retention (an hour to a century, so no date
    /// arithmetic can overflow). Errors name the key.
    pub fn validate(&self, cx: &ConfigContext) -> Result<OutboxPlan, FieldError> {
        let path = cx.resolve_path("path", &self.path)?;
        let days = check_range("retain_days", self.retain_days, 1.0 / 24.0, 36_525.0)
            .map_err(|e| FieldError::new(e.field, format!("{} days", e.message)))?;
        Ok(OutboxPlan {
            path,
            retention: chrono::Duration::seconds((days * 86_400.0) as i64),
        })
    }
}
