//! Frames per second of the whole pipeline on vtest.avi, against two references measured in
//! the same run on the same machine:
//!
//! - decode alone (GStreamer to BGR, the pipeline's source stage, no detection);
//! - inference alone on pre-processed frames, with the pipeline's worker layout.
//!
//! The pipeline is reported as a fraction of the limit those imply. Run with
//! `cargo bench --bench pipeline`; `SKYNET_BENCH_FRAMES` sets the frame count (default 795,
//! the whole file).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skynet::{RunOptions, paths, pipeline};
use skynet_core::{Frame, OverloadPolicy, Shutdown, Watermark, stage_queue};
use skynet_detect::{DetectorOptions, ImageView, ModelManifest, OnnxDetector, OnnxRuntime};
use skynet_ingest::{FrameOutput, FrameSource, GstSource, GstSourceOptions};

// The tests' helpers find the media, model and weights the same way for the benchmark.
#[path = "../tests/common/mod.rs"]
mod common;

/// Decodes `frames` frames through the pipeline's source stage; returns frames/s and the
/// first `keep` frames.
fn decode_alone(video: &Path, frames: u64, keep: usize) -> (f64, Vec<Frame>) {
    let (queue, rx) = stage_queue::<Frame>("bench", "bench", 4, OverloadPolicy::Block);
    let out = FrameOutput::new(queue, Watermark::new(false));
    let mut source = GstSource::new(
        skynet_core::CameraId::new("bench"),
        GstSourceOptions {
            max_frames: Some(frames),
            // As the pipeline does: converted and scaled to the model's input in one step.
            max_size: Some((416, 416)),
            ..GstSourceOptions::new(video.display().to_string())
        },
    );
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        source.run(&out, &Shutdown::new()).expect("decode");
    });
    let mut kept = Vec::with_capacity(keep);
    let mut n = 0u64;
    for frame in rx.iter() {
        if kept.len() < keep {
            kept.push(frame);
        }
        n += 1;
    }
    producer.join().expect("decoder thread");
    (n as f64 / started.elapsed().as_secs_f64(), kept)
}

/// Letterboxing alone: mean time per frame on one thread.
fn preprocess_alone(detector: &mut OnnxDetector, inputs: &[Frame], rounds: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        for f in inputs {
            detector.preprocess(&ImageView::of_frame(f).expect("frame"));
        }
    }
    started.elapsed() / (rounds * inputs.len()) as u32
}

/// Runs `frames` inferences split over `workers` sessions of `threads` intra-op threads each,
/// on already letterboxed input. Returns frames/s.
fn inference_alone(
    runtime: &OnnxRuntime,
    manifest: &Arc<ModelManifest>,
    input: &Frame,
    frames: u64,
    workers: usize,
    threads: usize,
) -> f64 {
    let options = DetectorOptions {
        intra_threads: threads,
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    let detectors: Vec<OnnxDetector> = (0..workers)
        .map(|_| {
            OnnxDetector::new(runtime, Arc::clone(manifest), options.clone()).expect("session")
        })
        .collect();
    let per_worker = frames / workers as u64;
    let size = (input.image.width, input.image.height);
    let mut prepared = Vec::new();
    for mut d in detectors {
        let geometry = d.preprocess(&ImageView::of_frame(input).expect("frame"));
        d.run(geometry, size).expect("warm-up");
        prepared.push((d, geometry));
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (mut d, geometry) in prepared {
            scope.spawn(move || {
                for _ in 0..per_worker {
                    d.run(geometry, size).expect("inference");
                }
            });
        }
    });
    (per_worker * workers as u64) as f64 / started.elapsed().as_secs_f64()
}

fn whole_pipeline(frames: u64) -> (f64, skynet::RunSummary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::pipeline_config(
        dir.path(),
        &common::vtest_config(dir.path(), "bench", common::WALKWAY, frames),
    );
    let started = Instant::now();
    let summary = pipeline::run(&config, RunOptions::default()).expect("pipeline");
    (
        summary.frames_analysed as f64 / started.elapsed().as_secs_f64(),
        summary,
    )
}

fn main() {
    let frames: u64 = std::env::var("SKYNET_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(795);
    let video = common::media("vtest.avi");
    let runtime =
        OnnxRuntime::init(None, &[paths::data_dir()]).expect("ONNX Runtime: run scripts/setup.sh");
    let manifest = Arc::new(ModelManifest::load(&common::manifest_path()).expect("manifest"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "skynet pipeline benchmark: vtest.avi 768x576, {frames} frames, YOLOX-Nano 416x416, {cores} cores"
    );

    let (decode_fps, sample) = decode_alone(&video, frames, 32);
    println!(
        "  decode alone (GStreamer -> BGR)            {decode_fps:8.1} frames/s  {:6.2} ms/frame",
        1000.0 / decode_fps
    );

    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    let mut detector =
        OnnxDetector::new(&runtime, Arc::clone(&manifest), options).expect("session");
    let preprocess = preprocess_alone(&mut detector, &sample, 4);
    let pre_ms = preprocess.as_secs_f64() * 1000.0;
    println!(
        "  letterbox alone (one thread)               {:8.1} frames/s  {pre_ms:6.2} ms/frame",
        1000.0 / pre_ms
    );

    let mut infer = Vec::new();
    for (workers, threads) in [(2usize, 1usize), (1, 2), (1, 1)] {
        let fps = inference_alone(&runtime, &manifest, &sample[0], frames, workers, threads);
        println!(
            "  inference alone, {workers} session(s) x {threads} thread(s)   {fps:8.1} frames/s  {:6.2} ms/frame",
            1000.0 / fps
        );
        infer.push(fps);
    }
    let (pipeline_infer_fps, single_thread_infer_fps) = (infer[0], infer[2]);

    let (pipeline_fps, summary) = whole_pipeline(frames);
    println!(
        "  whole pipeline, 2 workers x 1 thread       {pipeline_fps:8.1} frames/s  ({} analysed, {} dropped, {} incident revisions)",
        summary.frames_analysed, summary.frames_dropped, summary.incident_revisions
    );

    // Two limits: the slowest stage if each had cores of its own, and the CPU budget when
    // decode, letterbox and inference share the machine's cores.
    let stage_limit = decode_fps.min(pipeline_infer_fps);
    let cpu_ms = 1000.0 / decode_fps + pre_ms + 1000.0 / single_thread_infer_fps;
    let cpu_limit = cores as f64 * 1000.0 / cpu_ms;
    let implied = stage_limit.min(cpu_limit);
    println!();
    println!(
        "  implied limit = min(slowest stage {stage_limit:.1}, CPU budget {cpu_limit:.1}) = {implied:.1} frames/s"
    );
    println!(
        "  pipeline / implied limit                   {:8.2}",
        pipeline_fps / implied
    );
    println!(
        "  pipeline / inference alone (2 x 1)         {:8.2}",
        pipeline_fps / pipeline_infer_fps
    );
    println!(
        "  pipeline / decode alone                    {:8.2}",
        pipeline_fps / decode_fps
    );
    if let Some(peak) = peak_resident_mib() {
        println!("  peak resident memory of this process       {peak:8.1} MiB");
    }
}

/// VmHWM from /proc: the most memory this process has held, all phases together.
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
