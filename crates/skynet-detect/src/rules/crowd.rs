//! `crowd`: at least `min_count` tracked objects in a zone for `min_duration_s`.

use chrono::{DateTime, Utc};
use skynet_core::Component;
use skynet_core::config::check_range;
use skynet_core::{AnalysedFrame, FieldError, TrackedObject};

use super::{
    BuildRule, CameraRuleFamily, EXIT_GRACE, MAX_STREAK_GAP, Rule, RuleBuildContext, RuleContext,
    RuleHit, ValidRule, check_category, check_labels, check_name, check_seconds, check_weight,
    dwell::default_person, find_zone, position, rule_ref, seconds_between, tracks_with,
};
use crate::Zone;

/// The settings of a `crowd` rule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdConfig {
    pub name: String,
    pub zone: String,
    #[serde(default = "default_person")]
    pub labels: Vec<String>,
    /// How many tracked objects make a crowd.
    #[serde(default = "CrowdConfig::default_min_count")]
    pub min_count: u32,
    /// How long the crowd must last before the rule fires, in seconds.
    #[serde(default = "CrowdConfig::default_min_duration_s")]
    pub min_duration_s: f64,
    #[serde(default = "CrowdConfig::default_category")]
    pub category: String,
    #[serde(default = "CrowdConfig::default_weight")]
    pub weight: f32,
}

impl CrowdConfig {
    /// More than any camera image holds objects of one kind that a detector can tell apart.
    pub const MAX_COUNT: u32 = 1000;

    fn default_min_count() -> u32 {
        5
    }
    fn default_min_duration_s() -> f64 {
        10.0
    }
    fn default_category() -> String {
        "crowd".into()
    }
    fn default_weight() -> f32 {
        0.5
    }
}

impl Component<CameraRuleFamily> for CrowdConfig {
    const KIND: &'static str = CrowdRule::KIND;
    const EXAMPLE: &'static str = "name = \"crowd\"\nzone = \"left\"";
    type Validated = ValidRule<Self>;

    fn validate(self, cx: &RuleContext<'_>) -> Result<ValidRule<Self>, FieldError> {
        check_name(&self.name)?;
        let zone = find_zone(cx, &self.zone)?;
        check_labels(cx, &self.labels)?;
        check_range(
            "min_count",
            f64::from(self.min_count),
            1.0,
            f64::from(Self::MAX_COUNT),
        )?;
        check_seconds("min_duration_s", self.min_duration_s)?;
        check_category(&self.category)?;
        check_weight(self.weight)?;
        Ok(ValidRule::new(self, Some(zone)))
    }
}

impl BuildRule for ValidRule<CrowdConfig> {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(CrowdRule {
            config: self.config.clone(),
            zone: self.zone().clone(),
            min_duration: super::duration(self.config.min_duration_s),
            state: CrowdState::default(),
        })
    }
}

/// A [`CrowdRule`]'s memory: none of it is per track, so all of it survives a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct CrowdState {
    /// Since when the zone has held a crowd.
    since: Option<DateTime<Utc>>,
    /// Since when it has held fewer (within the grace, the gathering goes on).
    below_since: Option<DateTime<Utc>>,
    /// This gathering was reported.
    fired: bool,
    last_frame: Option<DateTime<Utc>>,
}

/// Fires once per gathering: when at least `min_count` tracks of its labels have been in the
/// zone for `min_duration_s`. A gathering ends when the count stays below `min_count` for more
/// than [`EXIT_GRACE`] (2 s), so one person stepping out for a moment does not restart it.
#[derive(Debug)]
pub struct CrowdRule {
    config: CrowdConfig,
    zone: Zone,
    min_duration: chrono::Duration,
    state: CrowdState,
}

impl CrowdRule {
    pub const KIND: &'static str = "crowd";
}

impl Rule for CrowdRule {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.state).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) {
        if let Ok(s) = serde_json::from_value::<CrowdState>(state) {
            self.state = s;
        }
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let now = frame.info.captured_at;
        let s = &mut self.state;
        if s.last_frame.is_some_and(|last| now - last > MAX_STREAK_GAP) {
            *s = CrowdState::default();
        }
        s.last_frame = Some(now);
        let members: Vec<&TrackedObject> = tracks_with(frame, &self.config.labels)
            .filter(|t| self.zone.contains(position(frame, &t.bbox)))
            .collect();
        if members.len() < self.config.min_count as usize {
            if s.since.is_some() {
                let below = *s.below_since.get_or_insert(now);
                if now - below > EXIT_GRACE {
                    *s = CrowdState {
                        last_frame: Some(now),
                        ..CrowdState::default()
                    };
                }
            }
            return Vec::new();
        }
        s.below_since = None;
        let since = *s.since.get_or_insert(now);
        if s.fired || now - since < self.min_duration {
            return Vec::new();
        }
        s.fired = true;
        let mut extra = serde_json::Map::new();
        extra.insert("count".into(), members.len().into());
        extra.insert(
            "duration_s".into(),
            serde_json::json!(seconds_between(since, now)),
        );
        vec![RuleHit {
            rule: rule_ref(&self.config.name, Self::KIND, Some(&self.zone)),
            category: self.config.category.clone(),
            weight: self.config.weight,
            detections: members.iter().map(|t| t.as_detection()).collect(),
            extra,
        }]
    }
}
