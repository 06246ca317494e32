//! `zone_intrusion`: objects of given labels inside a zone, with inertia.

use chrono::{DateTime, Utc};
use skynet_core::Component;
use skynet_core::config::check_range;
use skynet_core::{AnalysedFrame, FieldError, TrackedObject};

use super::{
    BuildRule, CameraRuleFamily, MAX_STREAK_GAP, PerTrack, Rule, RuleBuildContext, RuleContext,
    RuleHit, check_category, check_labels, check_name, check_weight, find_zone, position, rule_ref,
    tracks_with,
};
use crate::Zone;

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
}

impl Component<CameraRuleFamily> for ZoneIntrusionConfig {
    const KIND: &'static str = ZoneIntrusionRule::KIND;
    const EXAMPLE: &'static str = "name = \"intrusion\"\nzone = \"left\"";
    type Validated = ZoneIntrusionSpec;

    fn validate(self, cx: &RuleContext<'_>) -> Result<ZoneIntrusionSpec, FieldError> {
        check_name(&self.name)?;
        let zone = find_zone(cx, &self.zone)?;
        check_labels(cx, &self.labels)?;
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
        check_category(&self.category)?;
        check_weight(self.weight)?;
        Ok(ZoneIntrusionSpec {
            name: self.name,
            zone,
            labels: self.labels,
            min_score: self.min_score,
            min_frames: self.min_frames,
            cooldown: super::duration(self.cooldown_s),
            category: self.category,
            weight: self.weight,
        })
    }
}

impl BuildRule for ZoneIntrusionSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(ZoneIntrusionRule::new(self.clone()))
    }
}

/// A [`ZoneIntrusionRule`]'s memory between frames that outlives a restart. Streaks are per
/// track and the tracker starts over with new ids after a restart, so they are not kept.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct ZoneIntrusionState {
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
    /// Frames in a row a track must be in the zone before it counts as an intruder.
    pub min_frames: u32,
    /// At most one hit per cooldown while intruders stay.
    pub cooldown: chrono::Duration,
    pub category: String,
    pub weight: f32,
}

/// What the rule knows of one track.
#[derive(Debug, Clone, Copy, Default)]
struct Presence {
    /// Frames in a row the track has been in the zone.
    streak: u32,
    /// The frame (by the rule's own count) the streak was last extended at.
    frame: u64,
    /// The track was in a hit: once it stands still it raises no more.
    reported: bool,
}

/// Fires when tracked objects of the given labels stand inside a zone for `min_frames` frames
/// in a row; then at most once per `cooldown` while they stay. A stationary object (a parked
/// car) is reported once, not at every cooldown: it raises hits again only once it moves.
#[derive(Debug)]
pub struct ZoneIntrusionRule {
    spec: ZoneIntrusionSpec,
    tracks: PerTrack<Presence>,
    frames: u64,
    last_hit: Option<DateTime<Utc>>,
    /// Event time of the last frame seen, to tell a streak from frames across a silence.
    last_frame: Option<DateTime<Utc>>,
}

impl ZoneIntrusionRule {
    pub const KIND: &'static str = "zone_intrusion";

    pub fn new(spec: ZoneIntrusionSpec) -> Self {
        Self {
            spec,
            tracks: PerTrack::default(),
            frames: 0,
            last_hit: None,
            last_frame: None,
        }
    }

    fn counts(&self, frame: &AnalysedFrame, t: &TrackedObject) -> bool {
        t.score >= self.spec.min_score && self.spec.zone.contains(position(frame, &t.bbox))
    }
}

