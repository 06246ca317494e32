//! The tracker on real footage: vtest.avi (795 frames, 768x576, people walking), decoded by
//! the GStreamer source and detected with YOLOX-Nano at every frame, then tracked.
//!
//! Without hand labels, quality is measured by what a good tracker does not do:
//!
//! - **fragmentation**: a person track born or ending away from the frame's border, after the
//!   first and before the last frames. People enter and leave through the border; a track
//!   that starts or stops in the middle is (mostly) a person whose track broke in two;
//! - **ID switches**: a track whose feet (box bottom centre) jump by more than half its box
//!   height between consecutive detector runs: it took over another person.
//!
//! Both are compared with a naive tracker (greedy IoU between consecutive frames, no motion
//! model, no memory, no low-score stage), and bounded by the values measured when the test
//! was written plus a margin (see each bound). The same detections are then tracked with the
//! detector run only every 2nd and 3rd frame (`inferred == false` in between), and the rise
//! in fragmentation is bounded.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use skynet_core::{
    AnalysedFrame, BBox, Detection, Frame, FrameInfo, OverloadPolicy, Shutdown, TrackedObject,
    Watermark, stage_queue,
};
use skynet_detect::{
    Detector, DetectorOptions, ImageView, ModelManifest, OnnxDetector, Tracker, TrackerSettings,
};
use skynet_ingest::{FrameOutput, FrameSource, GstSource, GstSourceOptions};

/// Frames at the start and end where births and deaths are expected (the scene is already
/// full of people at frame 0, and everyone "leaves" at the last frame).
const EDGE_FRAMES: usize = 10;
/// A box within this fraction of the frame from an edge touches the border.
const BORDER: f32 = 0.03;
/// Feet (the box's bottom centre) moving more than this fraction of the box's height between
/// two detector runs on the track is a jump: it took over another person (at 10 frames/s a
/// walker's feet move about 0.05 of their height per frame).
const JUMP: f32 = 0.5;

/// Every frame's info and person detections (threshold 0.1, so the low-score stage has
/// something to work with), in the camera's pixels. Decoded and detected once per test binary.
fn detections() -> &'static [(FrameInfo, Vec<Detection>)] {
    static DETECTIONS: OnceLock<Vec<(FrameInfo, Vec<Detection>)>> = OnceLock::new();
    DETECTIONS.get_or_init(|| {
        let runtime = common::runtime();
        let manifest = Arc::new(ModelManifest::load(&common::manifest_path()).unwrap());
        let options = DetectorOptions {
            threshold: 0.1,
            intra_threads: 2,
            weight_dirs: common::weight_dirs(),
            ..DetectorOptions::default()
        };
        let mut detector = OnnxDetector::new(&runtime, manifest, options).unwrap();
        let (queue, rx) = stage_queue::<Frame>("test", "test", 8, OverloadPolicy::Block);
        let out = FrameOutput::new(queue, Watermark::new(false));
        let mut source = GstSource::new(
            skynet_core::DeviceId::new("vtest"),
            GstSourceOptions {
                // As the pipeline does: scaled to the model's input while converting.
                max_size: Some((416, 416)),
                ..GstSourceOptions::new(common::media("vtest.avi").display().to_string())
            },
        );
        let decoder = std::thread::spawn(move || {
            source
                .run(&out, &Shutdown::new())
                .expect("decode vtest.avi");
        });
        let mut all = Vec::new();
        for frame in rx.iter() {
            let image = ImageView::of_frame(&frame).unwrap();
            let (sx, sy) = frame.image_scale();
            let found: Vec<Detection> = detector
                .detect(&image)
                .unwrap()
                .into_iter()
                .filter(|d| d.label == "person")
                .map(|mut d| {
                    d.bbox = d.bbox.scaled(sx, sy);
                    d
                })
                .collect();
            all.push((frame.info.clone(), found));
        }
        decoder.join().unwrap();
        all
    })
}

/// The tracks at each frame, with the detector run on every `interval`-th frame.
fn track(settings: TrackerSettings, interval: usize) -> Vec<Vec<TrackedObject>> {
    let mut tracker = Tracker::new(settings);
    detections()
        .iter()
        .enumerate()
        .map(|(i, (info, found))| {
            let inferred = i % interval == 0;
            let mut frame = AnalysedFrame {
                info: info.clone(),
                detections: if inferred { found.clone() } else { Vec::new() },
                inference: std::time::Duration::ZERO,
                inferred,
                tracks: Vec::new(),
            };
            tracker.update(&mut frame);
            frame.tracks
        })
        .collect()
}

