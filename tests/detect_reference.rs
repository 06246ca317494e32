//! The Rust detector against the Python onnxruntime reference on dog.jpg
//! (tests/fixtures/dog_expected.json, made by tests/reference/yolox_reference.py).

mod common;

use std::sync::Arc;

use skynet_core::{BBox, PixelOrder};
use skynet_detect::detector::load_image;
use skynet_detect::{Detector, DetectorOptions, ImageView, ModelManifest, OnnxDetector};

#[test]
fn dog_jpg_matches_the_python_reference() {
    let runtime = common::runtime();
    let manifest = Arc::new(ModelManifest::load(&common::manifest_path()).unwrap());
    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    let mut detector = OnnxDetector::new(&runtime, manifest, options).unwrap();

    let (w, h, rgb) = load_image(&common::media("dog.jpg")).unwrap();
    let image = ImageView::new(w, h, w as usize * 3, PixelOrder::Rgb, &rgb).unwrap();
    let got = detector.detect(&image).unwrap();

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("tests/fixtures/dog_expected.json")).unwrap(),
    )
    .unwrap();
    let expected = expected["detections"].as_array().unwrap();
    for label in ["dog", "bicycle", "car"] {
        assert!(
            got.iter().any(|d| d.label == label),
            "no {label} in {got:?}"
        );
    }
    for e in expected {
        let label = e["label"].as_str().unwrap();
        let score = e["score"].as_f64().unwrap() as f32;
        let b: Vec<f32> = e["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want = BBox::new(b[0], b[1], b[2], b[3]);
        let best = got
            .iter()
            .filter(|d| d.label == label)
            .max_by(|a, b| a.bbox.iou(&want).total_cmp(&b.bbox.iou(&want)))
            .unwrap_or_else(|| panic!("expected a {label}, got {got:?}"));
        assert!(
            best.bbox.iou(&want) >= 0.9,
            "{label}: IoU {} for {:?} vs {want:?}",
            best.bbox.iou(&want),
            best.bbox
        );
        assert!(
            (best.score - score).abs() <= 0.02,
            "{label}: score {} vs {score}",
            best.score
        );
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "same number of detections after NMS: {got:?}"
    );
}

/// A manifest that disagrees with its model fails when the detector loads, saying what
/// differs, instead of at the first frame.
#[test]
fn a_manifest_that_disagrees_with_the_real_model_is_refused_at_load() {
    let runtime = common::runtime();
    let mut manifest = ModelManifest::load(&common::manifest_path()).unwrap();
    manifest.input.width = 640;
    manifest.input.height = 640;
    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    let err = match OnnxDetector::new(&runtime, Arc::new(manifest), options) {
        Ok(_) => panic!("a 640x640 manifest for the 416x416 model was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(err.contains("[1, 3, 416, 416]"), "{err}");
}
