//! From a model's output tensor to detections in source pixels, for every model family.
//!
//! Each family ([`yolox`](crate::yolox), [`yolov8`](crate::yolov8),
//! [`nms_inside`](crate::nms_inside)) only turns its layout into [`Candidate`]s in
//! model-input pixels. What follows is shared: candidates past `max_candidates` are dropped
//! (the best by score kept, in linear time), class-aware NMS, at most `max_detections`
//! kept, and boxes mapped back through the letterbox into the source image.
//!
//! Model output is input from outside: NaN, infinity and huge values must never panic and
//! never become a box. Every family goes through [`Candidates::push`], which refuses
//! non-finite scores and boxes that are empty or far outside the input.

use skynet_core::{BBox, Detection};

use std::sync::Arc;

use crate::manifest::ModelManifest;
use crate::model_family::Decode;
use crate::preprocess::LetterboxGeometry;

/// Thresholds and caps of the decoding that follows the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeParams {
    /// Minimum score (0..1) a candidate needs.
    pub threshold: f32,
    /// Boxes of the same class overlapping more than this are suppressed.
    pub nms_iou: f32,
    /// Candidates kept for NMS, the best by score: NMS is quadratic, so a low threshold on
    /// a busy scene must not make it explode.
    pub max_candidates: usize,
    /// Detections kept after NMS, the best by score.
    pub max_detections: usize,
}

impl Default for DecodeParams {
    fn default() -> Self {
        Self {
            threshold: 0.3,
            nms_iou: 0.45,
            max_candidates: 1000,
            max_detections: 300,
        }
    }
}

/// A box before NMS, in model-input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub class: usize,
    pub score: f32,
    pub bbox: BBox,
}

/// How far outside the model input a box corner may lie and still be a box: real boxes
/// overhang the input a little; beyond this the values are garbage.
const OVERHANG: f32 = 1.0;

/// exp() of a raw size above this is no box any more (e^12 = 162755 grid cells); clamping
/// keeps it finite so it is refused by the bounds check, not turned into infinity.
pub(crate) const MAX_LOG_SIZE: f32 = 12.0;

/// Scores are probabilities; a little above 1 is rounding, far above it is garbage.
const MAX_SCORE: f32 = 1.0 + 1e-3;

/// Candidates of one image, checked as they come in.
pub(crate) struct Candidates {
    items: Vec<Candidate>,
    threshold: f32,
    min: (f32, f32),
    max: (f32, f32),
}

impl Candidates {
    pub fn new(threshold: f32, input_size: (u32, u32)) -> Self {
        let (w, h) = (input_size.0 as f32, input_size.1 as f32);
        Self {
            items: Vec::new(),
            // NaN as a threshold would let everything through.
            threshold: if threshold.is_nan() { 1.0 } else { threshold },
            min: (-OVERHANG * w, -OVERHANG * h),
            max: ((1.0 + OVERHANG) * w, (1.0 + OVERHANG) * h),
        }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Adds a box given by its corners, if its score passes and the box is a real one.
    pub fn push(&mut self, class: usize, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) {
        // Written so that NaN fails every comparison and is refused.
        let score_ok = score >= self.threshold && score <= MAX_SCORE;
        let inside = |v: f32, lo: f32, hi: f32| v >= lo && v <= hi;
        let box_ok = inside(x1, self.min.0, self.max.0)
            && inside(x2, self.min.0, self.max.0)
            && inside(y1, self.min.1, self.max.1)
            && inside(y2, self.min.1, self.max.1)
            && x2 > x1
            && y2 > y1;
        if score_ok && box_ok {
            self.items.push(Candidate {
                class,
                score,
                bbox: BBox::new(x1, y1, x2, y2),
            });
        }
    }

    /// Adds a box given by its centre and size.
    pub fn push_centre(&mut self, class: usize, score: f32, cx: f32, cy: f32, w: f32, h: f32) {
        let (hw, hh) = (w / 2.0, h / 2.0);
        self.push(class, score, cx - hw, cy - hh, cx + hw, cy + hh);
    }

    #[cfg(test)]
    pub fn into_inner(self) -> Vec<Candidate> {
        self.items
    }

    /// Caps, NMS, caps again, and maps into source pixels.
    pub fn finish(
        self,
        params: &DecodeParams,
        labels: &[String],
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        let mut candidates = self.items;
        let by_score_desc = |a: &Candidate, b: &Candidate| b.score.total_cmp(&a.score);
        let cap = params.max_candidates.max(1);
        if candidates.len() > cap {
            candidates.select_nth_unstable_by(cap - 1, by_score_desc);
            candidates.truncate(cap);
        }
        candidates.sort_unstable_by(by_score_desc);
        let kept = nms_per_class(&candidates, params.nms_iou, params.max_detections);
        let inv = if geometry.scale > 0.0 && geometry.scale.is_finite() {
            1.0 / geometry.scale
        } else {
            1.0
        };
        let (sw, sh) = (source_size.0 as f32, source_size.1 as f32);
        kept.into_iter()
            .filter_map(|c| {
                let bbox = c.bbox.scaled(inv, inv).clamp_to(sw, sh);
                // A box wholly outside the source (in the padding) is no detection.
                (bbox.area() > 0.0).then(|| Detection {
                    label: labels
                        .get(c.class)
                        .cloned()
                        .unwrap_or_else(|| format!("class_{}", c.class)),
                    score: c.score,
                    bbox,
                    track: None,
                })
            })
            .collect()
    }
}

/// Greedy NMS over candidates sorted by score (highest first), suppressing only boxes of the
/// same class; stops after `limit` are kept.
fn nms_per_class(sorted: &[Candidate], iou: f32, limit: usize) -> Vec<Candidate> {
    let mut kept: Vec<Candidate> = Vec::new();
    for c in sorted {
        if kept.len() >= limit {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class != c.class || k.bbox.iou(&c.bbox) <= iou)
        {
            kept.push(*c);
        }
    }
    kept
}

/// The decoder for a model's family, made once per model.
#[derive(Debug, Clone)]
pub struct BoxDecoder(Arc<dyn Decode>);

impl BoxDecoder {
    pub fn for_manifest(manifest: &ModelManifest) -> Self {
        Self(manifest.model.family.decoder(manifest))
    }

