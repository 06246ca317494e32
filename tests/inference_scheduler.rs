//! The detect stage's scheduling, with a stand-in detector that records its calls: batches
//! formed across cameras, every camera served fairly, and the inference interval sending only
//! some frames to the detector while every frame still reaches the rules.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use skynet::{RunOptions, pipeline};
use skynet_core::{BBox, Detection};
use skynet_detect::{DetectError, Detector, ImageView};

/// Finds one person on the walkway per image; records the size of every call.
struct RecordingDetector {
    max_batch: usize,
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Detector for RecordingDetector {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let (w, h) = (image.width as f32, image.height as f32);
        Ok(vec![Detection::new(
            "person",
            0.9,
            BBox::new(0.48 * w, 0.3 * h, 0.52 * w, 0.47 * h),
        )])
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn detect_batch(
        &mut self,
        images: &[ImageView<'_>],
    ) -> Vec<Result<Vec<Detection>, DetectError>> {
        assert!(images.len() <= self.max_batch, "a batch over max_batch");
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(images.len());
        images.iter().map(|i| self.detect(i)).collect()
    }
}

/// `cameras` file cameras on vtest.avi, `frames` frames each, with `extra` camera keys.
fn config_text(dir: &std::path::Path, cameras: usize, frames: u64, extra: &str) -> String {
    let one = common::vtest_config(dir, "cam-0", common::WALKWAY, frames);
    // The first camera's table, repeated under other ids.
    let at = one.find("[[cameras]]").expect("a camera table");
    let (head, camera) = one.split_at(at);
    let camera = camera.replacen("max_frames", &format!("{extra}\nmax_frames"), 1);
    let mut text = head.to_string();
    for i in 0..cameras {
        text.push_str(&camera.replace("cam-0", &format!("cam-{i}")));
        text.push('\n');
    }
    text
}

#[test]
fn batches_are_filled_from_every_camera_and_every_frame_is_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(dir.path(), &config_text(dir.path(), 4, 60, ""));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let detector = RecordingDetector {
        max_batch: 4,
        calls: Arc::clone(&calls),
    };
    let summary = pipeline::run(
        &config,
        RunOptions {
            detectors: Some(vec![Box::new(detector)]),
            ..RunOptions::default()
        },
    )
    .unwrap();
    // Files wait for the detector: nothing is dropped, every frame of every camera analysed.
    assert_eq!(summary.frames_analysed, 240, "{summary:?}");
    assert_eq!(summary.frames_inferred, 240, "{summary:?}");
    assert_eq!(summary.frames_dropped, 0);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().sum::<usize>(), 240);
    // Four cameras decoding as fast as they can keep a batch of four mostly full.
    let full = calls.iter().filter(|&&n| n == 4).count();
    assert!(
        full * 2 >= calls.len(),
        "most batches should be full: {calls:?}"
    );
}

#[test]
fn the_inference_interval_skips_frames_for_the_detector_only() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        2,
        90,
        "inference_interval = { max = 3, adaptive = false }",
    );
    let config = common::pipeline_config(dir.path(), &text);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let detector = RecordingDetector {
        max_batch: 1,
        calls: Arc::clone(&calls),
    };
    let summary = pipeline::run(
        &config,
        RunOptions {
            detectors: Some(vec![Box::new(detector)]),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(summary.frames_analysed, 180, "{summary:?}");
    // Every third frame of each camera: 30 of 90.
    assert_eq!(summary.frames_inferred, 60, "{summary:?}");
    assert_eq!(calls.lock().unwrap().len(), 60);
    // The zone rule still fires on each camera: the frames in between reached the rules.
    let jsonl = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    let mut per_camera: BTreeMap<String, usize> = BTreeMap::new();
    for line in jsonl.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(contributions) = event["data"]["contributions"].as_array() {
            for c in contributions {
                *per_camera
                    .entry(c["source"]["id"].as_str().unwrap_or("").to_string())
                    .or_default() += 1;
            }
        }
    }
    assert!(
        per_camera.contains_key("cam-0") && per_camera.contains_key("cam-1"),
        "{per_camera:?}"
    );
}

/// Runs `text` with a detector taking one image per call.
fn run_one_at_a_time(dir: &std::path::Path, text: &str) -> skynet::RunSummary {
    let config = common::pipeline_config(dir, text);
    pipeline::run(
        &config,
        RunOptions {
            detectors: Some(vec![Box::new(RecordingDetector {
                max_batch: 1,
                calls: Arc::new(Mutex::new(Vec::new())),
            })]),
            ..RunOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn class_limits_and_owner_classes_filter_what_a_camera_keeps() {
    // A camera whose owner looks only for cars cannot have a rule on people: it would never
    // fire, so the config says so where the rule is.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), 1, 30, "").replace(
        "[detect]\n",
        "[detect]\nowner_classes = { city_management = [\"car\"] }\n",
    );
    let path = dir.path().join("owners.toml");
    std::fs::write(&path, &text).unwrap();
    let e = skynet::PipelineConfig::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("camera `cam-0` does not look for `person` (its owner's classes: car)"),
        "{e}"
    );

    // A per-camera minimum score above the detections' keeps them from the rules.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        1,
        30,
        "classes = { person = { min_score = 0.95 } }",
    );
    let summary = run_one_at_a_time(dir.path(), &text);
    assert_eq!(summary.frames_analysed, 30);
    assert_eq!(summary.observations, 0, "{summary:?}");

    // And with a limit it passes, the same frames make observations.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        1,
        30,
        "classes = { person = { min_score = 0.8 } }",
    );
    let summary = run_one_at_a_time(dir.path(), &text);
    assert!(summary.observations > 0, "{summary:?}");
}
