//! Motion gating: a cheap motion detector decides which frames reach the (expensive) object
//! detector.
//!
//! Each frame is reduced to a small grayscale grid (about 80 cells wide, each cell the mean of
//! four samples), compared with a background model (a running average, so slow light changes
//! fade in), and a frame has motion when enough unmasked cells differ from it by more than
//! `threshold`. A frame passes when it has motion, when it is the camera's first, when objects
//! were in view at the last detection and `tracked_interval_s` has passed (so what is being
//! followed keeps being detected even when it stands still), or when `keepalive_s` has passed
//! (a static scene is still looked at now and then). Times are the frames' event times, so a
//! replayed file is gated the same way at any speed.

use chrono::{DateTime, Utc};
use geo::{Contains, LineString, Point as GeoPoint, Polygon};
use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{FieldError, FrameImage, PixelOrder};
// Shared with the detection stage, which sets it; defined in core so detect needs no ingest.
pub use skynet_core::ObjectsInView;

/// `motion = { ... }` in a `[[cameras]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionConfig {
    /// Gate frames on motion. Default true; false sends every frame to the detector.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Grey-level difference (1 to 255) from the background that counts as change. Default 25.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Fraction of the unmasked picture (0 to 1) that must change. Default 0.002.
    #[serde(default = "default_min_area")]
    pub min_area: f64,
    /// While objects are in view, a detection at least this often, in seconds. Default 1.
    #[serde(default = "default_tracked_interval")]
    pub tracked_interval_s: f64,
    /// A detection at least this often even in a static scene, in seconds. Default 10.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: f64,
    /// Areas whose motion is ignored (swaying trees, an on-screen clock): polygons of `[x, y]`
    /// fractions of the frame, origin top-left.
    #[serde(default)]
    pub masks: Vec<Vec<[f64; 2]>>,
}

fn default_enabled() -> bool {
    true
}
fn default_threshold() -> f64 {
    25.0
}
fn default_min_area() -> f64 {
    0.002
}
fn default_tracked_interval() -> f64 {
    1.0
}
fn default_keepalive() -> f64 {
    10.0
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            threshold: default_threshold(),
            min_area: default_min_area(),
            tracked_interval_s: default_tracked_interval(),
            keepalive_s: default_keepalive(),
            masks: Vec::new(),
        }
    }
}

impl MotionConfig {
    /// Off: every frame goes to the detector.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Range checks; errors name the key under `motion`.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_range("motion.threshold", self.threshold, 1.0, 255.0)?;
        check_range("motion.min_area", self.min_area, 0.0, 1.0)?;
        check_range(
            "motion.tracked_interval_s",
            self.tracked_interval_s,
            0.0,
            3600.0,
        )?;
        check_range("motion.keepalive_s", self.keepalive_s, 0.1, 86_400.0)?;
        skynet_core::check_frame_polygons("motion.masks", "motion mask", &self.masks)
    }
}

/// Cells across the motion grid.
const GRID_WIDTH: u32 = 80;
/// How fast the background follows the picture, per frame.
const LEARNING_RATE: f32 = 0.05;

/// Why a frame went to the detector, or did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Motion,
    /// The first frame, a new frame size, or after a gap in time.
    Fresh,
    Tracked,
    Keepalive,
    Static,
    /// Gating is off.
    Off,
}

impl GateDecision {
    pub fn passes(self) -> bool {
        self != Self::Static
    }
}

/// One camera's motion gate.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionConfig,
    objects: ObjectsInView,
    /// Grid size and, per cell, whether a mask covers it.
    grid: Option<(u32, u32, Vec<bool>)>,
    background: Vec<f32>,
    current: Vec<f32>,
    last_passed: Option<DateTime<Utc>>,
    masks: Vec<Polygon<f64>>,
}

impl MotionGate {
    pub fn new(config: MotionConfig, objects: ObjectsInView) -> Self {
        let masks = config
            .masks
            .iter()
            .map(|points| {
                Polygon::new(
                    LineString::from(points.iter().map(|[x, y]| (*x, *y)).collect::<Vec<_>>()),
                    Vec::new(),
                )
            })
            .collect();
        Self {
            config,
            objects,
            grid: None,
            background: Vec::new(),
            current: Vec::new(),
            last_passed: None,
            masks,
        }
    }

