//! Rules turn what a camera sees into evidence ([`Observation`]s) for its grid cell.
//!
//! Rules look at the tracker's objects ([`AnalysedFrame::tracks`]), not at raw detections: a
//! track has an id, a history and a stationary flag, so a rule can tell "someone has stood
//! here for a minute" or "this car crossed the line" instead of "something is here" at every
//! frame. An object's position is the bottom centre of its box (where it stands), as a
//! fraction of the frame, the coordinates zones and lines are drawn in.
//!
//! Kinds: [`zone_intrusion`], [`dwell`], [`line_crossing`], [`crowd`] and
//! [`stationary_object`]. Each is a [`Component`](skynet_core::Component) of the [`CameraRuleFamily`] (settings, validation) whose
//! validated value builds a [`Rule`].

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use skynet_core::config::check_range;
use skynet_core::{
    AnalysedFrame, BBox, Detection, DeviceId, FieldError, GridId, Observation, OwnerKind, Point,
    RuleRef, TrackedObject,
};
use skynet_core::{Erase, Family, Registry};

use crate::Zone;

pub mod conformance;
pub mod crowd;
pub mod dwell;
pub mod line_crossing;
pub mod stationary_object;
pub mod zone_intrusion;

#[cfg(test)]
mod tests;

pub use crowd::{CrowdConfig, CrowdRule};
pub use dwell::{DwellConfig, DwellRule};
pub use line_crossing::{CrossingDirection, LineCrossingConfig, LineCrossingRule};
pub use stationary_object::{StationaryObjectConfig, StationaryObjectRule};
pub use zone_intrusion::{ZoneIntrusionConfig, ZoneIntrusionRule, ZoneIntrusionSpec};

/// What a rule's validation may look at: the camera's zones and the labels the model detects.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    pub camera: &'a str,
    pub zones: &'a [Zone],
    /// The model's name, for messages.
    pub model: &'a str,
    pub labels: &'a [String],
    /// The labels the camera keeps (its owner's classes, `[detect.owner_classes]`); `None`:
    /// all the model's. A rule on a label the camera drops would never fire.
    pub allowed: Option<&'a [String]>,
}

/// The camera-rule family: one `[[cameras.rules]]` table each, `kind` plus the kind's keys.
/// Every kind is a [`Component`](skynet_core::Component) of this family whose validated value is a [`BuildRule`].
#[derive(Debug)]
pub struct CameraRuleFamily;

impl Family for CameraRuleFamily {
    const NAME: &'static str = "rule";
    type Context<'a> = RuleContext<'a>;
    type Validated = dyn BuildRule;
}

impl<V: BuildRule + 'static> Erase<V> for CameraRuleFamily {
    fn erase(validated: V) -> Arc<dyn BuildRule> {
        Arc::new(validated)
    }
}

/// What building a rule may look at.
#[derive(Debug, Clone, Copy)]
pub struct RuleBuildContext<'a> {
    pub camera: &'a DeviceId,
}

/// A validated rule of any kind: builds the running [`Rule`], with fresh state, once per run.
pub trait BuildRule: std::fmt::Debug + Send + Sync {
    /// The rule's unique name on its camera.
    fn name(&self) -> &str;
    fn build(&self, cx: &RuleBuildContext<'_>) -> Box<dyn Rule>;
}

/// A rule config that passed validation, with the zone it names resolved. Only this crate's
/// validation makes one, so a rule is never built from settings nobody checked.
#[derive(Debug, Clone)]
pub struct ValidRule<C> {
    pub(crate) config: C,
    pub(crate) zone: Option<Zone>,
}

impl<C> ValidRule<C> {
    pub(crate) fn new(config: C, zone: Option<Zone>) -> Self {
        Self { config, zone }
    }

    pub fn config(&self) -> &C {
        &self.config
    }

