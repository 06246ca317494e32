//! YOLOX output decoding and class-aware non-maximum suppression.
//!
//! The output holds one row per anchor over the stride-8, 16 and 32 grids, in that order:
//! `cx, cy, w, h` (grid-relative), objectness, then one score per class. Both scores are
//! already probabilities in this export.

use skynet_core::{BBox, Detection};

use crate::preprocess::LetterboxGeometry;

/// Anchor-grid offsets and strides, computed once per model.
#[derive(Debug, Clone)]
pub struct YoloxDecoder {
    grid: Vec<(f32, f32, f32)>,
    columns: usize,
}

/// A candidate before NMS, in model-input pixels.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    class: usize,
    score: f32,
    bbox: BBox,
}

impl YoloxDecoder {
    pub fn new(input_width: u32, input_height: u32, strides: &[u32], classes: usize) -> Self {
        let mut grid = Vec::new();
        for &stride in strides {
            let (gw, gh) = (input_width / stride, input_height / stride);
            for gy in 0..gh {
                for gx in 0..gw {
                    grid.push((gx as f32, gy as f32, stride as f32));
                }
            }
        }
        Self {
            grid,
            columns: 5 + classes,
        }
    }

    pub fn anchors(&self) -> usize {
        self.grid.len()
    }

    /// Decodes `output` into detections in source-image pixels, after class-aware NMS.
    pub fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        threshold: f32,
        nms_iou: f32,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection> {
        let mut candidates = Vec::new();
        for (row, &(gx, gy, stride)) in output.chunks_exact(self.columns).zip(&self.grid) {
            let objectness = row[4];
            if objectness < threshold {
                // score = objectness * class score <= objectness: nothing in this row can pass.
                continue;
            }
            let (class, class_score) =
                row[5..]
                    .iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (i, s)| if s > best.1 { (i, s) } else { best },
                    );
            let score = objectness * class_score;
            if score < threshold {
                continue;
            }
            let cx = (row[0] + gx) * stride;
            let cy = (row[1] + gy) * stride;
            let w = row[2].exp() * stride;
            let h = row[3].exp() * stride;
            candidates.push(Candidate {
                class,
                score,
                bbox: BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0),
            });
        }
        let kept = nms_per_class(candidates, nms_iou);
        let inv = 1.0 / geometry.scale;
        let (sw, sh) = (source_size.0 as f32, source_size.1 as f32);
        kept.into_iter()
            .map(|c| Detection {
                label: labels
                    .get(c.class)
                    .cloned()
                    .unwrap_or_else(|| format!("class_{}", c.class)),
                score: c.score,
                bbox: BBox::new(
                    c.bbox.x1 * inv,
                    c.bbox.y1 * inv,
                    c.bbox.x2 * inv,
                    c.bbox.y2 * inv,
                )
                .clamp_to(sw, sh),
                track: None,
            })
            .collect()
    }
}

/// Greedy NMS, highest score first, suppressing only boxes of the same class.
fn nms_per_class(mut candidates: Vec<Candidate>, iou: f32) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept
            .iter()
            .all(|k| k.class != c.class || k.bbox.iou(&c.bbox) <= iou)
        {
            kept.push(c);
        }
    }
    kept
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

    #[test]
    fn decodes_one_anchor_into_source_pixels() {
        // 64x64 input, one stride of 32: a 2x2 grid, two classes.
        let decoder = YoloxDecoder::new(64, 64, &[32], 2);
        let mut out = vec![0.0f32; 4 * 7];
        // Anchor (1, 0): centre (1.5*32, 0.5*32) = (48, 16), size exp(0)*32 = 32.
        out[7..14].copy_from_slice(&[0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.8]);
        let labels = vec!["a".to_string(), "b".to_string()];
        let d = decoder.decode(&out, &labels, 0.3, 0.45, geometry(), (1000, 1000));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "b");
        assert!((d[0].score - 0.72).abs() < 1e-6);
        assert_eq!(d[0].bbox, BBox::new(64.0, 0.0, 128.0, 64.0));
    }

    #[test]
    fn nms_suppresses_overlaps_only_within_a_class() {
        let b = BBox::new(0.0, 0.0, 10.0, 10.0);
        let c = |class, score| Candidate {
            class,
            score,
            bbox: b,
        };
        let kept = nms_per_class(vec![c(0, 0.5), c(0, 0.9), c(1, 0.4)], 0.45);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].class, 1);
    }
}
