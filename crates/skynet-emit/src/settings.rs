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
    /// Days a delivered event stays; so long also stay closed incidents (by last seen),
    /// a cell's superseded risk levels and dead letters. Open incidents and each cell's
    /// latest level are kept however old.
    #[serde(default = "default_retain_days")]
    pub retain_days: f64,
    /// Days a sink may stay behind before its undelivered backlog older than this moves to
    /// its dead letters (replayable with `skynet outbox replay`), so that one dead sink does
    /// not hold pruning, and the disk, for ever.
    #[serde(default = "default_max_lag_days")]
    pub max_lag_days: f64,
    /// Free space (MiB) on the outbox's filesystem below which `/readyz` says `degraded`
    /// (`skynet_disk_free_bytes` shows the free space).
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// A sink this many events behind shows an alarm (health, log, gauge). Nothing is ever
    /// dropped to bound the backlog: the alarm is how an operator learns of it.
    #[serde(default = "default_lag_alarm_events")]
    pub lag_alarm_events: i64,
}

fn default_path() -> String {
    "${SKYNET_DATA_DIR}/outbox.sqlite".into()
}
const fn default_retain_days() -> f64 {
    7.0
}
const fn default_max_lag_days() -> f64 {
    14.0
}
const fn default_min_free_mb() -> u64 {
    1024
}
const fn default_lag_alarm_events() -> i64 {
    10_000
}
/// Far above any backlog a disk holds, and exact in the f64 of a gauge.
const MAX_LAG_ALARM_EVENTS: i64 = 1_000_000_000_000;

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            path: default_path(),
            retain_days: default_retain_days(),
            max_lag_days: default_max_lag_days(),
            min_free_mb: default_min_free_mb(),
            lag_alarm_events: default_lag_alarm_events(),
        }
    }
}

/// `[outbox]` checked.
#[derive(Debug, Clone)]
pub struct OutboxPlan {
    pub path: PathBuf,
    pub retention: chrono::Duration,
    /// Events behind beyond which a sink shows the lag alarm.
    pub lag_alarm_events: u64,
    /// A sink's undelivered events older than this move to its dead letters.
    pub max_lag: chrono::Duration,
    /// Free bytes below which the outbox's disk is reported as degraded.
    pub min_free_bytes: u64,
}

impl OutboxSettings {
    /// Resolves the path and checks the retention (an hour to a century, so no date
    /// arithmetic can overflow). Errors name the key.
    pub fn validate(&self, cx: &ConfigContext) -> Result<OutboxPlan, FieldError> {
        let path = cx.resolve_path("path", &self.path)?;
        let days = check_range("retain_days", self.retain_days, 1.0 / 24.0, 36_525.0)
            .map_err(|e| FieldError::new(e.field, format!("{} days", e.message)))?;
        let max_lag_days = check_range("max_lag_days", self.max_lag_days, 1.0 / 24.0, 36_525.0)
            .map_err(|e| FieldError::new(e.field, format!("{} days", e.message)))?;
        // A petabyte: anything larger is a typo, and the byte count stays exact.
        if self.min_free_mb > 1 << 30 {
            return Err(FieldError::new(
                "min_free_mb",
                format!(
                    "`min_free_mb` must be at most {} MiB, got {}",
                    1u64 << 30,
                    self.min_free_mb
                ),
            ));
        }
        let lag_alarm_events = u64::try_from(self.lag_alarm_events)
            .ok()
            .filter(|n| (1..=MAX_LAG_ALARM_EVENTS as u64).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    "lag_alarm_events",
                    format!(
                        "`lag_alarm_events` must be between 1 and {MAX_LAG_ALARM_EVENTS} events, got {}",
                        self.lag_alarm_events
                    ),
                )
            })?;
        Ok(OutboxPlan {
            path,
            retention: chrono::Duration::seconds((days * 86_400.0) as i64),
            lag_alarm_events,
            max_lag: chrono::Duration::seconds((max_lag_days * 86_400.0) as i64),
            min_free_bytes: self.min_free_mb * 1024 * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_alarm_defaults_to_ten_thousand_and_refuses_nonsense_by_name() {
        let cx = ConfigContext::new(std::path::Path::new("/etc/skynet/skynet.toml"));
        let plan = OutboxSettings::default().validate(&cx).unwrap();
        assert_eq!(plan.lag_alarm_events, 10_000);
        for bad in [0, -5, MAX_LAG_ALARM_EVENTS + 1] {
            let settings = OutboxSettings {
                lag_alarm_events: bad,
                ..OutboxSettings::default()
            };
            let e = settings.validate(&cx).unwrap_err();
            assert_eq!(e.field, "lag_alarm_events");
            assert!(e.message.contains(&bad.to_string()), "{}", e.message);
        }
        let settings = OutboxSettings {
            lag_alarm_events: 1,
            ..OutboxSettings::default()
        };
        assert_eq!(settings.validate(&cx).unwrap().lag_alarm_events, 1);
    }

    #[test]
    fn max_lag_and_min_free_have_defaults_and_name_their_key() {
        let cx = ConfigContext::new(std::path::Path::new("/etc/skynet/skynet.toml"));
        let plan = OutboxSettings::default().validate(&cx).unwrap();
        assert_eq!(plan.max_lag, chrono::Duration::days(14));
        assert_eq!(plan.min_free_bytes, 1024 * 1024 * 1024);
        let settings: OutboxSettings =
            toml::from_str("max_lag_days = 0.5\nmin_free_mb = 10").unwrap();
        let plan = settings.validate(&cx).unwrap();
        assert_eq!(plan.max_lag, chrono::Duration::hours(12));
        assert_eq!(plan.min_free_bytes, 10 << 20);
        let settings: OutboxSettings = toml::from_str("max_lag_days = 0").unwrap();
        assert_eq!(settings.validate(&cx).unwrap_err().field, "max_lag_days");
        let settings: OutboxSettings = toml::from_str("min_free_mb = 99999999999").unwrap();
        assert_eq!(settings.validate(&cx).unwrap_err().field, "min_free_mb");
    }
}
