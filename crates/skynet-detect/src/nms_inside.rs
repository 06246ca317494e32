//! The `nms-inside` family: end-to-end exports whose output already holds the final boxes,
//! `[N, K, 6]` with rows `x1, y1, x2, y2, score, class` in model-input pixels. The rows
//! still pass the shared checks, caps and class-aware NMS (which keeps what the model's
//! own NMS kept), so garbage rows are refused like in any family.

use skynet_core::Detection;

use crate::decode::{Candidates, DecodeParams};
use crate::manifest::ModelManifest;
use crate::model_family::{Decode, ModelFamily, agrees};
use crate::preprocess::LetterboxGeometry;
use std::sync::Arc;

/// Values per row: box (4), score, class index.
pub const COLUMNS: usize = 6;

/// Class indices above this are garbage, not a class (no model has a million classes).
const MAX_CLASS: f32 = 1_000_000.0;

#[derive(Debug, Clone)]
pub struct NmsInsideDecoder {
    input_size: (u32, u32),
}

impl NmsInsideDecoder {
    pub fn new(input_width: u32, input_height: u32) -> Self {
        Self {
            input_size: (input_width, input_height),
        }
    }

    /// Decodes one image's rows into detections in source-image pixels.
    pub fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        let mut candidates = Candidates::new(params.threshold, self.input_size);
        if output.len().is_multiple_of(COLUMNS) {
            for row in output.chunks_exact(COLUMNS) {
                let class = row[5];
                // NaN is in no range; the cast is then exact.
                if !(0.0..MAX_CLASS).contains(&class) || class.fract() != 0.0 {
                    continue;
                }
                candidates.push(class as usize, row[4], row[0], row[1], row[2], row[3]);
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
    fn rows_become_detections_and_bad_rows_are_refused() {
        let decoder = NmsInsideDecoder::new(64, 64);
        let labels = vec!["a".to_string(), "b".to_string()];
        let geometry = LetterboxGeometry {
            scale: 0.5,
            resized_width: 32,
            resized_height: 32,
        };
        let good = [32.0, 0.0, 64.0, 32.0, 0.8, 1.0];
        let d = decoder.decode(
            &good,
            &labels,
            &DecodeParams::default(),
            geometry,
            (1000, 1000),
        );
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].label.as_str(), d[0].score), ("b", 0.8));
        assert_eq!(d[0].bbox, BBox::new(64.0, 0.0, 128.0, 64.0));
        let bad_anywhere = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];
        let cases = (0..COLUMNS)
            .flat_map(|column| bad_anywhere.iter().map(move |v| (column, *v)))
            .chain([(5, -1.0), (5, 0.5), (4, 2.0)]);
        for (column, v) in cases {
            {
                let mut row = good;
                row[column] = v;
                let d = decoder.decode(
                    &row,
                    &labels,
                    &DecodeParams::default(),
                    geometry,
                    (1000, 1000),
                );
                assert!(d.is_empty(), "{v} in column {column}: {d:?}");
            }
        }
        // A class index past the labels keeps a generic name.
        let d = decoder.decode(
            &[32.0, 0.0, 64.0, 32.0, 0.8, 7.0],
            &labels,
            &DecodeParams::default(),
            geometry,
            (1000, 1000),
        );
        assert_eq!(d[0].label, "class_7");
        assert!(
            decoder
                .decode(
                    &good[1..],
                    &labels,
                    &DecodeParams::default(),
                    geometry,
                    (9, 9)
                )
                .is_empty()
        );
    }
}

crate::model_family::family_without_keys!(NmsInsideFamily, "nms-inside");

impl ModelFamily for NmsInsideFamily {
    fn name(&self) -> &'static str {
        "nms-inside"
    }

    fn output_columns(&self, _manifest: &ModelManifest) -> usize {
        COLUMNS
    }

    fn check_output(&self, _manifest: &ModelManifest, shape: &[i64]) -> Result<(), String> {
        if shape.len() == 3 && agrees(shape[2], COLUMNS) {
            return Ok(());
        }
        Err("[N, K, 6] (x1, y1, x2, y2, score, class per row)".to_string())
    }

    fn decoder(&self, manifest: &ModelManifest) -> Arc<dyn Decode> {
        Arc::new(NmsInsideDecoder::new(
            manifest.input.width,
            manifest.input.height,
        ))
    }
}

impl Decode for NmsInsideDecoder {
    fn values_per_image(&self) -> Option<usize> {
        None
    }

    fn row_len(&self) -> usize {
        COLUMNS
    }

    fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        NmsInsideDecoder::decode(self, output, labels, params, geometry, source_size)
    }
}