    /// Output values per image, where the layout fixes it (not for `nms-inside`, whose
    /// number of rows varies).
    pub fn values_per_image(&self) -> Option<usize> {
        self.0.values_per_image()
    }

    /// The values of one image must be a whole number of these.
    pub fn row_len(&self) -> usize {
        self.0.row_len()
    }

    /// Decodes the output of one image. Any values, of any length, give a result (values
    /// of the wrong length give none): the detector checks shapes before.
    pub fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        self.0.decode(output, labels, params, geometry, source_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> LetterboxGeometry {
        LetterboxGeometry {
            scale: 0.5,
            resized_width: 32,
            resized_height: 32,
        }
    }

    fn c(class: usize, score: f32, x: f32) -> Candidate {
        Candidate {
            class,
            score,
            bbox: BBox::new(x, 0.0, x + 10.0, 10.0),
        }
    }

    #[test]
    fn nms_suppresses_overlaps_only_within_a_class() {
        let kept = nms_per_class(&[c(0, 0.9, 0.0), c(0, 0.5, 0.0), c(1, 0.4, 0.0)], 0.45, 10);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].class, 1);
    }

    #[test]
    fn nan_inf_and_huge_values_never_become_boxes() {
        let mut cands = Candidates::new(0.3, (64, 64));
        let bad = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            f32::MAX,
        ];
        for v in bad {
            cands.push(0, v, 0.0, 0.0, 10.0, 10.0);
            cands.push(0, 0.9, v, 0.0, 10.0, 10.0);
            cands.push(0, 0.9, 0.0, v, 10.0, 10.0);
            cands.push(0, 0.9, 0.0, 0.0, v, 10.0);
            cands.push(0, 0.9, 0.0, 0.0, 10.0, v);
            cands.push_centre(0, 0.9, 5.0, 5.0, v, v);
        }
        // A score far above 1, empty and inverted boxes.
        cands.push(0, 3.0, 0.0, 0.0, 10.0, 10.0);
        cands.push(0, 0.9, 5.0, 5.0, 5.0, 10.0);
        cands.push(0, 0.9, 10.0, 0.0, 0.0, 10.0);
        assert!(cands.into_inner().is_empty());
        // A NaN threshold lets nothing through.
        let mut cands = Candidates::new(f32::NAN, (64, 64));
        cands.push(0, 0.9, 0.0, 0.0, 10.0, 10.0);
        assert!(cands.into_inner().is_empty());
    }

    #[test]
    fn candidates_are_capped_to_the_best_and_detections_after_nms() {
        let mut cands = Candidates::new(0.0, (10_000, 64));
        // 5000 disjoint boxes of one class, scores rising with x.
        for i in 0..5000 {
            cands.push(
                0,
                i as f32 / 5000.0,
                i as f32 * 2.0,
                0.0,
                i as f32 * 2.0 + 1.0,
                1.0,
            );
        }
        let params = DecodeParams {
            threshold: 0.0,
            max_candidates: 100,
            max_detections: 7,
            ..DecodeParams::default()
        };
        let geometry = LetterboxGeometry {
            scale: 1.0,
            resized_width: 10_000,
            resized_height: 64,
        };
        let d = cands.finish(&params, &[], geometry, (10_000, 64));
        assert_eq!(d.len(), 7);
        assert_eq!(d[0].score, 4999.0 / 5000.0);
        assert!(d.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(d[0].label, "class_0");
    }

    #[test]
    fn boxes_map_back_to_source_pixels_and_padding_only_boxes_are_dropped() {
        let mut cands = Candidates::new(0.3, (64, 64));
        cands.push(0, 0.9, 8.0, 8.0, 16.0, 24.0);
        // Entirely in the padding below a 64x40 source (scaled: y from 20 up).
        cands.push(1, 0.8, 0.0, 30.0, 10.0, 40.0);
        let labels = vec!["a".to_string(), "b".to_string()];
        let d = cands.finish(&DecodeParams::default(), &labels, geometry(), (64, 40));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].bbox, BBox::new(16.0, 16.0, 32.0, 40.0));
    }
}
