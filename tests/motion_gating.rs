//! Motion gating on real decoded video: a still scene costs almost no detector calls, and on
//! vtest.avi (people walking) gating changes no incident.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skynet::{RunOptions, pipeline};
use skynet_core::Detection;
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_emit::Outbox;

/// Counts its calls and finds nothing.
struct CountingDetector {
    calls: Arc<AtomicU64>,
}

impl Detector for CountingDetector {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Vec::new())
    }
}

/// 15 s of a still test card at 10 frames/s (not `smpte`: its corner of snow moves), as Motion-JPEG in AVI.
fn still_clip(dir: &Path) -> PathBuf {
    let path = dir.join("still.avi");
    // Under a time limit, so a hung encoder cannot hold the suite.
    let status = Command::new("timeout")
        .args([
            "60",
            "gst-launch-1.0",
            "-q",
            "videotestsrc",
            "pattern=pinwheel",
            "num-buffers=150",
            "!",
            "video/x-raw,width=640,height=480,framerate=10/1",
            "!",
            "jpegenc",
            "!",
            "avimux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0 runs (scripts/setup.sh installs gstreamer1.0-tools)");
    assert!(status.success());
    path
}

/// Detector calls for the whole of `video` with motion gating as `motion` says.
fn calls_on(dir: &Path, video: &Path, motion: &str) -> (u64, skynet::RunSummary) {
    let text = common::vtest_config(dir, "cam-still", common::WALKWAY, 150)
        .replace(
            &common::media("vtest.avi").display().to_string(),
            &video.display().to_string(),
        )
        .replace("max_frames = 150", &format!("max_frames = 150\n{motion}"));
    let config = common::pipeline_config(dir, &text);
    let calls = Arc::new(AtomicU64::new(0));
    let detectors: Vec<Box<dyn Detector>> = vec![Box::new(CountingDetector {
        calls: Arc::clone(&calls),
    })];
    let summary = pipeline::run(
        &config,
        RunOptions {
            detectors: Some(detectors),
            ..RunOptions::default()
        },
    )
    .unwrap();
    (calls.load(Ordering::Relaxed), summary)
}

#[test]
fn a_still_scene_costs_nearly_no_detector_calls() {
    let dir = tempfile::tempdir().unwrap();
    let clip = still_clip(dir.path());
    let (gated, summary) = calls_on(dir.path(), &clip, "");
    assert_eq!(summary.frames_decoded, 150);
    // The first frame, then one keepalive every 10 s of video.
    assert!(gated <= 3, "{gated} detector calls on a still scene");
    let (all, _) = calls_on(dir.path(), &clip, "motion = { enabled = false }");
    assert_eq!(all, 150);
}

fn incidents(dir: &Path, motion: &str) -> (Vec<(String, u32, String, String)>, u64) {
    let _ = common::runtime();
    let text = common::vtest_config(dir, "cam-walkway", common::WALKWAY, 400)
        .replace("max_frames = 400", &format!("max_frames = 400\n{motion}"));
    let config = common::pipeline_config(dir, &text);
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    let events = Outbox::open(&dir.join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap();
    let seen = events
        .iter()
        .map(|e| {
            (
                e.data.id.clone(),
                e.data.revision,
                format!("{:?}", e.data.status),
                e.data.level.to_string(),
            )
        })
        .collect();
    (seen, summary.frames_analysed)
}

#[test]
fn on_vtest_gating_changes_no_incident() {
    let on = tempfile::tempdir().unwrap();
    let off = tempfile::tempdir().unwrap();
    let (gated, analysed_gated) = incidents(on.path(), "");
    let (all, analysed_all) = incidents(off.path(), "motion = { enabled = false }");
    eprintln!(
        "vtest.avi: {analysed_gated} of {analysed_all} frames went to the detector with gating on"
    );
    assert_eq!(analysed_all, 400);
    assert!(analysed_gated <= analysed_all);
    assert!(!all.is_empty());
    assert_eq!(
        gated, all,
        "{analysed_gated} of {analysed_all} frames analysed with gating"
    );
}