    /// The zone of a kind that always has one (validation found it).
    pub(crate) fn zone(&self) -> &Zone {
        self.zone
            .as_ref()
            .expect("validation of a zone rule resolves its zone")
    }
}

/// This crate's camera rule kinds.
pub fn register(registry: &mut Registry) {
    registry
        .register::<CameraRuleFamily, ZoneIntrusionConfig>()
        .register::<CameraRuleFamily, DwellConfig>()
        .register::<CameraRuleFamily, LineCrossingConfig>()
        .register::<CameraRuleFamily, CrowdConfig>()
        .register::<CameraRuleFamily, StationaryObjectConfig>();
}

/// What a rule reports when it fires.
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub rule: RuleRef,
    pub category: String,
    pub weight: f32,
    /// The objects that made the rule fire, with their track ids.
    pub detections: Vec<Detection>,
    /// What else the evidence should say (a crossing's direction, how long someone stayed).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A per-camera rule, fed every analysed frame of its camera in order.
pub trait Rule: Send {
    fn name(&self) -> &str;
    /// The rule's hits at this frame (usually none; several when several tracks qualify at
    /// once and each is its own event, such as two line crossings).
    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit>;
    /// What the rule has learned from the frames so far (streaks, cooldowns). The pipeline
    /// saves it with the engine's state, so a restart goes on as an uninterrupted run would.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Takes back what [`state`](Self::state) gave; anything it cannot read is ignored (the
    /// rule then starts afresh, as on a first run).
    fn restore(&mut self, _state: serde_json::Value) {}
}

/// A camera's rules, with where the camera is, so hits become grid observations.
pub struct CameraRules {
    pub camera: DeviceId,
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

    /// Runs every rule on the frame (after the tracker filled its `tracks`); one observation
    /// per hit, at the frame's time, with the hit's boxes and track ids as evidence.
    pub fn apply(&mut self, frame: &AnalysedFrame) -> Vec<Observation> {
        let mut observations = Vec::new();
        for rule in &mut self.rules {
            for hit in rule.evaluate(frame) {
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
                        extra: hit.extra,
                        ..skynet_core::Evidence::default()
                    },
                });
            }
        }
        observations
    }
}

// ---- Pieces the rule kinds share ----

/// Frames further apart than this are not "in a row": a camera that was gone, or a process
/// that was down, starts streaks over.
pub(crate) const MAX_STREAK_GAP: chrono::Duration = chrono::Duration::seconds(10);

/// How long an object may be out of a zone (seen outside, or not seen) and still be on the
/// same visit: feet jittering on the border, or a second's occlusion, do not end a stay.
pub(crate) const EXIT_GRACE: chrono::Duration = chrono::Duration::seconds(2);

/// The longest time setting of a rule: a day.
pub(crate) const MAX_RULE_SECONDS: f64 = 86_400.0;

/// Where an object stands, as a fraction of the frame: the bottom centre of its box.
pub(crate) fn position(frame: &AnalysedFrame, bbox: &BBox) -> Point {
    let feet = bbox.bottom_center();
    Point {
        x: feet.x / frame.info.width.max(1) as f32,
        y: feet.y / frame.info.height.max(1) as f32,
    }
}

/// The tracks of the given labels.
pub(crate) fn tracks_with<'f>(
    frame: &'f AnalysedFrame,
    labels: &'f [String],
) -> impl Iterator<Item = &'f TrackedObject> + 'f {
    frame.tracks.iter().filter(|t| labels.contains(&t.label))
}

pub(crate) fn check_name(name: &str) -> Result<(), FieldError> {
    skynet_core::validate_id("rule", name).map_err(|m| FieldError::new("name", m))
}

/// The camera's zone called `name`; the error lists the zones it has.
pub(crate) fn find_zone(cx: &RuleContext<'_>, name: &str) -> Result<Zone, FieldError> {
    if let Some(zone) = cx.zones.iter().find(|z| z.name == name) {
        return Ok(zone.clone());
    }
    let known: Vec<&str> = cx.zones.iter().map(|z| z.name.as_str()).collect();
    let known = if known.is_empty() {
        "no zones".to_string()
    } else {
        known.join(", ")
    };
    Err(FieldError::new(
        "zone",
        format!("unknown zone `{name}`; camera `{}` has: {known}", cx.camera),
    ))
}