impl Rule for ZoneIntrusionRule {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(ZoneIntrusionState {
            last_hit: self.last_hit,
            last_frame: self.last_frame,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: serde_json::Value) {
        if let Ok(s) = serde_json::from_value::<ZoneIntrusionState>(state) {
            self.last_hit = s.last_hit;
            self.last_frame = s.last_frame;
        }
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let now = frame.info.captured_at;
        // Frames in a row means without a long silence between them (a camera that was gone,
        // or a process that was down): streaks start over after one.
        if self
            .last_frame
            .is_some_and(|last| now.signed_duration_since(last) > MAX_STREAK_GAP)
        {
            self.tracks.clear();
        }
        self.last_frame = Some(now);
        self.frames += 1;
        let this_frame = self.frames;
        let min_frames = self.spec.min_frames.max(1);
        let mut fresh: Vec<&TrackedObject> = Vec::new();
        for t in tracks_with(frame, &self.spec.labels) {
            let counts = self.counts(frame, t);
            // Every track of the labels in view keeps its memory (whether it was reported),
            // so a parked car whose score dips for a while is not reported again.
            let p = self.tracks.seen(t.id, now, Presence::default);
            if !counts {
                p.streak = 0;
                continue;
            }
            // A track missing from a frame (or outside the zone) broke its streak.
            p.streak = if p.frame + 1 == this_frame {
                p.streak.saturating_add(1)
            } else {
                1
            };
            p.frame = this_frame;
            let still_and_told = t.stationary_since.is_some() && p.reported;
            if p.streak >= min_frames && !still_and_told {
                fresh.push(t);
            }
        }
        self.tracks.forget_older(now, MAX_STREAK_GAP);
        let cooled = self
            .last_hit
            .is_none_or(|last| now - last >= self.spec.cooldown);
        if fresh.is_empty() || !cooled {
            return Vec::new();
        }
        self.last_hit = Some(now);
        for t in &fresh {
            if let Some(p) = self.tracks.get_mut(t.id) {
                p.reported = true;
            }
        }
        vec![RuleHit {
            rule: rule_ref(&self.spec.name, Self::KIND, Some(&self.spec.zone)),
            category: self.spec.category.clone(),
            weight: self.spec.weight,
            detections: fresh.iter().map(|t| t.as_detection()).collect(),
            extra: serde_json::Map::new(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::{BBox, Detection, DeviceId, FrameInfo};

    /// A frame whose tracks are the given objects, the i-th with track id i + 1.
    fn frame(seq: u64, detections: Vec<Detection>) -> AnalysedFrame {
        let captured_at =
            DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(seq as i64 * 100);
        let tracks = detections
            .iter()
            .enumerate()
            .map(|(i, d)| TrackedObject {
                id: i as u64 + 1,
                label: d.label.clone(),
                score: d.score,
                bbox: d.bbox,
                first_seen: captured_at,
                stationary_since: None,
                detected: true,
            })
            .collect();
        AnalysedFrame {
            info: FrameInfo {
                camera: DeviceId::new("cam"),
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
            tracks,
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
            .map(|i| r.evaluate(&frame(i, vec![person_at(20.0, 50.0)])).len() == 1)
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
    fn configure(table: &str) -> Result<ZoneIntrusionSpec, FieldError> {
        let config: ZoneIntrusionConfig =
            toml::from_str(table).map_err(|e| FieldError::new("<toml>", e.to_string()))?;
        let (zones, labels) = (zones(), labels());
        config.validate(&RuleContext {
            camera: "cam",
            zones: &zones,
            model: "m",
            labels: &labels,
            allowed: None,
        })
    }

    const MINIMAL: &str = "name = \"r\"\nzone = \"left\"\n";

    #[test]
    fn zone_intrusion_config_takes_defaults_and_builds_a_working_rule() {
        let spec = configure(MINIMAL).unwrap();
        assert_eq!(ZoneIntrusionConfig::KIND, "zone_intrusion");
        assert_eq!(BuildRule::name(&spec), "r");
        assert_eq!(spec.labels, vec!["person".to_string()]);
        assert_eq!(
            (spec.min_score, spec.min_frames, spec.weight),
            (0.5, 3, 0.5)
        );
        assert_eq!(spec.category, "restricted_area_intrusion");
        assert_eq!(spec.zone.name, "left");
        assert_eq!(spec.cooldown, chrono::Duration::seconds(1));
        let camera = skynet_core::DeviceId::new("cam");
        let mut rule = spec.build(&RuleBuildContext { camera: &camera });
        assert_eq!(rule.name(), "r");
        let fired: Vec<bool> = (0..3)
            .map(|i| rule.evaluate(&frame(i, vec![person_at(20.0, 50.0)])).len() == 1)
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
    fn a_restored_rule_keeps_its_cooldown_but_not_track_streaks() {
        let p = || vec![person_at(20.0, 50.0)];
        let mut before = rule();
        assert!(before.evaluate(&frame(0, p())).is_empty());
        assert_eq!(before.evaluate(&frame(1, p())).len(), 1);
        // A restart after frame 1: the tracker starts over (new ids), so streaks do too...
        let mut after = rule();
        after.restore(before.state());
        assert!(after.evaluate(&frame(2, p())).is_empty());
        // ...and the cooldown carries over: the streak is complete at frame 3, but the hit
        // waits for a second after frame 1's.
        let fired: Vec<u64> = (3..15)
            .filter(|&i| !after.evaluate(&frame(i, p())).is_empty())
            .collect();
        assert_eq!(fired, vec![11]);
        // A state it cannot read leaves it fresh.
        let mut fresh = rule();
        fresh.restore(serde_json::json!({"last_hit": "many"}));
        assert!(fresh.evaluate(&frame(0, p())).is_empty());
        assert_eq!(fresh.evaluate(&frame(1, p())).len(), 1);
    }

    #[test]
    fn a_long_silence_starts_streaks_over() {
        let mut r = rule();
        assert!(
            r.evaluate(&frame(0, vec![person_at(20.0, 50.0)]))
                .is_empty()
        );
        let mut late = frame(1, vec![person_at(20.0, 50.0)]);
        late.info.captured_at += chrono::Duration::seconds(60);
        assert!(r.evaluate(&late).is_empty());
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
                    .is_empty()
            );
        }
    }
}
