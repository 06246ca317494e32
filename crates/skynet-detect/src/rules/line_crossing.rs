//! `line_crossing`: an object crosses a directed line segment, counted per direction.
//!
//! The line runs from `(x1, y1)` to `(x2, y2)` in frame fractions, y pointing down as in
//! the image. Stand on the image at `(x1, y1)` facing `(x2, y2)`: what is on your right hand
//! is the line's right. Formally a point `p` is on the right when
//! `(x2 - x1) * (p.y - y1) - (y2 - y1) * (p.x - x1) > 0` (the cross product, positive clockwise
//! on a y-down screen). `in` is a crossing from the right to the left, `out` from the left to
//! the right. So for a horizontal line drawn left to right (`[[0, 0.5], [1, 0.5]]`) the right
//! is below it and `in` means moving up the image; drawn right to left, `in` means moving down.

use metrics::counter;
use skynet_core::Component;
use skynet_core::{AnalysedFrame, FieldError, Point};

use super::{
    BuildRule, CameraRuleFamily, MAX_STREAK_GAP, PerTrack, Rule, RuleBuildContext, RuleContext,
    RuleHit, ValidRule, check_category, check_labels, check_name, check_weight,
    dwell::default_person, position, rule_ref, tracks_with,
};

/// Which crossings a `line_crossing` rule reports (all are counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossingDirection {
    /// From the line's right to its left.
    In,
    /// From the line's left to its right.
    Out,
    #[default]
    Both,
}

impl CrossingDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
            Self::Both => "both",
        }
    }
}

/// The settings of a `line_crossing` rule.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineCrossingConfig {
    pub name: String,
    /// `[[x1, y1], [x2, y2]]`, fractions of the frame; the direction matters (see the module).
    pub line: [[f64; 2]; 2],
    #[serde(default = "default_person")]
    pub labels: Vec<String>,
    /// Which crossings become observations: `in`, `out` or `both`.
    #[serde(default)]
    pub direction: CrossingDirection,
    /// How far (a fraction of the frame, perpendicular to the line) an object must be past
    /// the line for its side to count: jitter within this band of the line crosses nothing.
    #[serde(default = "LineCrossingConfig::default_dead_band")]
    pub dead_band: f64,
    #[serde(default = "LineCrossingConfig::default_category")]
    pub category: String,
    #[serde(default = "LineCrossingConfig::default_weight")]
    pub weight: f32,
}

impl LineCrossingConfig {
    fn default_dead_band() -> f64 {
        0.01
    }
    fn default_category() -> String {
        "line_crossing".into()
    }
    fn default_weight() -> f32 {
        0.5
    }
}

impl Component<CameraRuleFamily> for LineCrossingConfig {
    const KIND: &'static str = LineCrossingRule::KIND;
    const EXAMPLE: &'static str = "name = \"gate\"\nline = [[0.5, 0.0], [0.5, 1.0]]";
    type Validated = ValidRule<Self>;

    fn validate(self, cx: &RuleContext<'_>) -> Result<ValidRule<Self>, FieldError> {
        check_name(&self.name)?;
        for (i, &[x, y]) in self.line.iter().enumerate() {
            if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
                return Err(FieldError::new(
                    "line",
                    format!(
                        "point {} ({x}, {y}) is outside the frame: coordinates are fractions of the image, from 0 to 1",
                        i + 1
                    ),
                ));
            }
        }
        let [[x1, y1], [x2, y2]] = self.line;
        if (x2 - x1).hypot(y2 - y1) < 1e-3 {
            return Err(FieldError::new(
                "line",
                "the line's two points are the same: it needs a length and a direction",
            ));
        }
        check_labels(cx, &self.labels)?;
        skynet_core::config::check_range("dead_band", self.dead_band, 0.0, 0.5)?;
        check_category(&self.category)?;
        check_weight(self.weight)?;
        Ok(ValidRule::new(self, None))
    }
}

impl BuildRule for ValidRule<LineCrossingConfig> {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn build(&self, _cx: &RuleBuildContext<'_>) -> Box<dyn Rule> {
        Box::new(LineCrossingRule::new(self.config.clone()))
    }
}

