//! The `yolov8` family (ultralytics layout): output `[N, 4 + classes, anchors]`, one column
//! per anchor: `cx, cy, w, h` in model-input pixels, then one score per class (already
//! probabilities, no objectness).

use skynet_core::Detection;

use crate::decode::{Candidates, DecodeParams};
use crate::manifest::ModelManifest;
use crate::model_family::{Decode, ModelFamily, agrees};
use crate::preprocess::LetterboxGeometry;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Yolov8Decoder {
    anchors: usize,
    classes: usize,
    input_size: (u32, u32),
}

impl Yolov8Decoder {
    pub fn new(input_width: u32, input_height: u32, strides: &[u32], classes: usize) -> Self {
        Self {
            anchors: crate::yolox::anchor_grid(input_width, input_height, strides).len(),
            classes,
            input_size: (input_width, input_height),
        }
    }

    pub fn anchors(&self) -> usize {
        self.anchors
    }

    /// Values per anchor: box (4) and class scores.
    pub fn columns(&self) -> usize {
        4 + self.classes
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
        let n = self.anchors;
        if n > 0 && output.len() == n * self.columns() {
            // Class scores lie in rows of `n`: walking them row by row keeps the reads
            // sequential, where per-anchor argmax would stride through the whole tensor.
            let mut best: Vec<(usize, f32)> = vec![(0, f32::NAN); n];
            for (class, row) in output[4 * n..].chunks_exact(n).enumerate() {
                for (b, &s) in best.iter_mut().zip(row) {
                    if s > b.1 || (b.1.is_nan() && !s.is_nan()) {
                        *b = (class, s);
                    }
                }
            }
            let threshold = candidates.threshold();
            for (i, &(class, score)) in best.iter().enumerate() {
                if score >= threshold {
                    candidates.push_centre(
                        class,
                        score,
                        output[i],
                        output[n + i],
                        output[2 * n + i],
                        output[3 * n + i],
                    );
                }
            }
        }
        candidates.finish(params, labels, geometry, source_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;

    #[test]
    fn decodes_columns_into_source_pixels() {
        // 64x64 input, stride 32: 4 anchors; two classes; 6 rows of 4.
        let decoder = Yolov8Decoder::new(64, 64, &[32], 2);
        let mut out = vec![0.0f32; 6 * 4];
        let anchor = 2;
        for (row, v) in [48.0, 16.0, 32.0, 32.0, 0.1, 0.8].into_iter().enumerate() {
            out[row * 4 + anchor] = v;
        }
        let labels = vec!["a".to_string(), "b".to_string()];
        let geometry = LetterboxGeometry {
            scale: 0.5,
            resized_width: 32,
            resized_height: 32,
        };
        let d = decoder.decode(
            &out,
            &labels,
            &DecodeParams::default(),
            geometry,
            (1000, 1000),
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "b");
        assert_eq!(d[0].score, 0.8);
        assert_eq!(d[0].bbox, BBox::new(64.0, 0.0, 128.0, 64.0));
        // NaN, infinity or huge values anywhere in that column: no box.
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30] {
            for row in 0..4 {
                let mut bad = out.clone();
                bad[row * 4 + anchor] = v;
                let d = decoder.decode(
                    &bad,
                    &labels,
                    &DecodeParams::default(),
                    geometry,
                    (1000, 1000),
                );
                assert!(d.is_empty(), "{v} in row {row}: {d:?}");
            }
            let mut bad = out.clone();
            bad[5 * 4 + anchor] = v;
            let d = decoder.decode(
                &bad,
                &labels,
                &DecodeParams::default(),
                geometry,
                (1000, 1000),
            );
            assert!(d.is_empty(), "{v} as the class score: {d:?}");
        }
        assert!(
            decoder
                .decode(
                    &out[1..],
                    &labels,
                    &DecodeParams::default(),
                    geometry,
                    (9, 9)
                )
                .is_empty()
        );
    }
}

crate::model_family::family_without_keys!(Yolov8Family, "yolov8");

impl ModelFamily for Yolov8Family {
    fn name(&self) -> &'static str {
        "yolov8"
    }

    fn check_manifest(&self, manifest: &ModelManifest) -> Result<(), String> {
        crate::yolox::needs_strides(self.name(), manifest)
    }

    fn output_columns(&self, manifest: &ModelManifest) -> usize {
        4 + manifest.labels.len()
    }

    fn check_output(&self, manifest: &ModelManifest, shape: &[i64]) -> Result<(), String> {
        let classes = manifest.labels.len();
        let anchors = manifest.anchors();
        let (w, h) = (manifest.input.width, manifest.input.height);
        let strides = &manifest.output.strides;
        if shape.len() == 3 && agrees(shape[1], 4 + classes) && agrees(shape[2], anchors) {
            return Ok(());
        }
        Err(format!(
            "[N, {}, {anchors}] (4 + {classes} labels; anchors from strides {strides:?} at {w}x{h})",
            4 + classes
        ))
    }

    fn decoder(&self, manifest: &ModelManifest) -> Arc<dyn Decode> {
        let input = &manifest.input;
        Arc::new(Yolov8Decoder::new(
            input.width,
            input.height,
            &manifest.output.strides,
            manifest.labels.len(),
        ))
    }
}

impl Decode for Yolov8Decoder {
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
        Yolov8Decoder::decode(self, output, labels, params, geometry, source_size)
    }
}
