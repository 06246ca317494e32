//! Walkthrough "add a camera rule" (docs/architecture.md): a `headcount` rule kind that
//! fires when at least `min_count` objects of its labels are in view at once, at most once
//! per `cooldown_s`. In skynet it would be `crates/skynet-detect/src/rules/headcount.rs`
//! plus one line in `rules::register`; here it is registered into a registry of its own
//! and run through the camera rule conformance suite.

use chrono::{DateTime, Utc};
use skynet_core::{AnalysedFrame, Component, FieldError, Registry, RuleRef};
use skynet_detect::rules::conformance::check_rule_kind;
use skynet_detect::{BuildRule, CameraRuleFamily, Rule, RuleBuildContext, RuleContext, RuleHit};

/// `kind = "headcount"`: the config, as a `[[cameras.rules]]` table gives it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadcountConfig {
    pub name: String,
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
    pub min_count: usize,
    #[serde(default = "default_cooldown_s")]
    pub cooldown_s: f64,
}

fn default_labels() -> Vec<String> {
    vec!["person".into()]
}

fn default_cooldown_s() -> f64 {
    30.0
}

/// The checked config. Only `validate` makes one, so an unchecked rule cannot be built.
#[derive(Debug, Clone)]
pub struct ValidHeadcount {
    config: HeadcountConfig,
    cooldown: chrono::Duration,
}

impl Component<CameraRuleFamily> for HeadcountConfig {
    const KIND: &'static str = "headcount";
    const EXAMPLE: &'static str = "name = \"busy\"\nmin_count = 5";
    type Validated = ValidHeadcount;

    /// Pure checks against what the camera's model detects; errors name the field.
    fn validate(self, cx: &RuleContext<'_>) -> Result<ValidHeadcount, FieldError> {
        skynet_core::validate_id("rule", &self.name).map_err(|m| FieldError::new("name", m))?;
        if let Some(label) = self.labels.iter().find(|l| !cx.labels.contains(l)) {
            return Err(FieldError::new(
                "labels",
                format!("label `{label}` is not one model `{}` detects", cx.model),
            ));
        }
        if !(1..=1000).contains(&self.min_count) {
            return Err(FieldError::new(
                "min_count",
                format!(
                    "`min_count` must be between 1 and 1000, got {}",
                    self.min_count
                ),
            ));
        }
        let cooldown_s =
            skynet_core::config::check_range("cooldown_s", self.cooldown_s, 0.0, 86_400.0)?;
        Ok(ValidHeadcount {
            cooldown: chrono::Duration::milliseconds((cooldown_s * 1000.0) as i64),
            config: self,
        })
    }
}

impl BuildRule for ValidHeadcount {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(Headcount {
            settings: self.clone(),
            last_hit: None,
        })
    }
}

/// The running rule: its settings and what must outlive a restart (the last hit, so a
/// restart does not fire again inside the cooldown).
struct Headcount {
    settings: ValidHeadcount,
    last_hit: Option<DateTime<Utc>>,
}

impl Rule for Headcount {
    fn name(&self) -> &str {
        &self.settings.config.name
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let config = &self.settings.config;
        let now = frame.info.captured_at;
        let in_view: Vec<_> = frame
            .tracks
            .iter()
            .filter(|t| config.labels.contains(&t.label))
            .collect();
        let cooling = self
            .last_hit
            .is_some_and(|last| now - last < self.settings.cooldown);
        if in_view.len() < config.min_count || cooling {
            return Vec::new();
        }
        self.last_hit = Some(now);
        let mut extra = serde_json::Map::new();
        extra.insert("count".into(), in_view.len().into());
        vec![RuleHit {
            rule: RuleRef {
                name: config.name.clone(),
                kind: HeadcountConfig::KIND.into(),
                zone: None,
            },
            category: "crowd".into(),
            weight: 0.5,
            detections: in_view
                .iter()
                .map(|t| skynet_core::Detection {
                    label: t.label.clone(),
                    score: t.score,
                    bbox: t.bbox,
                    track: Some(t.id),
                })
                .collect(),
            extra,
        }]
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "last_hit": self.last_hit })
    }

    fn restore(&mut self, state: serde_json::Value) {
        // Anything unreadable is ignored: the rule then starts afresh, as on a first run.
        if let Some(Ok(last)) = state
            .get("last_hit")
            .map(|v| serde_json::from_value::<Option<DateTime<Utc>>>(v.clone()))
        {
            self.last_hit = last;
        }
    }
}

#[test]
fn the_headcount_rule_kind_passes_the_rule_conformance_suite() {
    let mut registry = Registry::default();
    registry.register::<CameraRuleFamily, HeadcountConfig>();
    let kind = registry
        .lookup::<CameraRuleFamily>("headcount")
        .expect("registered");
    if let Err(e) = check_rule_kind(&kind) {
        panic!("{e}");
    }
}
