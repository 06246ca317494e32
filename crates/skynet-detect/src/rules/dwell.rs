//! `dwell`: an object stays in a zone longer than `min_dwell_s` (loitering).

use chrono::{DateTime, Utc};
use skynet_core::Component;
use skynet_core::{AnalysedFrame, FieldError};

use super::{
    BuildRule, CameraRuleFamily, EXIT_GRACE, PerTrack, Rule, RuleBuildContext, RuleContext,
    RuleHit, ValidRule, check_category, check_labels, check_name, check_seconds, check_weight,
    find_zone, position, rule_ref, seconds_between, tracks_with,
};
use crate::Zone;

/// The settings of a `dwell` rule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DwellConfig {
    pub name: String,
    /// The name of one of the camera's zones.
    pub zone: String,
    #[serde(default = "default_person")]
    pub labels: Vec<String>,
    /// How long a track must stay in the zone before the rule fires, in seconds.
    #[serde(default = "DwellConfig::default_min_dwell_s")]
    pub min_dwell_s: f64,
    #[serde(default = "DwellConfig::default_category")]
    pub category: String,
    #[serde(default = "DwellConfig::default_weight")]
    pub weight: f32,
}

pub(crate) fn default_person() -> Vec<String> {
    vec!["person".into()]
}

impl DwellConfig {
    fn default_min_dwell_s() -> f64 {
        60.0
    }
    fn default_category() -> String {
        "loitering".into()
    }
    fn default_weight() -> f32 {
        0.5
    }
}

impl Component<CameraRuleFamily> for DwellConfig {
    const KIND: &'static str = DwellRule::KIND;
    const EXAMPLE: &'static str = "name = \"loitering\"\nzone = \"left\"";
    type Validated = ValidRule<Self>;

    fn validate(self, cx: &RuleContext<'_>) -> Result<ValidRule<Self>, FieldError> {
        check_name(&self.name)?;
        let zone = find_zone(cx, &self.zone)?;
        check_labels(cx, &self.labels)?;
        check_seconds("min_dwell_s", self.min_dwell_s)?;
        check_category(&self.category)?;
        check_weight(self.weight)?;
        Ok(ValidRule::new(self, Some(zone)))
    }
}

impl BuildRule for ValidRule<DwellConfig> {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(DwellRule {
            config: self.config.clone(),
            zone: self.zone().clone(),
            min_dwell: super::duration(self.config.min_dwell_s),
            stays: PerTrack::default(),
        })
    }
}

/// One track's current visit to the zone.
#[derive(Debug, Clone, Copy)]
struct Stay {
    entered: DateTime<Utc>,
    last_inside: DateTime<Utc>,
    fired: bool,
}

/// Fires once per track and visit when the track has been in the zone for `min_dwell_s`. A
/// visit survives up to [`EXIT_GRACE`] (2 s) out of the zone or out of sight, so feet on the
/// border or a short occlusion do not start the clock over.
#[derive(Debug)]
pub struct DwellRule {
    config: DwellConfig,
    zone: Zone,
    min_dwell: chrono::Duration,
    stays: PerTrack<Stay>,
}

impl DwellRule {
    pub const KIND: &'static str = "dwell";
}

impl Rule for DwellRule {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let now = frame.info.captured_at;
        let mut hits = Vec::new();
        for t in tracks_with(frame, &self.config.labels) {
            if !self.zone.contains(position(frame, &t.bbox)) {
                continue;
            }
            let stay = self.stays.seen(t.id, now, || Stay {
                entered: now,
                last_inside: now,
                fired: false,
            });
            if now - stay.last_inside > EXIT_GRACE {
                *stay = Stay {
                    entered: now,
                    last_inside: now,
                    fired: false,
                };
            }
            stay.last_inside = now;
            if !stay.fired && now - stay.entered >= self.min_dwell {
                stay.fired = true;
                let mut extra = serde_json::Map::new();
                extra.insert(
                    "dwell_s".into(),
                    serde_json::json!(seconds_between(stay.entered, now)),
                );
                hits.push(RuleHit {
                    rule: rule_ref(&self.config.name, Self::KIND, Some(&self.zone)),
                    category: self.config.category.clone(),
                    weight: self.config.weight,
                    detections: vec![t.as_detection()],
                    extra,
                });
            }
        }
        // Visits that ended: the track has been out of the zone past the grace.
        self.stays.forget_older(now, EXIT_GRACE);
        hits
    }
}
