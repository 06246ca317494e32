//! Boxes and points in image pixels.

use serde::{Deserialize, Serialize};

use crate::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// An axis-aligned box, corners `(x1, y1)` top-left and `(x2, y2)` bottom-right, in pixels.
/// Serialised as `[x1, y1, x2, y2]`, the form the CLI and incidents use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    pub fn intersection(&self, other: &BBox) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        w * h
    }

    /// Intersection over union; 0 for disjoint or empty boxes.
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Where a standing object touches the ground: the point zones are tested with.
    pub fn bottom_center(&self) -> Point {
        Point {
            x: (self.x1 + self.x2) / 2.0,
            y: self.y2,
        }
    }

    /// The box with x multiplied by `sx` and y by `sy`: from one image size to another.
    pub fn scaled(&self, sx: f32, sy: f32) -> BBox {
        BBox::new(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)
    }

    pub fn clamp_to(&self, width: f32, height: f32) -> BBox {
        BBox {
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
            x2: self.x2.clamp(0.0, width),
            y2: self.y2.clamp(0.0, height),
        }
    }
}

impl Serialize for BBox {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Two decimals: sub-pixel noise helps nobody reading an incident.
        let r = |v: f32| (f64::from(v) * 100.0).round() / 100.0;
        [r(self.x1), r(self.y1), r(self.x2), r(self.y2)].serialize(s)
    }
}

impl<'de> Deserialize<'de> for BBox {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let [x1, y1, x2, y2] = <[f32; 4]>::deserialize(d)?;
        Ok(BBox { x1, y1, x2, y2 })
    }
}

/// Why a polygon in frame coordinates (`[x, y]` fractions of the frame, origin top-left) is
/// refused. Zones, motion masks and privacy masks are all checked by [`check_frame_polygon`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FramePolygonError {
    #[error("a polygon needs at least 3 points, got {0}")]
    TooFewPoints(usize),
    #[error(
        "point {index} ({x}, {y}) is outside the frame: coordinates are fractions of the image, from 0 to 1"
    )]
    OutOfRange { index: usize, x: f64, y: f64 },
}

/// At least 3 points, each within the frame (`[0, 1]` on both axes; NaN is outside).
pub fn check_frame_polygon(points: &[[f64; 2]]) -> Result<(), FramePolygonError> {
    if points.len() < 3 {
        return Err(FramePolygonError::TooFewPoints(points.len()));
    }
    for (index, &[x, y]) in points.iter().enumerate() {
        // `contains` is false for NaN, so NaN is rejected here too.
        if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
            return Err(FramePolygonError::OutOfRange { index, x, y });
        }
    }
    Ok(())
}

/// A list of masks (`motion.masks`, `privacy_masks`) checked with [`check_frame_polygon`];
/// the error names `field` and the mask (`privacy mask 2: ...`, counted from 1).
pub fn check_frame_polygons(
    field: &str,
    what: &str,
    polygons: &[Vec<[f64; 2]>],
) -> Result<(), FieldError> {
    for (n, points) in polygons.iter().enumerate() {
        check_frame_polygon(points)
            .map_err(|e| FieldError::new(field, format!("{what} {}: {e}", n + 1)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_polygons_need_three_points_inside_the_frame() {
        assert!(check_frame_polygon(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]).is_ok());
        assert_eq!(
            check_frame_polygon(&[[0.0, 0.0], [1.0, 1.0]]),
            Err(FramePolygonError::TooFewPoints(2))
        );
        assert!(matches!(
            check_frame_polygon(&[[0.0, 0.0], [f64::NAN, 0.0], [1.0, 1.0]]),
            Err(FramePolygonError::OutOfRange { index: 1, .. })
        ));
        let e = check_frame_polygons(
            "privacy_masks",
            "privacy mask",
            &[
                vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]],
                vec![[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]],
            ],
        )
        .unwrap_err();
        assert_eq!(e.field, "privacy_masks");
        assert!(
            e.message.starts_with("privacy mask 2: point 1 (2, 0)"),
            "{e}"
        );
    }

    #[test]
    fn iou_of_identical_boxes_is_one_and_of_disjoint_is_zero() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        assert_eq!(a.iou(&BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        let half = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&half) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn box_serialises_as_rounded_array() {
        let b = BBox::new(1.234, 2.0, 3.456, 4.0);
        assert_eq!(serde_json::to_string(&b).unwrap(), "[1.23,2.0,3.46,4.0]");
    }
}
