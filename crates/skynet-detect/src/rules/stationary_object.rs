//! `stationary_object`: an object of given labels standing still longer than
//! `min_stationary_s`, in a zone or anywhere: a bag left behind, a car in a fire lane.

use chrono::{DateTime, Utc};
use skynet_core::Component;
use skynet_core::{AnalysedFrame, FieldError};

use super::{
    BuildRule, CameraRuleFamily, MAX_STREAK_GAP, PerTrack, Rule, RuleBuildContext, RuleContext,
    RuleHit, ValidRule, check_category, check_labels, check_name, check_seconds, check_weight,
    find_zone, position, rule_ref, seconds_between, tracks_with,
};
use crate::Zone;

/// The settings of a `stationary_object` rule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationaryObjectConfig {
    pub name: String,
    /// The name of one of the camera's zones; none: the whole frame.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default = "StationaryObjectConfig::default_labels")]
    pub labels: Vec<String>,
    /// How long the object must have stood still, in seconds (the tracker's
    /// `stationary_window_s` of stillness comes first and counts towards it).
    #[serde(default = "StationaryObjectConfig::default_min_stationary_s")]
    pub min_stationary_s: f64,
    #[serde(default = "StationaryObjectConfig::default_category")]
    pub category: String,
    #[serde(default = "StationaryObjectConfig::default_weight")]
    pub weight: f32,
}

impl StationaryObjectConfig {
    fn default_labels() -> Vec<String> {
        ["backpack", "handbag", "suitcase"]
            .map(String::from)
            .to_vec()
    }
    fn default_min_stationary_s() -> f64 {
        60.0
    }
    fn default_category() -> String {
        "abandoned_object".into()
    }
    fn default_weight() -> f32 {
        0.5
    }
}

impl Component<CameraRuleFamily> for StationaryObjectConfig {
    const KIND: &'static str = StationaryObjectRule::KIND;
    const EXAMPLE: &'static str = "name = \"left_luggage\"";
    type Validated = ValidRule<Self>;

    fn validate(self, cx: &RuleContext<'_>) -> Result<ValidRule<Self>, FieldError> {
        check_name(&self.name)?;
        let zone = self
            .zone
            .as_deref()
            .map(|name| find_zone(cx, name))
            .transpose()?;
        check_labels(cx, &self.labels)?;
        check_seconds("min_stationary_s", self.min_stationary_s)?;
        check_category(&self.category)?;
        check_weight(self.weight)?;
        Ok(ValidRule::new(self, zone))
    }
}

impl BuildRule for ValidRule<StationaryObjectConfig> {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(StationaryObjectRule {
            config: self.config.clone(),
            zone: self.zone.clone(),
            min_stationary: super::duration(self.config.min_stationary_s),
            reported: PerTrack::default(),
        })
    }
}

/// Fires once per track and period of stillness (the tracker's
/// [`stationary_since`](skynet_core::TrackedObject::stationary_since)), when the object has
/// stood still for `min_stationary_s` inside the zone. An object that moves off and stops
/// again starts a new period, and may fire again.
#[derive(Debug)]
pub struct StationaryObjectRule {
    config: StationaryObjectConfig,
    zone: Option<Zone>,
    min_stationary: chrono::Duration,
    /// The stillness period already reported, per track.
    reported: PerTrack<Option<DateTime<Utc>>>,
}

impl StationaryObjectRule {
    pub const KIND: &'static str = "stationary_object";
}

impl Rule for StationaryObjectRule {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let now = frame.info.captured_at;
        let mut hits = Vec::new();
        for t in tracks_with(frame, &self.config.labels) {
            let Some(since) = t.stationary_since else {
                continue;
            };
            if now - since < self.min_stationary
                || self
                    .zone
                    .as_ref()
                    .is_some_and(|z| !z.contains(position(frame, &t.bbox)))
            {
                continue;
            }
            let reported = self.reported.seen(t.id, now, || None);
            if *reported == Some(since) {
                continue;
            }
            *reported = Some(since);
            let mut extra = serde_json::Map::new();
            extra.insert(
                "stationary_s".into(),
                serde_json::json!(seconds_between(since, now)),
            );
            hits.push(RuleHit {
                rule: rule_ref(&self.config.name, Self::KIND, self.zone.as_ref()),
                category: self.config.category.clone(),
                weight: self.config.weight,
                detections: vec![t.as_detection()],
                extra,
            });
        }
        self.reported.forget_older(now, MAX_STREAK_GAP);
        hits
    }
}
