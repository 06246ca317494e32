//! Rules turn what a camera sees into evidence ([`Observation`]s) for its grid cell.

use chrono::{DateTime, Utc};
use skynet_core::config::check_range;
use skynet_core::{
    AnalysedFrame, CameraId, Detection, FieldError, GridId, Observation, OwnerKind, Point, RuleRef,
};

use crate::Zone;

/// What a rule's validation may look at: the camera's zones and the labels the model detects.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    pub camera: &'a str,
    pub zones: &'a [Zone],
    /// The model's name, for messages.
    pub model: &'a str,
    pub labels: &'a [String],
}

/// A rule kind's settings, as one `[[cameras.rules]]` table gives them (without `kind`).
///
/// The binary deserializes the table into the kind's type, calls [`validate`](Self::validate),
/// then [`build`](Self::build) once per run, so each run starts with fresh rule state.
pub trait RuleConfig:
    serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// The `kind` string in `[[cameras.rules]]`.
    const KIND: &'static str;
    /// The rule's unique name on its camera.
    fn name(&self) -> &str;
    /// Pure checks (ranges, labels the model knows, the zone exists); errors name the field.
    fn validate(&mut self, cx: &RuleContext<'_>) -> Result<(), FieldError>;
    /// The rule, with fresh state. Call after `validate` succeeded.
    fn build(&self) -> Box<dyn Rule>;
}

/// The settings of a `zone_intrusion` rule; [`build`](RuleConfig::build) gives a
/// [`ZoneIntrusionRule`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneIntrusionConfig {
    pub name: String,
    /// The name of one of the camera's zones.
    pub zone: String,
    #[serde(default = "ZoneIntrusionConfig::default_labels")]
    pub labels: Vec<String>,
    #[serde(default = "ZoneIntrusionConfig::default_min_score")]
    pub min_score: f32,
    #[serde(default = "ZoneIntrusionConfig::default_min_frames")]
    pub min_frames: u32,
    #[serde(default = "ZoneIntrusionConfig::default_cooldown_s")]
    pub cooldown_s: f64,
    #[serde(default = "ZoneIntrusionConfig::default_category")]
    pub category: String,
    #[serde(default = "ZoneIntrusionConfig::default_weight")]
    pub weight: f32,
    /// The zone `validate` found, kept so `build` needs no context and cannot fail.
    #[serde(skip)]
    resolved_zone: Option<Zone>,
}

impl ZoneIntrusionConfig {
    /// The longest cooldown: a day. Longer would mean the rule fires about once per run.
    pub const MAX_COOLDOWN_S: f64 = 86_400.0;
    /// The most frames in a row `min_frames` may ask for (minutes of video at 30 fps).
    pub const MAX_MIN_FRAMES: u32 = 10_000;

    fn default_labels() -> Vec<String> {
        vec!["person".into()]
    }
    fn default_min_score() -> f32 {
        0.5
    }
    fn default_min_frames() -> u32 {
        3
    }
    fn default_cooldown_s() -> f64 {
        1.0
    }
    fn default_category() -> String {
        "restricted_area_intrusion".into()
    }
    fn default_weight() -> f32 {
        0.5
    }

    /// The validated settings as the rule runs them; `None` before `validate` succeeded.
    pub fn spec(&self) -> Option<ZoneIntrusionSpec> {
        let zone = self.resolved_zone.clone()?;
        // cooldown_s is at most a day once validated; `try_milliseconds` keeps an unvalidated
        // value from panicking all the same.
        let cooldown =
            chrono::Duration::try_milliseconds((self.cooldown_s * 1000.0).round() as i64)
                .unwrap_or(chrono::Duration::MAX);
        Some(ZoneIntrusionSpec {
            name: self.name.clone(),
            zone,
            labels: self.labels.clone(),
            min_score: self.min_score,
            min_frames: self.min_frames.max(1),
            cooldown,
            category: self.category.clone(),
            weight: self.weight,
        })
    }
}