    /// Decides for one frame, and learns it into the background.
    pub fn decide(&mut self, image: &FrameImage, at: DateTime<Utc>) -> GateDecision {
        if !self.config.enabled {
            return GateDecision::Off;
        }
        let fresh = self.sample(image);
        let since_pass = self
            .last_passed
            .map(|t| at.signed_duration_since(t).num_milliseconds() as f64 / 1000.0);
        let decision = match since_pass {
            _ if fresh => GateDecision::Fresh,
            None => GateDecision::Fresh,
            // Time went backwards (a restarted live stream): look again.
            Some(s) if s < 0.0 => GateDecision::Fresh,
            Some(_) if self.has_motion() => GateDecision::Motion,
            Some(s) if self.objects.get() && s >= self.config.tracked_interval_s => {
                GateDecision::Tracked
            }
            Some(s) if s >= self.config.keepalive_s => GateDecision::Keepalive,
            Some(_) => GateDecision::Static,
        };
        self.learn();
        if decision.passes() {
            self.last_passed = Some(at);
        }
        decision
    }

    /// Fills `current` with the frame's grey grid; true when the grid was (re)built.
    fn sample(&mut self, image: &FrameImage) -> bool {
        let (w, h) = (image.width.max(1), image.height.max(1));
        let gw = GRID_WIDTH.min(w);
        let gh = ((u64::from(h) * u64::from(gw)) / u64::from(w)).clamp(1, u64::from(h)) as u32;
        let rebuilt = !matches!(&self.grid, Some((x, y, _)) if (*x, *y) == (gw, gh));
        if rebuilt {
            let masked = (0..gh)
                .flat_map(|gy| (0..gw).map(move |gx| (gx, gy)))
                .map(|(gx, gy)| {
                    let centre = GeoPoint::new(
                        (f64::from(gx) + 0.5) / f64::from(gw),
                        (f64::from(gy) + 0.5) / f64::from(gh),
                    );
                    self.masks.iter().any(|m| m.contains(&centre))
                })
                .collect();
            self.grid = Some((gw, gh, masked));
        }
        let (green, blue_or_red) = match image.order {
            PixelOrder::Bgr | PixelOrder::Rgb => (1usize, [0usize, 2]),
        };
        let data: &[u8] = &image.data;
        let grey = |x: u32, y: u32| -> f32 {
            let at = y as usize * image.stride + x as usize * 3;
            match data.get(at..at + 3) {
                // (R + 2G + B) / 4: close enough to luma, and the same for BGR and RGB.
                Some(p) => {
                    (f32::from(p[blue_or_red[0]])
                        + 2.0 * f32::from(p[green])
                        + f32::from(p[blue_or_red[1]]))
                        / 4.0
                }
                None => 0.0,
            }
        };
        self.current.clear();
        for gy in 0..gh {
            // Two sample rows and columns per cell, a quarter and three quarters across it.
            let y0 = ((4 * gy + 1) * h / (4 * gh)).min(h - 1);
            let y1 = ((4 * gy + 3) * h / (4 * gh)).min(h - 1);
            for gx in 0..gw {
                let x0 = ((4 * gx + 1) * w / (4 * gw)).min(w - 1);
                let x1 = ((4 * gx + 3) * w / (4 * gw)).min(w - 1);
                self.current
                    .push((grey(x0, y0) + grey(x1, y0) + grey(x0, y1) + grey(x1, y1)) / 4.0);
            }
        }
        if rebuilt {
            self.background.clone_from(&self.current);
        }
        rebuilt
    }

    fn has_motion(&self) -> bool {
        let Some((_, _, masked)) = &self.grid else {
            return true;
        };
        let threshold = self.config.threshold as f32;
        let (mut open, mut changed) = (0usize, 0usize);
        for ((now, bg), masked) in self.current.iter().zip(&self.background).zip(masked) {
            if *masked {
                continue;
            }
            open += 1;
            if (now - bg).abs() > threshold {
                changed += 1;
            }
        }
        // At least one cell, so a tiny `min_area` still needs real change.
        let needed = ((open as f64 * self.config.min_area).ceil() as usize).max(1);
        open > 0 && changed >= needed
    }

