//! Inferring less: run the detector on every N-th frame of a camera and let the tracker carry
//! its objects in between (DL Streamer's `inference-interval`), with N adapting to how much
//! moves.
//!
//! After each detection the new boxes are compared with the last two detections': an object
//! that appeared (or the last object gone) shortens the interval to 1, so the next frame is
//! detected and the tracker confirms it; an object that moved by more than a share of its
//! size halves the interval; a scene whose objects barely moved lengthens it by one, up to
//! `max`. A scene empty at two detections in a row runs at `max`: the motion gate in front
//! of the detector already keeps still frames away, and anything new is seen at most
//! `max - 1` frames late.
//!
//! `inference_interval = { max = 3 }` in a `[[cameras]]` table; the default, `max = 1`,
//! detects every frame.

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{Detection, FieldError};

/// `inference_interval = { ... }` in a `[[cameras]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalConfig {
    /// The most frames between detections (1: every frame). Default 1.
    #[serde(default = "default_max")]
    pub max: u32,
    /// Adapt the interval to motion; false detects every `max`-th frame. Default true.
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
    /// An object whose box overlaps its previous position by less than this IoU counts as
    /// moving (0 to 1). Default 0.6.
    #[serde(default = "default_still_iou")]
    pub still_iou: f64,
}

const fn default_max() -> u32 {
    1
}
const fn default_adaptive() -> bool {
    true
}
const fn default_still_iou() -> f64 {
    0.6
}

impl Default for IntervalConfig {
    fn default() -> Self {
        Self {
            max: default_max(),
            adaptive: default_adaptive(),
            still_iou: default_still_iou(),
        }
    }
}

impl IntervalConfig {
    /// The longest interval: beyond a second or so at common frame rates, the tracker's
    /// predictions drift and objects are lost.
    pub const MAX_INTERVAL: u32 = 30;

    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=Self::MAX_INTERVAL).contains(&self.max) {
            return Err(FieldError::new(
                "inference_interval.max",
                format!(
                    "`inference_interval.max` must be between 1 (every frame) and {}, got {}",
                    Self::MAX_INTERVAL,
                    self.max
                ),
            ));
        }
        check_range("inference_interval.still_iou", self.still_iou, 0.0, 1.0)?;
        Ok(())
    }
}

/// One camera's interval state: which of its frames go to the detector.
#[derive(Debug)]
pub struct InferenceInterval {
    config: IntervalConfig,
    /// The interval now in effect, 1 to `max`.
    current: u32,
    /// Frames since the last one sent to the detector; `None` before the first.
    since_inferred: Option<u32>,
    /// What the last detection found, to compare the next one with.
    previous: Vec<Detection>,
    /// What the detection before it found: an object missed once and found again is not new.
    earlier: Vec<Detection>,
}

/// Below this IoU with every box of its label at the last two detections, an object is new.
const NEW_OBJECT_IOU: f32 = 0.1;

impl InferenceInterval {
    pub fn new(config: IntervalConfig) -> Self {
        // A fixed interval starts at its length; an adaptive one earns it.
        let current = if config.adaptive { 1 } else { config.max };
        Self {
            config,
            current,
            since_inferred: None,
            previous: Vec::new(),
            earlier: Vec::new(),
        }
    }

    /// Whether the detector runs on the next frame. Called once per frame, in order.
    pub fn infer_now(&mut self) -> bool {
        let due = match self.since_inferred {
            None => true,
            Some(n) => n + 1 >= self.current,
        };
        self.since_inferred = Some(if due {
            0
        } else {
            self.since_inferred.unwrap_or(0) + 1
        });
        due
    }