impl RuleConfig for ZoneIntrusionConfig {
    const KIND: &'static str = ZoneIntrusionRule::KIND;

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, cx: &RuleContext<'_>) -> Result<(), FieldError> {
        skynet_core::validate_id("rule", &self.name).map_err(|m| FieldError::new("name", m))?;
        let Some(zone) = cx.zones.iter().find(|z| z.name == self.zone) else {
            let known: Vec<&str> = cx.zones.iter().map(|z| z.name.as_str()).collect();
            let known = if known.is_empty() {
                "no zones".to_string()
            } else {
                known.join(", ")
            };
            return Err(FieldError::new(
                "zone",
                format!(
                    "unknown zone `{}`; camera `{}` has: {known}",
                    self.zone, cx.camera
                ),
            ));
        };
        if self.labels.is_empty() {
            return Err(FieldError::new(
                "labels",
                "`labels` must name at least one label, or the rule never fires",
            ));
        }
        if let Some(unknown) = self.labels.iter().find(|l| !cx.labels.contains(l)) {
            return Err(FieldError::new(
                "labels",
                format!("label `{unknown}` is not one model `{}` detects", cx.model),
            ));
        }
        check_range("min_score", f64::from(self.min_score), 0.0, 1.0)?;
        check_range(
            "min_frames",
            f64::from(self.min_frames),
            1.0,
            f64::from(Self::MAX_MIN_FRAMES),
        )?;
        check_range("cooldown_s", self.cooldown_s, 0.0, Self::MAX_COOLDOWN_S).map_err(|e| {
            FieldError::new(
                e.field,
                format!(
                    "`cooldown_s` must be zero or a positive number of seconds up to {}, got {}",
                    Self::MAX_COOLDOWN_S,
                    self.cooldown_s
                ),
            )
        })?;
        skynet_core::validate_id("category", &self.category)
            .map_err(|m| FieldError::new("category", m))?;
        // A weight of 0 would be evidence that never raises the risk: (0, 1], not [0, 1].
        let weight = f64::from(self.weight);
        if check_range("weight", weight, 0.0, 1.0).is_err() || weight <= 0.0 {
            return Err(FieldError::new(
                "weight",
                format!("`weight` must be in (0, 1], got {}", self.weight),
            ));
        }
        self.resolved_zone = Some(zone.clone());
        Ok(())
    }

    fn build(&self) -> Box<dyn Rule> {
        match self.spec() {
            Some(spec) => Box::new(ZoneIntrusionRule::new(spec)),
            None => {
                // A programming error in the caller, not a config error: `validate` first.
                tracing::error!(rule = %self.name, "zone_intrusion rule built before validation; it will never fire");
                Box::new(NeverFires(self.name.clone()))
            }
        }
    }
}

/// Stands in for a rule that could not be built, so a caller's mistake costs one rule, not
/// the camera.
#[derive(Debug)]
struct NeverFires(String);

impl Rule for NeverFires {
    fn name(&self) -> &str {
        &self.0
    }

    fn evaluate(&mut self, _frame: &AnalysedFrame) -> Option<RuleHit> {
        None
    }
}

/// What a rule reports when it fires.
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub rule: RuleRef,
    pub category: String,
    pub weight: f32,
    pub detections: Vec<Detection>,
}

/// A per-camera rule, fed every analysed frame of its camera in order.
pub trait Rule: Send {
    fn name(&self) -> &str;
    fn evaluate(&mut self, frame: &AnalysedFrame) -> Option<RuleHit>;
    /// What the rule has learned from the frames so far (streaks, cooldowns). The pipeline
    /// saves it with the engine's state, so a restart goes on as an uninterrupted run would.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Takes back what [`state`](Self::state) gave; anything it cannot read is ignored (the
    /// rule then starts afresh, as on a first run).
    fn restore(&mut self, _state: serde_json::Value) {}
}

/// A [`ZoneIntrusionRule`]'s memory between frames.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct ZoneIntrusionState {
    streak: u32,
    last_hit: Option<DateTime<Utc>>,
    #[serde(default)]
    last_frame: Option<DateTime<Utc>>,
}

/// The settings of a [`ZoneIntrusionRule`], as the config gives them.
#[derive(Debug, Clone)]
pub struct ZoneIntrusionSpec {
    pub name: String,
    pub zone: Zone,
    pub labels: Vec<String>,
    pub min_score: f32,
    /// Frames in a row with an intruder before the rule fires.
    pub min_frames: u32,
    /// At most one hit per cooldown while intruders stay.
    pub cooldown: chrono::Duration,
    pub category: String,
    pub weight: f32,
}

