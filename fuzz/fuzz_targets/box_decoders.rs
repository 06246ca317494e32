//! The box decoders of every model family (yolox, yolov8, nms-inside) on any model output:
//! the bytes become the output tensor's floats (so NaN, infinity and huge values come up
//! all the time) and the thresholds, caps and letterbox geometry. Nothing may panic, and
//! every detection must be a real box inside the source image with a score that passed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skynet_detect::decode::DecodeParams;
use skynet_detect::nms_inside::NmsInsideDecoder;
use skynet_detect::preprocess::LetterboxGeometry;
use skynet_detect::yolov8::Yolov8Decoder;
use skynet_detect::yolox::YoloxDecoder;

const INPUT: u32 = 64;
const STRIDES: [u32; 2] = [16, 32];

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, body) = data.split_at(8);
    let classes = 1 + usize::from(head[1] % 4);
    let labels: Vec<String> = (0..classes - usize::from(head[2] % 2)).map(|i| format!("c{i}")).collect();
    let params = DecodeParams {
        threshold: f32::from(head[3]) / 255.0,
        nms_iou: f32::from(head[4]) / 255.0,
        max_candidates: 1 + usize::from(head[5] % 16),
        max_detections: 1 + usize::from(head[6] % 8),
    };
    // Sources from 1x1 up, letterbox scale as the detector computes it.
    let source = (1 + u32::from(head[7]) * 7, 1 + u32::from(head[2]) * 5);
    let scale = (INPUT as f32 / source.0 as f32).min(INPUT as f32 / source.1 as f32);
    let geometry = LetterboxGeometry {
        scale,
        resized_width: INPUT,
        resized_height: INPUT,
    };
    let floats: Vec<f32> = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let fit = |len: usize| -> Vec<f32> {
        // The right length for the family (the detector checks it), filled from the input.
        if floats.is_empty() {
            return vec![0.0; len];
        }
        floats.iter().copied().cycle().take(len).collect()
    };
    let anchors: usize = STRIDES.iter().map(|s| ((INPUT / s) * (INPUT / s)) as usize).sum();
    let detections = match head[0] % 4 {
        0 => YoloxDecoder::new(INPUT, INPUT, &STRIDES, classes).decode(
            &fit(anchors * (5 + classes)),
            &labels,
            &params,
            geometry,
            source,
        ),
        1 => Yolov8Decoder::new(INPUT, INPUT, &STRIDES, classes).decode(
            &fit(anchors * (4 + classes)),
            &labels,
            &params,
            geometry,
            source,
        ),
        2 => NmsInsideDecoder::new(INPUT, INPUT).decode(
            &fit(floats.len() / 6 * 6),
            &labels,
            &params,
            geometry,
            source,
        ),
        // Any length, as it comes.
        _ => YoloxDecoder::new(INPUT, INPUT, &STRIDES, classes).decode(
            &floats,
            &labels,
            &params,
            geometry,
            source,
        ),
    };
    assert!(detections.len() <= params.max_detections);
    for d in &detections {
        let b = d.bbox;
        assert!(d.score >= params.threshold && d.score <= 1.001, "{d:?}");
        assert!(b.area() > 0.0, "{d:?}");
        assert!(b.x1 >= 0.0 && b.y1 >= 0.0, "{d:?}");
        assert!(b.x2 <= source.0 as f32 && b.y2 <= source.1 as f32, "{d:?}");
    }
});