    /// The interval now in effect (frames per detection).
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Learns from what the detector found in the latest detected frame.
    pub fn observe(&mut self, detections: &[Detection]) {
        if !self.config.adaptive {
            return;
        }
        let still_iou = self.config.still_iou as f32;
        // Each object's overlap with where it was (the best box of its label at the last
        // two detections).
        let overlaps: Vec<f32> = detections
            .iter()
            .map(|d| {
                self.previous
                    .iter()
                    .chain(&self.earlier)
                    .filter(|p| p.label == d.label)
                    .map(|p| p.bbox.iou(&d.bbox))
                    .fold(0.0f32, f32::max)
            })
            .collect();
        let appeared = overlaps.iter().any(|&o| o < NEW_OBJECT_IOU);
        let moved = overlaps.iter().any(|&o| o < still_iou);
        self.current = if detections.is_empty() && self.previous.is_empty() {
            // Nothing twice in a row: an empty scene, watched at the longest interval.
            self.config.max
        } else if appeared || detections.is_empty() {
            // Something new (the tracker confirms it over the next frames), or the last
            // object gone (maybe a single missed detection; the next frame tells).
            1
        } else if moved {
            // Movement the tracker follows, but with less margin: halve the interval.
            (self.current / 2).max(1)
        } else {
            (self.current + 1).min(self.config.max)
        };
        self.earlier = std::mem::replace(&mut self.previous, detections.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;

    fn person(x: f32) -> Detection {
        Detection::new("person", 0.9, BBox::new(x, 0.0, x + 10.0, 30.0))
    }

    fn config(max: u32, adaptive: bool) -> IntervalConfig {
        IntervalConfig {
            max,
            adaptive,
            ..IntervalConfig::default()
        }
    }

    #[test]
    fn the_default_detects_every_frame() {
        let mut i = InferenceInterval::new(IntervalConfig::default());
        for _ in 0..10 {
            assert!(i.infer_now());
            i.observe(&[person(0.0)]);
        }
    }

    #[test]
    fn a_fixed_interval_detects_every_nth_frame() {
        let mut i = InferenceInterval::new(config(3, false));
        let pattern: Vec<bool> = (0..7).map(|_| i.infer_now()).collect();
        assert_eq!(pattern, vec![true, false, false, true, false, false, true]);
    }

    #[test]
    fn the_interval_grows_while_still_and_drops_to_one_on_movement() {
        let mut i = InferenceInterval::new(config(4, true));
        let mut detected_at = Vec::new();
        let mut x = 0.0;
        for frame in 0..30 {
            // Still for 20 frames, then walking fast.
            if frame >= 20 {
                x += 8.0;
            }
            if i.infer_now() {
                detected_at.push(frame);
                i.observe(&[person(x)]);
            }
        }
        // 1, 2, 3, 4, 4, ... while still; every frame once it moves.
        assert_eq!(&detected_at[..6], &[0, 1, 3, 6, 10, 14]);
        // The first detection after it starts (frame 22) sees it moved.
        assert!(detected_at.ends_with(&[18, 22, 23, 24, 25, 26, 27, 28, 29]));
    }

    #[test]
    fn a_new_object_shortens_the_interval_and_an_empty_scene_lengthens_it() {
        let mut i = InferenceInterval::new(config(5, true));
        assert!(i.infer_now());
        i.observe(&[]);
        assert_eq!(i.current(), 5);
        // The last object gone: maybe one missed detection, so look again at once; only a
        // second empty detection makes it an empty scene.
        let mut gone = InferenceInterval::new(config(5, true));
        gone.observe(&[person(0.0)]);
        gone.observe(&[person(0.0)]);
        assert_eq!(gone.current(), 2);
        gone.observe(&[]);
        assert_eq!(gone.current(), 1);
        gone.observe(&[]);
        assert_eq!(gone.current(), 5);
        assert!(i.infer_now() || i.infer_now() || i.infer_now() || i.infer_now() || i.infer_now());
        i.observe(&[person(0.0)]);
        assert_eq!(i.current(), 1);
        assert!(i.infer_now());
    }

    #[test]
    fn limits_are_checked() {
        assert!(config(0, true).validate().is_err());
        assert!(config(31, true).validate().is_err());
        assert!(config(30, true).validate().is_ok());
        let err = IntervalConfig {
            still_iou: 2.0,
            ..IntervalConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "inference_interval.still_iou");
    }
}