/// Fires when objects of the given labels stand inside a zone for `min_frames` frames in a row;
/// then at most once per `cooldown` while they stay.
#[derive(Debug)]
pub struct ZoneIntrusionRule {
    spec: ZoneIntrusionSpec,
    streak: u32,
    last_hit: Option<DateTime<Utc>>,
    /// Event time of the last frame seen, to tell a streak from frames across a silence.
    last_frame: Option<DateTime<Utc>>,
}

/// Frames further apart than this are not "in a row".
const MAX_STREAK_GAP: chrono::Duration = chrono::Duration::seconds(10);

impl ZoneIntrusionRule {
    pub const KIND: &'static str = "zone_intrusion";

    pub fn new(spec: ZoneIntrusionSpec) -> Self {
        Self {
            spec,
            streak: 0,
            last_hit: None,
            last_frame: None,
        }
    }

    fn inside(&self, frame: &AnalysedFrame, d: &Detection) -> bool {
        let feet = d.bbox.bottom_center();
        let normalised = Point {
            x: feet.x / frame.info.width.max(1) as f32,
            y: feet.y / frame.info.height.max(1) as f32,
        };
        self.spec.zone.contains(normalised)
    }
}

impl Rule for ZoneIntrusionRule {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(ZoneIntrusionState {
            streak: self.streak,
            last_hit: self.last_hit,
            last_frame: self.last_frame,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) {
        if let Ok(s) = serde_json::from_value::<ZoneIntrusionState>(state) {
            self.streak = s.streak;
            self.last_hit = s.last_hit;
            self.last_frame = s.last_frame;
        }
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Option<RuleHit> {
        let intruders: Vec<Detection> = frame
            .detections
            .iter()
            .filter(|d| {
                d.score >= self.spec.min_score
                    && self.spec.labels.contains(&d.label)
                    && self.inside(frame, d)
            })
            .cloned()
            .collect();
        let t = frame.info.captured_at;
        // Frames in a row means without a long silence between them (a camera that was gone,
        // or a process that was down): the streak starts over after one.
        let broken = self
            .last_frame
            .is_some_and(|last| t.signed_duration_since(last) > MAX_STREAK_GAP);
        self.last_frame = Some(t);
        if intruders.is_empty() || broken {
            self.streak = 0;
        }
        if intruders.is_empty() {
            return None;
        }
        // Saturating: a camera watching an intruder for months must not overflow the count.
        self.streak = self.streak.saturating_add(1);
        let spec = &self.spec;
        let cooled = self
            .last_hit
            .is_none_or(|t| frame.info.captured_at - t >= spec.cooldown);
        if self.streak < spec.min_frames.max(1) || !cooled {
            return None;
        }
        self.last_hit = Some(frame.info.captured_at);
        Some(RuleHit {
            rule: RuleRef {
                name: spec.name.clone(),
                kind: Self::KIND.into(),
                zone: Some(spec.zone.name.clone()),
            },
            category: spec.category.clone(),
            weight: spec.weight,
            detections: intruders,
        })
    }
}

/// A camera's rules, with where the camera is, so hits become grid observations.
pub struct CameraRules {
    pub camera: CameraId,
    pub grid: GridId,
    pub owner: OwnerKind,
    pub rules: Vec<Box<dyn Rule>>,
}

impl CameraRules {
    /// Each rule's state, by rule name.
    pub fn state(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.rules
            .iter()
            .map(|r| (r.name().to_string(), r.state()))
            .filter(|(_, s)| !s.is_null())
            .collect()
    }

    /// Gives each rule its saved state (rules not in `saved` start afresh).
    pub fn restore(&mut self, mut saved: std::collections::BTreeMap<String, serde_json::Value>) {
        for rule in &mut self.rules {
            if let Some(state) = saved.remove(rule.name()) {
                rule.restore(state);
            }
        }
    }

    pub fn apply(&mut self, frame: &AnalysedFrame) -> Vec<Observation> {
        let mut observations = Vec::new();
        for rule in &mut self.rules {
            if let Some(hit) = rule.evaluate(frame) {
                metrics::counter!("skynet_observations_total", "camera" => self.camera.to_string(), "rule" => hit.rule.name.clone())
                    .increment(1);
                // The rule's confidence is its best supporting detection's score.
                let confidence = hit
                    .detections
                    .iter()
                    .map(|d| d.score)
                    .fold(0.0f32, f32::max)
                    .clamp(0.0, 1.0);
                observations.push(Observation {
                    at: frame.info.captured_at,
                    source: skynet_core::SourceRef::camera(&self.camera),
                    grid: self.grid.clone(),
                    category: hit.category,
                    weight: hit.weight,
                    confidence: if hit.detections.is_empty() {
                        1.0
                    } else {
                        confidence
                    },
                    evidence: skynet_core::Evidence {
                        owner: Some(self.owner),
                        rule: Some(hit.rule),
                        detections: hit.detections,
                        ..skynet_core::Evidence::default()
                    },
                });
            }
        }
        observations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;
    use skynet_core::FrameInfo;

    fn frame(seq: u64, detections: Vec<Detection>) -> AnalysedFrame {
        AnalysedFrame {
            info: FrameInfo {
                camera: CameraId::new("cam"),
                seq,
                captured_at: DateTime::<Utc>::UNIX_EPOCH
                    + chrono::Duration::milliseconds(seq as i64 * 100),
                decoded_at: std::time::Instant::now(),
                skipped: 0,
                width: 100,
                height: 100,
            },
            detections,
            inference: std::time::Duration::ZERO,
            inferred: true,
            tracks: Vec::new(),
        }
    }

    fn person_at(x: f32, y: f32) -> Detection {
        Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(x - 5.0, y - 20.0, x + 5.0, y),
            track: None,
        }
    }

    fn rule() -> ZoneIntrusionRule {
        let zone = Zone::new("left", &[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]).unwrap();
        ZoneIntrusionRule::new(ZoneIntrusionSpec {
            name: "r".into(),
            zone,
            labels: vec!["person".into()],
            min_score: 0.5,
            min_frames: 2,
            cooldown: chrono::Duration::seconds(1),
            category: "intrusion".into(),
            weight: 0.3,
        })
    }

    #[test]
    fn fires_after_min_frames_then_respects_cooldown() {
        let mut r = rule();
        let hits: Vec<bool> = (0..25)
            .map(|i| r.evaluate(&frame(i, vec![person_at(20.0, 50.0)])).is_some())
            .collect();
        // Frame 1 completes the streak; then one hit per second (10 frames).
        let fired: Vec<usize> = hits
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(fired, vec![1, 11, 21]);
    }

    fn zones() -> Vec<Zone> {
        vec![
            Zone::new("left", &[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]).unwrap(),
            Zone::new("right", &[[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]).unwrap(),
        ]
    }

    fn labels() -> Vec<String> {
        vec!["person".into(), "car".into()]
    }

    /// Deserializes a rule table (as the binary does, `kind` removed) and validates it.
    fn configure(table: &str) -> Result<ZoneIntrusionConfig, FieldError> {
        let mut config: ZoneIntrusionConfig =
            toml::from_str(table).map_err(|e| FieldError::new("<toml>", e.to_string()))?;
        let (zones, labels) = (zones(), labels());
        config.validate(&RuleContext {
            camera: "cam",
            zones: &zones,
            model: "m",
            labels: &labels,
        })?;
        Ok(config)
    }

    const MINIMAL: &str = "name = \"r\"\nzone = \"left\"\n";

    #[test]
    fn zone_intrusion_config_takes_defaults_and_builds_a_working_rule() {
        let config = configure(MINIMAL).unwrap();
        assert_eq!(ZoneIntrusionConfig::KIND, "zone_intrusion");
        assert_eq!(config.name(), "r");
        assert_eq!(config.labels, vec!["person".to_string()]);
        assert_eq!(
            (
                config.min_score,
                config.min_frames,
                config.cooldown_s,
                config.weight
            ),
            (0.5, 3, 1.0, 0.5)
        );
        assert_eq!(config.category, "restricted_area_intrusion");
        let spec = config.spec().unwrap();
        assert_eq!(spec.zone.name, "left");
        assert_eq!(spec.cooldown, chrono::Duration::seconds(1));
        let mut rule = config.build();
        assert_eq!(rule.name(), "r");
        let fired: Vec<bool> = (0..3)
            .map(|i| {
                rule.evaluate(&frame(i, vec![person_at(20.0, 50.0)]))
                    .is_some()
            })
            .collect();
        assert_eq!(fired, vec![false, false, true]);
    }

    #[test]
    fn zone_intrusion_config_errors_name_the_field() {
        let cases: [(&str, &str, &str); 14] = [
            (
                "name = \"a b\"\nzone = \"left\"",
                "name",
                "rule id `a b` has ` `",
            ),
            (
                "name = \"r\"\nzone = \"middle\"",
                "zone",
                "unknown zone `middle`; camera `cam` has: left, right",
            ),
            (
                "labels = [\"face\"]",
                "labels",
                "label `face` is not one model `m` detects",
            ),
            ("labels = []", "labels", "at least one label"),
            (
                "min_score = 1.5",
                "min_score",
                "`min_score` must be between 0 and 1, got 1.5",
            ),
            ("min_score = nan", "min_score", "got NaN"),
            (
                "min_frames = 0",
                "min_frames",
                "`min_frames` must be between 1 and 10000, got 0",
            ),
            ("min_frames = 10001", "min_frames", "between 1 and 10000"),
            (
                "cooldown_s = -1.0",
                "cooldown_s",
                "`cooldown_s` must be zero or a positive number of seconds up to 86400, got -1",
            ),
            ("cooldown_s = inf", "cooldown_s", "got inf"),
            (
                "category = \"a/b\"",
                "category",
                "category id `a/b` has `/`",
            ),
            (
                "weight = 0.0",
                "weight",
                "`weight` must be in (0, 1], got 0",
            ),
            (
                "weight = 1.01",
                "weight",
                "`weight` must be in (0, 1], got 1.01",
            ),
            ("weight = nan", "weight", "got NaN"),
        ];
        for (extra, field, message) in cases {
            // Later keys win only if not duplicated, so the base keys are left out when
            // the case sets them.
            let table = if extra.starts_with("name") {
                extra.to_string()
            } else {
                format!("{MINIMAL}{extra}\n")
            };
            let err = configure(&table).unwrap_err();
            assert_eq!(err.field, field, "{table}: {err}");
            assert!(err.message.contains(message), "{table}: {}", err.message);
        }
    }

    #[test]
    fn zone_intrusion_config_rejects_unknown_and_missing_keys() {
        let err = configure(&format!("{MINIMAL}fiel = 1\n")).unwrap_err();
        assert!(err.message.contains("unknown field `fiel`"), "{err}");
        let err = configure("name = \"r\"\n").unwrap_err();
        assert!(err.message.contains("missing field `zone`"), "{err}");
    }

    #[test]
    fn an_unvalidated_config_builds_a_rule_that_never_fires() {
        let config: ZoneIntrusionConfig = toml::from_str(MINIMAL).unwrap();
        assert!(config.spec().is_none());
        let mut rule = config.build();
        for i in 0..5 {
            assert!(
                rule.evaluate(&frame(i, vec![person_at(20.0, 50.0)]))
                    .is_none()
            );
        }
    }

    #[test]
    fn a_restored_rule_goes_on_with_its_streak_and_cooldown() {
        let mut before = rule();
        assert!(
            before
                .evaluate(&frame(0, vec![person_at(20.0, 50.0)]))
                .is_none()
        );
        // A restart between frame 0 and frame 1: the streak carries over.
        let mut after = rule();
        after.restore(before.state());
        assert!(
            after
                .evaluate(&frame(1, vec![person_at(20.0, 50.0)]))
                .is_some()
        );
        // And so does the cooldown: no second hit within a second.
        let mut again = rule();
        again.restore(after.state());
        assert!(
            again
                .evaluate(&frame(2, vec![person_at(20.0, 50.0)]))
                .is_none()
        );
        // After a long silence (the process was down for a minute) the streak starts over.
        let mut later = rule();
        later.restore(before.state());
        let mut late_frame = frame(1, vec![person_at(20.0, 50.0)]);
        late_frame.info.captured_at += chrono::Duration::seconds(60);
        assert!(later.evaluate(&late_frame).is_none());
        // A state it cannot read leaves it fresh.
        let mut fresh = rule();
        fresh.restore(serde_json::json!({"streak": "many"}));
        assert!(
            fresh
                .evaluate(&frame(0, vec![person_at(20.0, 50.0)]))
                .is_none()
        );
    }

    #[test]
    fn ignores_objects_outside_the_zone_or_of_other_labels() {
        let mut r = rule();
        let car = Detection {
            label: "car".into(),
            ..person_at(20.0, 50.0)
        };
        for i in 0..5 {
            assert!(
                r.evaluate(&frame(i, vec![person_at(80.0, 50.0), car.clone()]))
                    .is_none()
            );
        }
    }
}