pub(crate) fn check_labels(cx: &RuleContext<'_>, labels: &[String]) -> Result<(), FieldError> {
    if labels.is_empty() {
        return Err(FieldError::new(
            "labels",
            "`labels` must name at least one label, or the rule never fires",
        ));
    }
    if let Some(unknown) = labels.iter().find(|l| !cx.labels.contains(l)) {
        return Err(FieldError::new(
            "labels",
            format!("label `{unknown}` is not one model `{}` detects", cx.model),
        ));
    }
    if let Some(allowed) = cx.allowed
        && let Some(dropped) = labels.iter().find(|l| !allowed.contains(l))
    {
        return Err(FieldError::new(
            "labels",
            format!(
                "camera `{}` does not look for `{dropped}` (its owner's classes: {}): add it to \
                 `[detect.owner_classes]`, or the rule never fires",
                cx.camera,
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_category(category: &str) -> Result<(), FieldError> {
    skynet_core::validate_id("category", category).map_err(|m| FieldError::new("category", m))
}

pub(crate) fn check_weight(weight: f32) -> Result<(), FieldError> {
    // A weight of 0 would be evidence that never raises the risk: (0, 1], not [0, 1].
    let w = f64::from(weight);
    if check_range("weight", w, 0.0, 1.0).is_err() || w <= 0.0 {
        return Err(FieldError::new(
            "weight",
            format!("`weight` must be in (0, 1], got {weight}"),
        ));
    }
    Ok(())
}

/// A number of seconds in `[0, MAX_RULE_SECONDS]`.
pub(crate) fn check_seconds(field: &str, value: f64) -> Result<(), FieldError> {
    check_range(field, value, 0.0, MAX_RULE_SECONDS).map(|_| ()).map_err(|_| {
        FieldError::new(
            field,
            format!(
                "`{field}` must be zero or a positive number of seconds up to {MAX_RULE_SECONDS}, got {value}"
            ),
        )
    })
}

/// Seconds as a duration; values beyond chrono's range (only unvalidated ones) saturate.
pub(crate) fn duration(seconds: f64) -> chrono::Duration {
    chrono::Duration::try_milliseconds((seconds * 1000.0).round() as i64)
        .unwrap_or(chrono::Duration::MAX)
}

pub(crate) fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// What a rule remembers about each track, forgotten once the track has been gone a while
/// (the tracker never reuses an id during a run, so nothing else would clear it).
#[derive(Debug, Clone)]
pub(crate) struct PerTrack<T> {
    entries: HashMap<u64, (T, DateTime<Utc>)>,
}

impl<T> Default for PerTrack<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<T> PerTrack<T> {
    /// The entry of track `id`, made by `new` if none; marks it seen at `now`.
    pub(crate) fn seen(&mut self, id: u64, now: DateTime<Utc>, new: impl FnOnce() -> T) -> &mut T {
        let entry = self.entries.entry(id).or_insert_with(|| (new(), now));
        entry.1 = now;
        &mut entry.0
    }

    /// Marks track `id` seen at `now`, if the rule remembers it.
    pub(crate) fn touch(&mut self, id: u64, now: DateTime<Utc>) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.1 = now;
        }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.entries.get_mut(&id).map(|e| &mut e.0)
    }

    /// Forgets tracks not seen within `keep` before `now`.
    pub(crate) fn forget_older(&mut self, now: DateTime<Utc>, keep: chrono::Duration) {
        self.entries.retain(|_, (_, last)| now - *last <= keep);
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The `RuleRef` of a hit.
pub(crate) fn rule_ref(name: &str, kind: &str, zone: Option<&Zone>) -> RuleRef {
    RuleRef {
        name: name.to_string(),
        kind: kind.to_string(),
        zone: zone.map(|z| z.name.clone()),
    }
}
