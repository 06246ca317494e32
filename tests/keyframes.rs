//! Key-frame-only decoding (issue 26 part 1) on the tests' RTSP camera: vtest.avi as H.264 at
//! 10 frames/s with a key frame every 10 frames, i.e. one a second.

mod common;

use std::path::Path;

use common::{RtspCamera, free_port};
use skynet::{RunOptions, pipeline};
use skynet_core::{
    Component, ConfigContext, DeviceId, Frame, OverloadPolicy, Shutdown, Watermark, stage_queue,
};
use skynet_emit::Outbox;
use skynet_ingest::{BuildSource, FrameDelivery, FrameOutput, GstSourceConfig, SourceBuildContext};

/// The first `frames` frames of the camera at `uri`, with `keys` in its table and the analysis
/// rate `fps`, and what the metrics said meanwhile.
fn frames_of(
    uri: &str,
    camera: &str,
    keys: &str,
    fps: Option<f64>,
    frames: u64,
) -> (Vec<Frame>, String) {
    let text = format!("uri = \"{uri}\"\nmax_frames = {frames}\n{keys}");
    let config: GstSourceConfig = toml::from_str(&text).unwrap();
    let config = config
        .validate(&ConfigContext::new(Path::new("/nonexistent/site.toml")))
        .unwrap();
    let delivery = FrameDelivery {
        fps,
        ..FrameDelivery::default()
    };
    let camera = DeviceId::new(camera);
    let mut source = config
        .build(&SourceBuildContext {
            camera: &camera,
            delivery: &delivery,
        })
        .unwrap();
    let (queue, rx) = stage_queue::<Frame>("frames", "test", 64, OverloadPolicy::Block);
    let out = FrameOutput::new(queue, Watermark::new(true));
    let collector = std::thread::spawn(move || rx.iter().collect::<Vec<_>>());
    // The source on this thread, so that its metrics go to this test's own recorder.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        source.run(&out, &Shutdown::new()).unwrap();
    });
    drop(out);
    (collector.join().unwrap(), handle.render())
}

/// Seconds between successive frames' event times.
fn steps_of(frames: &[Frame]) -> Vec<f64> {
    frames
        .windows(2)
        .map(|w| (w[1].info.captured_at - w[0].info.captured_at).num_milliseconds() as f64 / 1000.0)
        .collect()
}

fn mode_gauge(metrics: &str, camera: &str, mode: &str) -> f64 {
    common::metric(
        metrics,
        &format!("skynet_camera_decode_mode{{camera=\"{camera}\",mode=\"{mode}\"}}"),
    )
}

#[test]
fn keyframes_only_gives_one_frame_a_second_at_the_key_frames_times() {
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    let uri = format!("rtsp://127.0.0.1:{port}/cam");
    let (frames, metrics) = frames_of(&uri, "cam-keys", "keyframes_only = true", None, 5);
    assert_eq!(frames.len(), 5);
    let steps = steps_of(&frames);
    // Key frames are 1 s apart on the stream's clock; their own times, not a grid's.
    assert!(
        steps.iter().all(|s| (0.8..=1.2).contains(s)),
        "steps between frames: {steps:?}"
    );
    assert_eq!(
        mode_gauge(&metrics, "cam-keys", "keyframes"),
        1.0,
        "{metrics}"
    );
    assert_eq!(mode_gauge(&metrics, "cam-keys", "full"), 0.0);
    // The delta frames were kept from the decoder, and counted.
    assert!(
        common::metric(
            &metrics,
            "skynet_frames_skipped_total{camera=\"cam-keys\",reason=\"keyframes\"}"
        ) >= 30.0,
        "{metrics}"
    );
}

#[test]
fn auto_turns_key_frames_on_at_one_fps_and_leaves_full_decoding_without_fps() {
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    let uri = format!("rtsp://127.0.0.1:{port}/cam");
    // `auto` is the default. At fps = 1 the key-frame rate (1/s) is enough: after one GOP of
    // measuring, key frames only, each passed on at its own time.
    let (frames, metrics) = frames_of(&uri, "cam-auto", "", Some(1.0), 5);
    assert_eq!(frames.len(), 5);
    assert_eq!(
        mode_gauge(&metrics, "cam-auto", "keyframes"),
        1.0,
        "{metrics}"
    );
    // The first frame comes while `auto` measures; at the switch `videorate` renegotiates and
    // may lose the key frame it was handed (one step of 2 s); then one a second.
    let steps = steps_of(&frames);
    assert!(
        (0.8..=2.2).contains(&steps[0]) && steps[1..].iter().all(|s| (0.8..=1.2).contains(s)),
        "steps between frames: {steps:?}"
    );
    // Without fps every frame is analysed, so every frame is decoded.
    let (frames, metrics) = frames_of(&uri, "cam-all", "keyframes_only = \"auto\"", None, 15);
    assert_eq!(mode_gauge(&metrics, "cam-all", "full"), 1.0, "{metrics}");
    assert_eq!(mode_gauge(&metrics, "cam-all", "keyframes"), 0.0);
    let steps = steps_of(&frames);
    assert!(
        steps.iter().all(|s| *s < 0.3),
        "steps between frames: {steps:?}"
    );
    // Off: every frame decoded, the rate held after the decoder as before.
    let (_, metrics) = frames_of(&uri, "cam-off", "keyframes_only = false", Some(1.0), 2);
    assert_eq!(mode_gauge(&metrics, "cam-off", "full"), 1.0, "{metrics}");
}

#[test]
fn with_keyframes_only_the_zone_rule_still_fires_on_vtest() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    let uri = format!("rtsp://127.0.0.1:{port}/cam");
    let frames = 8;
    let text = common::vtest_config(dir.path(), "cam-keys", common::WALKWAY, frames)
        .replace(&common::media("vtest.avi").display().to_string(), &uri)
        .replace(
            &format!("max_frames = {frames}"),
            &format!("max_frames = {frames}\nkeyframes_only = true"),
        );
    let config = common::pipeline_config(dir.path(), &text);
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    assert_eq!(summary.frames_decoded, frames);
    let events = Outbox::open(&dir.path().join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap();
    eprintln!(
        "{} of {frames} key frames analysed, {} incident revisions",
        summary.frames_analysed,
        events.len()
    );
    assert!(
        !events.is_empty(),
        "no incident from the zone rule on key frames only"
    );
}
