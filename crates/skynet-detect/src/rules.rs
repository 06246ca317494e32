//! Rules turn what a camera sees into evidence ([`Observation`]s) for its grid cell.

use chrono::{DateTime, Utc};
use skynet_core::{
    AnalysedFrame, CameraId, Detection, GridId, Observation, OwnerKind, Point, RuleRef,
};

use crate::Zone;

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
}

impl ZoneIntrusionRule {
    pub const KIND: &'static str = "zone_intrusion";

    pub fn new(spec: ZoneIntrusionSpec) -> Self {
        Self {
            spec,
            streak: 0,
            last_hit: None,
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
        if intruders.is_empty() {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
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
    pub fn apply(&mut self, frame: &AnalysedFrame) -> Vec<Observation> {
        let mut observations = Vec::new();
        for rule in &mut self.rules {
            if let Some(hit) = rule.evaluate(frame) {
                metrics::counter!("skynet_observations_total", "camera" => self.camera.to_string(), "rule" => hit.rule.name.clone())
                    .increment(1);
                observations.push(Observation {
                    camera: self.camera.clone(),
                    grid: self.grid.clone(),
                    owner: self.owner,
                    category: hit.category,
                    rule: hit.rule,
                    at: frame.info.captured_at,
                    weight: hit.weight,
                    detections: hit.detections,
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
                width: 100,
                height: 100,
            },
            detections,
            inference: std::time::Duration::ZERO,
        }
    }

    fn person_at(x: f32, y: f32) -> Detection {
        Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(x - 5.0, y - 20.0, x + 5.0, y),
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
