//! The Rust detector against the Python onnxruntime reference on dog.jpg
//! (tests/fixtures/dog_expected.json, made by tests/reference/yolox_reference.py).

mod common;

use std::sync::Arc;

use skynet_core::PixelOrder;
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

    let expected = common::dog_reference();
    for label in ["dog", "bicycle", "car"] {
        assert!(
            got.iter().any(|d| d.label == label),
            "no {label} in {got:?}"
        );
    }
    for want in &expected {
        common::assert_matches_reference(&got, want, "yolox_nano");
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