/// Where a track last stood clearly on one side of the line.
#[derive(Debug, Clone, Copy)]
struct Side {
    /// +1: right, -1: left.
    sign: i8,
    at: Point,
}

/// Counts every crossing of the segment by a track (once per crossing: the side changes only
/// past the dead band, so jitter on the line is not counted) in
/// `skynet_line_crossings_total{camera,rule,direction}`, and reports those of its `direction`.
#[derive(Debug)]
pub struct LineCrossingRule {
    config: LineCrossingConfig,
    a: Point,
    b: Point,
    length: f32,
    sides: PerTrack<Side>,
}

impl LineCrossingRule {
    pub const KIND: &'static str = "line_crossing";

    pub fn new(config: LineCrossingConfig) -> Self {
        let [[x1, y1], [x2, y2]] = config.line;
        let (a, b) = (
            Point {
                x: x1 as f32,
                y: y1 as f32,
            },
            Point {
                x: x2 as f32,
                y: y2 as f32,
            },
        );
        Self {
            length: (b.x - a.x).hypot(b.y - a.y).max(f32::EPSILON),
            a,
            b,
            config,
            sides: PerTrack::default(),
        }
    }

    /// Signed distance from the line, positive on its right (y down).
    fn offset(&self, p: Point) -> f32 {
        let (a, b) = (self.a, self.b);
        ((b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x)) / self.length
    }

    /// Whether the move from `from` to `to` (on opposite sides) passes through the segment,
    /// not the line's extension.
    fn through_segment(&self, from: Point, to: Point) -> bool {
        let (d0, d1) = (self.offset(from), self.offset(to));
        let denominator = d0 - d1;
        if denominator == 0.0 {
            return false;
        }
        let k = d0 / denominator;
        let x = Point {
            x: from.x + (to.x - from.x) * k,
            y: from.y + (to.y - from.y) * k,
        };
        let (a, b) = (self.a, self.b);
        let along =
            ((x.x - a.x) * (b.x - a.x) + (x.y - a.y) * (b.y - a.y)) / (self.length * self.length);
        (0.0..=1.0).contains(&along)
    }
}

impl Rule for LineCrossingRule {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn evaluate(&mut self, frame: &AnalysedFrame) -> Vec<RuleHit> {
        let now = frame.info.captured_at;
        let band = self.config.dead_band as f32;
        let mut hits = Vec::new();
        for t in tracks_with(frame, &self.config.labels) {
            if !t.detected {
                // A predicted position only (the detector skipped this frame, or missed the
                // object): momentum could carry it over a line the object stopped short of.
                // Sides are decided on detected positions alone.
                self.sides.touch(t.id, now);
                continue;
            }
            let p = position(frame, &t.bbox);
            let offset = self.offset(p);
            if offset.abs() <= band || !offset.is_finite() {
                // On the line: keep the track's memory alive, decide nothing.
                self.sides.touch(t.id, now);
                continue;
            }
            let sign: i8 = if offset > 0.0 { 1 } else { -1 };
            let here = Side { sign, at: p };
            let before = self.sides.get_mut(t.id).map(|s| *s);
            *self.sides.seen(t.id, now, || here) = here;
            let Some(before) = before else { continue };
            if before.sign == sign || !self.through_segment(before.at, p) {
                continue;
            }
            let direction = if before.sign > 0 {
                CrossingDirection::In
            } else {
                CrossingDirection::Out
            };
            counter!(
                "skynet_line_crossings_total",
                "camera" => frame.info.camera.to_string(),
                "rule" => self.config.name.clone(),
                "direction" => direction.as_str()
            )
            .increment(1);
            if self.config.direction != CrossingDirection::Both
                && self.config.direction != direction
            {
                continue;
            }
            let mut extra = serde_json::Map::new();
            extra.insert("direction".into(), direction.as_str().into());
            hits.push(RuleHit {
                rule: rule_ref(&self.config.name, Self::KIND, None),
                category: self.config.category.clone(),
                weight: self.config.weight,
                detections: vec![t.as_detection()],
                extra,
            });
        }
        // A track gone this long is gone for good (the tracker drops lost tracks sooner).
        self.sides.forget_older(now, MAX_STREAK_GAP);
        hits
    }
}
