//! Key-frame-only decoding (issue 26 part 1): CPU per camera at 1 frame/s analysis, decoding
//! key frames only against decoding every frame, on 1080p H.264 with a 1 s GOP.
//!
//! The clips: the first 30 s of vtest.avi (people walking, 10 frames/s) scaled to 1920x1080,
//! encoded with x264enc (`veryfast`, 4 Mbit/s) with a key frame every second, made in a temp
//! dir: at its own 10 frames/s (a key frame every 10 frames, as the tests' RTSP camera), and at
//! 25 frames/s (a key frame every 25; the frames in between repeated, so its delta frames are
//! cheaper to decode than a real 25 frames/s scene's, which makes its ratio a conservative
//! one). Each mode reads a clip through the camera source as the pipeline builds it (`fps = 1`,
//! frames scaled to the detector's 416x416, BGR, one decoder thread as for a live camera), as
//! fast as it goes; the figure is the process's CPU time (user + system, `getrusage`) per
//! second of video, i.e. the share of one core a camera costs. Modes alternate, best of
//! `SKYNET_BENCH_RUNS` (default 3) each; the ratio is key frames only against full.
//!
//! `cargo bench -p skynet-tests --bench keyframes`

use std::path::{Path, PathBuf};
use std::time::Instant;

use skynet_core::{
    Component, ConfigContext, DeviceId, Frame, OverloadPolicy, Shutdown, Watermark, stage_queue,
};
use skynet_ingest::{BuildSource, FrameDelivery, FrameOutput, GstSourceConfig, SourceBuildContext};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

/// Seconds of video per clip.
const SECONDS: u32 = 30;

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("skynet key-frame-only decoding benchmark, {cores} cores");
    let runs: usize = std::env::var("SKYNET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    for fps in [10, 25] {
        let clip = clip_1080p(dir.path(), fps);
        measure(&clip, fps, runs);
    }
}

fn measure(clip: &Path, fps: u32, runs: usize) {
    let seconds = f64::from(SECONDS);
    let modes = ["false", "true", "\"auto\""];
    let mut best = [(f64::INFINITY, 0usize, 0.0f64); 3];
    for _ in 0..runs {
        for (i, mode) in modes.iter().enumerate() {
            let (cpu, frames, wall) = run(clip, mode);
            if cpu < best[i].0 {
                best[i] = (cpu, frames, wall);
            }
        }
    }
    println!(
        "1080p H.264 at {fps} frames/s, a key frame every second, {seconds:.0} s of video, analysed at fps = 1, best of {runs}:"
    );
    for (mode, (cpu, frames, wall)) in modes.iter().zip(best) {
        println!(
            "  keyframes_only = {mode:7}: {frames} frames analysed, {:.1} ms CPU per second of video ({:.1} % of a core per camera), {wall:.2} s wall",
            cpu / seconds * 1000.0,
            cpu / seconds * 100.0
        );
    }
    println!(
        "  key frames only / full decoding: {:.3} of the CPU (goal <= 0.3); auto / full: {:.3}",
        best[1].0 / best[0].0,
        best[2].0 / best[0].0
    );
}

/// 1080p H.264 in MP4 at `fps`, a key frame every second.
fn clip_1080p(dir: &Path, fps: u32) -> PathBuf {
    support::clip_1080p(
        &dir.join(format!("vtest-1080p-{fps}fps-gop1s.mp4")),
        &[
            "videorate".into(),
            "!".into(),
            format!("video/x-raw,framerate={fps}/1"),
            "!".into(),
            "identity".into(),
            format!("eos-after={}", SECONDS * fps),
        ],
        &[format!("key-int-max={fps}")],
    )
}

/// User + system CPU time of the whole process so far, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One pass over `clip` with `keyframes_only = mode`: (CPU seconds, frames, wall seconds).
fn run(clip: &Path, mode: &str) -> (f64, usize, f64) {
    let text = format!(
        "uri = \"{}\"\nkeyframes_only = {mode}\ndecode_threads = 1",
        clip.display()
    );
    let config: GstSourceConfig = toml::from_str(&text).expect("config");
    let config = config
        .validate(&ConfigContext::new(Path::new("/nonexistent/site.toml")))
        .expect("valid config");
    let delivery = FrameDelivery {
        fps: Some(1.0),
        max_size: Some((416, 416)),
        clip_ring: None,
    };
    let camera = DeviceId::new("bench");
    let mut source = config
        .build(&SourceBuildContext {
            camera: &camera,
            delivery: &delivery,
        })
        .expect("source");
    let (queue, rx) = stage_queue::<Frame>("bench", "bench", 64, OverloadPolicy::Block);
    let out = FrameOutput::new(queue, Watermark::new(false));
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        source.run(&out, &Shutdown::new()).expect("decode");
    });
    let frames = rx.iter().count();
    producer.join().expect("decoder thread");
    (
        process_cpu_seconds() - cpu,
        frames,
        started.elapsed().as_secs_f64(),
    )
}
