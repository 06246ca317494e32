//! The `yolox` family: one row per anchor over the stride grids, in order, each
//! `cx, cy, w, h` (grid-relative, log sizes), objectness, then one score per class. Both
//! scores are already probabilities in this export. Output `[N, anchors, 5 + classes]`.

use skynet_core::Detection;

use crate::decode::{Candidates, DecodeParams, MAX_LOG_SIZE};
use crate::manifest::ModelManifest;
use crate::model_family::{Decode, ModelFamily, agrees};
use crate::preprocess::LetterboxGeometry;
use std::sync::Arc;

/// Anchor-grid offsets and strides, computed once per model.
#[derive(Debug, Clone)]
pub struct YoloxDecoder {
    grid: Vec<(f32, f32, f32)>,
    columns: usize,
    input_size: (u32, u32),
}

/// The anchor grid of a model: (x, y, stride) per anchor, strides in order.
pub(crate) fn anchor_grid(
    input_width: u32,
    input_height: u32,
    strides: &[u32],
) -> Vec<(f32, f32, f32)> {
    let mut grid = Vec::new();
    for &stride in strides.iter().filter(|s| **s > 0) {
        let (gw, gh) = (input_width / stride, input_height / stride);
        for gy in 0..gh {
            for gx in 0..gw {
                grid.push((gx as f32, gy as f32, stride as f32));
            }
        }
    }
    grid
}

impl YoloxDecoder {
    pub fn new(input_width: u32, input_height: u32, strides: &[u32], classes: usize) -> Self {
        Self {
            grid: anchor_grid(input_width, input_height, strides),
            columns: 5 + classes,
            input_size: (input_width, input_height),
        }
    }

    pub fn anchors(&self) -> usize {
        self.grid.len()
    }

    /// Values per anchor: box (4), objectness, class scores.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Decodes one image's `output` into detections in source-image pixels.
    pub fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        let mut candidates = Candidates::new(params.threshold, self.input_size);
        let threshold = candidates.threshold();
        if output.len() == self.anchors() * self.columns {
            for (row, &(gx, gy, stride)) in output.chunks_exact(self.columns).zip(&self.grid) {
                let objectness = row[4];
                // score = objectness * class score <= objectness for probabilities; a NaN
                // objectness fails the comparison and skips the row too.
                let may_pass = objectness >= threshold;
                if !may_pass {
                    continue;
                }
                let (class, class_score) = best_class(&row[5..]);
                let score = objectness * class_score;
                let w = row[2].min(MAX_LOG_SIZE).exp() * stride;
                let h = row[3].min(MAX_LOG_SIZE).exp() * stride;
                candidates.push_centre(
                    class,
                    score,
                    (row[0] + gx) * stride,
                    (row[1] + gy) * stride,
                    w,
                    h,
                );
            }
        }
        candidates.finish(params, labels, geometry, source_size)
    }
}

/// The class with the highest score; NaN scores never win.
pub(crate) fn best_class(scores: &[f32]) -> (usize, f32) {
    scores
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NAN), |best, (i, s)| {
            if s > best.1 || (best.1.is_nan() && !s.is_nan()) {
                (i, s)
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;

    fn geometry() -> LetterboxGeometry {
        LetterboxGeometry {
            scale: 0.5,
            resized_width: 32,
            resized_height: 32,
        }
    }

    #[test]
    fn decodes_one_anchor_into_source_pixels() {
        // 64x64 input, one stride of 32: a 2x2 grid, two classes.
        let decoder = YoloxDecoder::new(64, 64, &[32], 2);
        let mut out = vec![0.0f32; 4 * 7];
        // Anchor (1, 0): centre (1.5*32, 0.5*32) = (48, 16), size exp(0)*32 = 32.
        out[7..14].copy_from_slice(&[0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.8]);
        let labels = vec!["a".to_string(), "b".to_string()];
        let d = decoder.decode(
            &out,
            &labels,
            &DecodeParams::default(),
            geometry(),
            (1000, 1000),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "b");
        assert!((d[0].score - 0.72).abs() < 1e-6);
        assert_eq!(d[0].bbox, BBox::new(64.0, 0.0, 128.0, 64.0));
    }

    #[test]
    fn nan_inf_and_huge_outputs_give_no_box_and_no_panic() {
        let decoder = YoloxDecoder::new(64, 64, &[32], 2);
        let labels = vec!["a".to_string(), "b".to_string()];
        for v in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
        ] {
            for column in 0..7 {
                let mut row = [0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.8];
                row[column] = v;
                let out = row.repeat(4);
                let d = decoder.decode(
                    &out,
                    &labels,
                    &DecodeParams::default(),
                    geometry(),
                    (1000, 1000),
                );
                for det in &d {
                    assert!(
                        det.score.is_finite() && det.bbox.area() > 0.0,
                        "{v} in column {column}: {det:?}"
                    );
                    assert!(
                        [det.bbox.x1, det.bbox.y1, det.bbox.x2, det.bbox.y2]
                            .iter()
                            .all(|c| c.is_finite())
                    );
                }
                // A bad value in the box or objectness removes the box.
                if column < 5 {
                    assert!(d.is_empty(), "{v} in column {column}: {d:?}");
                }
            }
        }
        // Wrong lengths give nothing.
        assert!(
            decoder
                .decode(
                    &[0.9; 5],
                    &labels,
                    &DecodeParams::default(),
                    geometry(),
                    (10, 10)
                )
                .is_empty()
        );
    }

    #[test]
    fn best_class_ignores_nan() {
        assert_eq!(best_class(&[f32::NAN, 0.2, 0.1]), (1, 0.2));
        assert!(best_class(&[f32::NAN]).1.is_nan());
    }
}

crate::model_family::family_without_keys!(YoloxFamily, "yolox");

/// Strides are what give a grid family its number of anchors.
pub(crate) fn needs_strides(family: &str, manifest: &ModelManifest) -> Result<(), String> {
    if manifest.output.strides.is_empty() {
        return Err(format!(
            "family `{family}` needs `output.strides` (they give the number of anchors)"
        ));
    }
    Ok(())
}

impl ModelFamily for YoloxFamily {
    fn name(&self) -> &'static str {
        "yolox"
    }

    fn check_manifest(&self, manifest: &ModelManifest) -> Result<(), String> {
        needs_strides(self.name(), manifest)
    }

    fn output_columns(&self, manifest: &ModelManifest) -> usize {
        5 + manifest.labels.len()
    }

    fn check_output(&self, manifest: &ModelManifest, shape: &[i64]) -> Result<(), String> {
        let classes = manifest.labels.len();
        let anchors = manifest.anchors();
        let (w, h) = (manifest.input.width, manifest.input.height);
        let strides = &manifest.output.strides;
        if shape.len() == 3 && agrees(shape[1], anchors) && agrees(shape[2], 5 + classes) {
            return Ok(());
        }
        Err(format!(
            "[N, {anchors}, {}] ({classes} labels + 5; anchors from strides {strides:?} at {w}x{h})",
            5 + classes
        ))
    }

    fn decoder(&self, manifest: &ModelManifest) -> Arc<dyn Decode> {
        let input = &manifest.input;
        Arc::new(YoloxDecoder::new(
            input.width,
            input.height,
            &manifest.output.strides,
            manifest.labels.len(),
        ))
    }
}

impl Decode for YoloxDecoder {
    fn values_per_image(&self) -> Option<usize> {
        Some(self.anchors() * self.columns())
    }

    fn row_len(&self) -> usize {
        self.columns()
    }

    fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        YoloxDecoder::decode(self, output, labels, params, geometry, source_size)
    }
}