/// The reference: each confident detection takes the id of the previous frame's box it
/// overlaps most (IoU at least 0.3, greedy), else a new id.
fn naive(min_score: f32, min_iou: f32) -> Vec<Vec<TrackedObject>> {
    let mut next_id = 1u64;
    let mut previous: Vec<TrackedObject> = Vec::new();
    let mut out = Vec::new();
    for (info, found) in detections() {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        let current: Vec<&Detection> = found.iter().filter(|d| d.score >= min_score).collect();
        for (c, d) in current.iter().enumerate() {
            for (p, t) in previous.iter().enumerate() {
                let iou = d.bbox.iou(&t.bbox);
                if iou >= min_iou {
                    pairs.push((iou, c, p));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut id_of: Vec<Option<u64>> = vec![None; current.len()];
        let mut taken = vec![false; previous.len()];
        for (_, c, p) in pairs {
            if id_of[c].is_none() && !taken[p] {
                id_of[c] = Some(previous[p].id);
                taken[p] = true;
            }
        }
        let tracks: Vec<TrackedObject> = current
            .iter()
            .zip(id_of)
            .map(|(d, id)| TrackedObject {
                id: id.unwrap_or_else(|| {
                    next_id += 1;
                    next_id - 1
                }),
                label: d.label.clone(),
                score: d.score,
                bbox: d.bbox,
                first_seen: info.captured_at,
                stationary_since: None,
                detected: true,
            })
            .collect();
        out.push(tracks.clone());
        previous = tracks;
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
struct Quality {
    tracks: usize,
    /// Tracks born away from the border after the first frames.
    interior_births: usize,
    /// Tracks ending away from the border before the last frames.
    interior_deaths: usize,
    /// Jumps of a track's feet between consecutive detector runs on it.
    switches: usize,
    /// Mean frames per track.
    mean_length: f32,
}

impl Quality {
    fn fragmentation(&self) -> usize {
        self.interior_births + self.interior_deaths
    }
}

fn measure(frames: &[Vec<TrackedObject>]) -> Quality {
    let (w, h) = {
        let info = &detections()[0].0;
        (info.width as f32, info.height as f32)
    };
    let interior = |b: &BBox| {
        b.x1 > BORDER * w
            && b.x2 < (1.0 - BORDER) * w
            && b.y1 > BORDER * h
            && b.y2 < (1.0 - BORDER) * h
    };
    // id -> (first frame, first box, last frame, last box, frames)
    let mut life: HashMap<u64, (usize, BBox, usize, BBox, usize)> = HashMap::new();
    let mut switches = 0;
    let mut last_detected: HashMap<u64, (usize, BBox)> = HashMap::new();
    for (i, tracks) in frames.iter().enumerate() {
        for t in tracks {
            let e = life.entry(t.id).or_insert((i, t.bbox, i, t.bbox, 0));
            e.2 = i;
            e.3 = t.bbox;
            e.4 += 1;
            if !t.detected {
                continue;
            }
            // Consecutive detector runs on the track (1 to 3 frames apart, as the intervals).
            if let Some((j, before)) = last_detected.insert(t.id, (i, t.bbox))
                && i - j <= 3
            {
                // Where the rules see the object: its feet. A box that only grows or shrinks
                // upwards (a person behind another, merged for a frame) moves them little.
                let (a, b) = (before.bottom_center(), t.bbox.bottom_center());
                if (a.x - b.x).hypot(a.y - b.y) > JUMP * before.height().max(1.0) {
                    if std::env::var_os("SKYNET_TRACE_SWITCHES").is_some() {
                        eprintln!(
                            "jump: frame {i} track {} {before:?} -> {:?} score {}",
                            t.id, t.bbox, t.score
                        );
                    }
                    switches += 1;
                }
            }
        }
    }
    let n = frames.len();
    let mut q = Quality {
        tracks: life.len(),
        switches,
        ..Quality::default()
    };
    for &(first, first_box, last, last_box, _) in life.values() {
        if first >= EDGE_FRAMES && interior(&first_box) {
            q.interior_births += 1;
        }
        if last + EDGE_FRAMES < n && interior(&last_box) {
            q.interior_deaths += 1;
        }
    }
    q.mean_length = life.values().map(|e| e.4).sum::<usize>() as f32 / life.len().max(1) as f32;
    q
}

#[test]
fn tracker_on_vtest_keeps_ids_better_than_a_naive_tracker() {
    assert_eq!(detections().len(), 795);
    let ours = measure(&track(TrackerSettings::default(), 1));
    let reference = measure(&naive(0.5, 0.3));
    eprintln!("vtest.avi, detector at every frame:\n  tracker: {ours:?}\n  naive:   {reference:?}");
    // Bounds: see the constants below (measured value plus a margin); and always far better
    // than the naive tracker (measured: 25 times less fragmentation, tracks 6 times longer).
    assert!(
        ours.fragmentation() <= FRAGMENTATION_BOUND,
        "fragmentation {} > {FRAGMENTATION_BOUND}: {ours:?}",
        ours.fragmentation()
    );
    assert!(
        ours.switches <= SWITCH_BOUND,
        "ID switches {} > {SWITCH_BOUND}: {ours:?}",
        ours.switches
    );
    assert!(
        ours.fragmentation() * 5 <= reference.fragmentation() && ours.tracks < reference.tracks,
        "not clearly better than the naive tracker: {ours:?} vs {reference:?}"
    );
    assert!(
        ours.mean_length >= 2.0 * reference.mean_length,
        "{ours:?} vs {reference:?}"
    );
}

#[test]
fn inferring_every_2nd_or_3rd_frame_fragments_little_more() {
    let every = measure(&track(TrackerSettings::default(), 1));
    for interval in [2, 3] {
        let q = measure(&track(TrackerSettings::default(), interval));
        eprintln!("vtest.avi, detector every {interval} frames: {q:?} (every frame: {every:?})");
        // Bound: the every-frame value plus the measured rise and a margin (see the constants).
        let bound = every.fragmentation() + INTERVAL_EXTRA_FRAGMENTATION;
        assert!(
            q.fragmentation() <= bound,
            "interval {interval}: fragmentation {} > {bound}: {q:?}",
            q.fragmentation()
        );
        assert!(q.switches <= SWITCH_BOUND, "interval {interval}: {q:?}");
    }
}

// The bounds: the values measured when the test was written (YOLOX-Nano on ONNX Runtime's
// CPU provider, default TrackerSettings) plus a margin for detector scores that differ
// slightly between ONNX Runtime builds and CPUs. Measured, with the detector at every frame:
// 25 person tracks, fragmentation 10 (6 interior births + 4 interior deaths), 4 jumps (boxes
// that grow by a hidden person's legs or a second person behind, rather than true takeovers:
// the naive tracker, which never matches below IoU 0.3, has 1), mean track 206 frames; the
// naive tracker: 145 tracks, fragmentation 250, mean 33 frames. Every 2nd frame:
// fragmentation 13 (+3), 3 jumps; every 3rd: 19 (+9), 0 jumps.

/// Measured 10; margin 4.
const FRAGMENTATION_BOUND: usize = 14;
/// Measured 4 (every frame), 3 and 0 (every 2nd, 3rd); margin 2.
const SWITCH_BOUND: usize = 6;
/// Measured +3 (every 2nd frame) and +9 (every 3rd); margin 4.
const INTERVAL_EXTRA_FRAGMENTATION: usize = 13;

/// Crossings of a line across the whole frame at mid-height, (in, out), with the detector
/// every `interval` frames.
fn line_counts(interval: usize) -> (usize, usize) {
    use skynet_core::Component;
    use skynet_core::{DeviceId, GridId, OwnerKind};
    use skynet_detect::{
        BuildRule, CameraRules, LineCrossingConfig, RuleBuildContext, RuleContext,
    };
    let config: LineCrossingConfig =
        toml::from_str("name = \"mid\"\nline = [[0.0, 0.5], [1.0, 0.5]]\n").unwrap();
    let labels = ["person".to_string()];
    let config = config
        .validate(&RuleContext {
            camera: "vtest",
            zones: &[],
            model: "yolox_nano",
            labels: &labels,
            allowed: None,
        })
        .unwrap();
    let camera = DeviceId::new("vtest");
    let mut rules = CameraRules {
        rules: vec![config.build(&RuleBuildContext { camera: &camera })],
        camera,
        grid: GridId::new("G-0101"),
        owner: OwnerKind::CityManagement,
    };
    let (mut inward, mut outward) = (0, 0);
    for ((info, _), tracks) in detections()
        .iter()
        .zip(track(TrackerSettings::default(), interval))
    {
        let frame = AnalysedFrame {
            info: info.clone(),
            detections: Vec::new(),
            inference: std::time::Duration::ZERO,
            inferred: true,
            tracks,
        };
        for o in rules.apply(&frame) {
            match o.evidence.extra["direction"].as_str() {
                Some("in") => inward += 1,
                _ => outward += 1,
            }
        }
    }
    (inward, outward)
}

#[test]
fn line_counts_with_the_detector_every_3rd_frame_agree_with_every_frame() {
    let every = line_counts(1);
    let third = line_counts(3);
    eprintln!(
        "vtest.avi, crossings of y = 0.5 (in, out): every frame {every:?}, every 3rd {third:?}"
    );
    // Bounds: the measured counts and differences plus a margin (see the constants).
    assert!(every.0 + every.1 >= LINE_COUNT_MIN, "{every:?}");
    for (a, b) in [(every.0, third.0), (every.1, third.1)] {
        assert!(
            a.abs_diff(b) <= LINE_COUNT_TOLERANCE,
            "{every:?} vs {third:?}"
        );
    }
}

/// Measured 32 crossings (19 in, 13 out) with the detector at every frame; margin 7.
const LINE_COUNT_MIN: usize = 25;
/// Measured (19, 12) every 3rd frame against (19, 13): differences 0 and 1; margin 1.
const LINE_COUNT_TOLERANCE: usize = 2;
