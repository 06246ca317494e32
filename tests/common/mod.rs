//! Finding what the tests need: the ONNX Runtime library, the model weights and the media
//! that `scripts/setup.sh` installs, falling back to ../shared where the machine has it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    repo().join("../shared")
}

/// A media file (vtest.avi, dog.jpg).
pub fn media(name: &str) -> PathBuf {
    let candidates = [
        skynet::paths::data_dir().join("media").join(name),
        shared().join("media").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("test media {name} is missing (looked in {candidates:?}); run scripts/setup.sh")
        })
}

pub fn manifest_path() -> PathBuf {
    repo().join("models/yolox_nano.toml")
}

pub fn weight_dirs() -> Vec<PathBuf> {
    vec![
        skynet::paths::data_dir().join("models"),
        shared().join("models"),
    ]
}

pub fn runtime() -> skynet_detect::OnnxRuntime {
    skynet_detect::OnnxRuntime::init(None, &[skynet::paths::data_dir()])
        .unwrap_or_else(|e| panic!("{e}\n(the tests need what scripts/setup.sh installs)"))
}

/// A pipeline config over the first `frames` frames of vtest.avi with one zone rule.
pub fn vtest_config(dir: &Path, camera: &str, zone: &str, frames: u64) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    format!(
        r#"
[node]
name = "test-node"

[grids]
file = "{grids}"

[detect]
model = "{model}"
workers = 2

[risk]
half_life_s = 60
close_after_s = 120

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/incidents.jsonl"

[evidence]
dir = "{dir}/evidence"

[[cameras]]
id = "{camera}"
owner = "city_management"
uri = "{media}"
grid = "G-0102"
max_frames = {frames}

  [[cameras.zones]]
  name = "zone"
  polygon = {zone}

  [[cameras.rules]]
  name = "zone-rule"
  kind = "zone_intrusion"
  zone = "zone"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&manifest_path()),
        dir = esc(dir),
        media = esc(&media("vtest.avi")),
    )
}

/// Where people walk in vtest.avi (feet inside in 180 of the first 200 frames; see
/// tests/reference/vtest_zones.md).
pub const WALKWAY: &str = "[[0.30, 0.40], [0.60, 0.40], [0.80, 0.55], [0.45, 0.55]]";
/// A building wall no person box touches in any frame.
pub const NOBODY: &str = "[[0.42, 0.0], [0.74, 0.0], [0.74, 0.15], [0.42, 0.15]]";

/// Writes `text` as a config in `dir` and loads it, with the weights found as above.
pub fn pipeline_config(dir: &Path, text: &str) -> skynet::PipelineConfig {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write the config");
    let mut config = skynet::PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.detector.weight_dirs = weight_dirs();
    config
}

/// One detection of the Python onnxruntime reference on dog.jpg
/// (tests/fixtures/dog_expected.json, made by tests/reference/yolox_reference.py).
pub struct ReferenceDetection {
    pub label: String,
    pub score: f32,
    pub bbox: skynet_core::BBox,
}

pub fn dog_reference() -> Vec<ReferenceDetection> {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/dog_expected.json"))
        .expect("the dog.jpg fixture");
    let expected: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    expected["detections"]
        .as_array()
        .expect("a detections array")
        .iter()
        .map(|e| {
            let b: Vec<f32> = e["box"]
                .as_array()
                .expect("a box")
                .iter()
                .map(|v| v.as_f64().expect("a number") as f32)
                .collect();
            ReferenceDetection {
                label: e["label"].as_str().expect("a label").to_string(),
                score: e["score"].as_f64().expect("a score") as f32,
                bbox: skynet_core::BBox::new(b[0], b[1], b[2], b[3]),
            }
        })
        .collect()
}

/// The detection in `got` of the reference's label that overlaps it best matches it: IoU at
/// least 0.9 and score within 0.02. `what` names the detector in messages.
pub fn assert_matches_reference(
    got: &[skynet_core::Detection],
    want: &ReferenceDetection,
    what: &str,
) {
    let label = &want.label;
    let best = got
        .iter()
        .filter(|d| &d.label == label)
        .max_by(|a, b| a.bbox.iou(&want.bbox).total_cmp(&b.bbox.iou(&want.bbox)))
        .unwrap_or_else(|| panic!("{what}: expected a {label}, got {got:?}"));
    assert!(
        best.bbox.iou(&want.bbox) >= 0.9,
        "{what} {label}: IoU {} for {:?} vs {:?}",
        best.bbox.iou(&want.bbox),
        best.bbox,
        want.bbox
    );
    assert!(
        (best.score - want.score).abs() <= 0.02,
        "{what} {label}: score {} vs {}",
        best.score,
        want.score
    );
}