    fn learn(&mut self) {
        for (bg, now) in self.background.iter_mut().zip(&self.current) {
            *bg += LEARNING_RATE * (now - *bg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, paint: impl Fn(u32, u32) -> u8) -> FrameImage {
        let mut data = vec![0u8; (width * height * 3) as usize];
        for y in 0..height {
            for x in 0..width {
                let v = paint(x, y);
                let at = ((y * width + x) * 3) as usize;
                data[at..at + 3].copy_from_slice(&[v, v, v]);
            }
        }
        FrameImage {
            width,
            height,
            stride: width as usize * 3,
            order: PixelOrder::Bgr,
            data: data.into(),
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    /// A grey scene with a bright 40x40 square whose left edge is at `x`.
    fn scene(x: u32) -> FrameImage {
        image(320, 240, |px, py| {
            if (x..x + 40).contains(&px) && (100..140).contains(&py) {
                250
            } else {
                90
            }
        })
    }

    #[test]
    fn a_static_scene_passes_only_keepalives_and_motion_passes() {
        let mut gate = MotionGate::new(MotionConfig::default(), ObjectsInView::default());
        assert_eq!(gate.decide(&scene(10), at(0)), GateDecision::Fresh);
        let mut passed = 0;
        for n in 1..=200 {
            if gate.decide(&scene(10), at(n * 100)).passes() {
                passed += 1;
            }
        }
        // 20 s of a still picture: two keepalives (every 10 s).
        assert_eq!(passed, 2);
        assert_eq!(gate.decide(&scene(60), at(20_150)), GateDecision::Motion);
    }

    #[test]
    fn objects_in_view_are_looked_at_every_tracked_interval() {
        let objects = ObjectsInView::default();
        let mut gate = MotionGate::new(MotionConfig::default(), objects.clone());
        gate.decide(&scene(10), at(0));
        objects.set(true);
        let passed: Vec<i64> = (1..=30)
            .map(|n| n * 100)
            .filter(|t| gate.decide(&scene(10), at(*t)).passes())
            .collect();
        assert_eq!(passed, vec![1000, 2000, 3000]);
    }

    #[test]
    fn masked_motion_is_ignored_and_gating_can_be_off() {
        let config = MotionConfig {
            masks: vec![vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]],
            ..MotionConfig::default()
        };
        let mut gate = MotionGate::new(config, ObjectsInView::default());
        gate.decide(&scene(10), at(0));
        // The square moves within the left half: masked.
        assert_eq!(gate.decide(&scene(80), at(100)), GateDecision::Static);
        // Into the right half: seen.
        assert_eq!(gate.decide(&scene(250), at(200)), GateDecision::Motion);

        let mut off = MotionGate::new(MotionConfig::disabled(), ObjectsInView::default());
        assert!(off.decide(&scene(10), at(0)).passes());
        assert!(off.decide(&scene(10), at(100)).passes());
    }

    #[test]
    fn slow_light_changes_fade_into_the_background() {
        let mut gate = MotionGate::new(MotionConfig::default(), ObjectsInView::default());
        gate.decide(&image(160, 120, |_, _| 100), at(0));
        let moved = (1..=100)
            .filter(|n| {
                let level = 100 + (*n as u8) / 4;
                gate.decide(&image(160, 120, |_, _| level), at(i64::from(*n) * 50))
                    == GateDecision::Motion
            })
            .count();
        assert_eq!(moved, 0);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = |c: MotionConfig| c.validate().unwrap_err().field;
        assert_eq!(
            bad(MotionConfig {
                threshold: 0.0,
                ..MotionConfig::default()
            }),
            "motion.threshold"
        );
        assert_eq!(
            bad(MotionConfig {
                masks: vec![vec![[0.0, 0.0], [1.0, 1.0]]],
                ..MotionConfig::default()
            }),
            "motion.masks"
        );
        assert_eq!(
            bad(MotionConfig {
                masks: vec![vec![[0.0, 0.0], [1.5, 0.0], [1.0, 1.0]]],
                ..MotionConfig::default()
            }),
            "motion.masks"
        );
    }
}
