//! Frames per second of the whole pipeline on vtest.avi with 1, 4 and 8 file cameras at full
//! speed, each against two references measured in the same run on the same machine:
//!
//! - the limit: decode alone (GStreamer to BGR, the pipeline's source stage) together with
//!   inference alone on pre-processed tensors, with the pipeline's worker layout;
//! - a Python OpenCV + onnxruntime script doing the same work per frame with the same thread
//!   budget (benches/baseline/yolox_streams.py, in the venv benches/baseline/setup.sh makes).
//!
//! Then latency: per-call detector latency (p50, p99), and the process's CPU per camera with
//! cameras paced in real time and analysed at `fps = 5`.
//!
//! `cargo bench --bench pipeline`. Environment:
//! - `SKYNET_BENCH_FRAMES`: frames per camera (default 795, the whole file);
//! - `SKYNET_BENCH_CAMERAS`: camera counts of the throughput part (default `1,4,8`);
//! - `SKYNET_BENCH_CPU_CAMERAS`: camera counts of the CPU part (default `1,4`);
//! - `SKYNET_BENCH_CPU_SECONDS`: measured seconds per CPU run (default 30, after 5 s to settle);
//! - `SKYNET_BENCH_PART`: `throughput`, `latency` or `cpu` to run one part (default all).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skynet::{RunOptions, paths, pipeline};
use skynet_core::{Frame, OverloadPolicy, Shutdown, Watermark, stage_queue};
use skynet_detect::{
    Detector, DetectorOptions, ImageView, ModelManifest, OnnxDetector, OnnxRuntime,
};
use skynet_ingest::{FrameOutput, FrameSource, GstSource, GstSourceOptions};

// The tests' helpers find the media, model and weights the same way for the benchmark.
#[path = "../tests/common/mod.rs"]
mod common;

/// Frames per second of wall-clock time, and this process's CPU time (all its threads) per
/// frame over the same span. On a machine shared with other work the wall-clock figure moves
/// with their load; the CPU time per frame much less, so both are reported.
#[derive(Clone, Copy)]
struct Rate {
    fps: f64,
    cpu_ms: f64,
}

impl Rate {
    fn over(frames: u64, started: Instant, cpu_before: Duration) -> Self {
        let frames = frames.max(1) as f64;
        Self {
            fps: frames / started.elapsed().as_secs_f64(),
            cpu_ms: (process_cpu() - cpu_before).as_secs_f64() * 1000.0 / frames,
        }
    }
}

/// Decodes `frames` frames through the pipeline's source stage; returns frames/s and the
/// first `keep` frames.
fn decode_alone(video: &Path, frames: u64, keep: usize) -> (Rate, Vec<Frame>) {
    let (queue, rx) = stage_queue::<Frame>("bench", "bench", 4, OverloadPolicy::Block);
    let out = FrameOutput::new(queue, Watermark::new(false));
    let mut source = GstSource::new(
        skynet_core::DeviceId::new("bench"),
        GstSourceOptions {
            max_frames: Some(frames),
            // As the pipeline does: converted and scaled to the model's input in one step.
            max_size: Some((416, 416)),
            ..GstSourceOptions::new(video.display().to_string())
        },
    );
    let (started, cpu_before) = (Instant::now(), process_cpu());
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
    (Rate::over(n, started, cpu_before), kept)
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
/// on already letterboxed input.
fn inference_alone(
    runtime: &OnnxRuntime,
    manifest: &Arc<ModelManifest>,
    input: &Frame,
    frames: u64,
    workers: usize,
    threads: usize,
) -> Rate {
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
    let (started, cpu_before) = (Instant::now(), process_cpu());
    std::thread::scope(|scope| {
        for (mut d, geometry) in prepared {
            scope.spawn(move || {
                for _ in 0..per_worker {
                    d.run(geometry, size).expect("inference");
                }
            });
        }
    });
    Rate::over(per_worker * workers as u64, started, cpu_before)
}

/// How the benchmark's cameras are paced and analysed.
#[derive(Clone, Copy)]
enum Pace {
    /// Files read as fast as the pipeline takes them, every frame to the detector (motion
    /// gating off), as the Python baseline and the limit do: the same work per frame.
    FullSpeed { frames: u64 },
    /// Files played at their frame rate (vtest.avi: 10 frames/s) and looped, as live
    /// cameras, analysed at `fps` with the default motion gating.
    Realtime { fps: f64 },
}

/// A pipeline config with `cameras` cameras, each reading vtest.avi, with one zone rule each.
fn cameras_config(dir: &Path, cameras: usize, pace: Pace) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    let mut text = format!(
        r#"
[node]
name = "bench-node"

[grids]
file = "{grids}"

[detect]
model = "{model}"
workers = 2
intra_threads = 1

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
"#,
        grids = esc(&common::repo().join("configs/demo-grids.geojson")),
        model = esc(&common::manifest_path()),
        dir = esc(dir),
    );
    let pacing = match pace {
        Pace::FullSpeed { frames } => {
            format!("max_frames = {frames}\nmotion = {{ enabled = false }}")
        }
        Pace::Realtime { fps } => format!("realtime = true\nloop = true\nfps = {fps:?}"),
    };
    for i in 0..cameras {
        text.push_str(&format!(
            r#"
[[cameras]]
id = "cam-{i:02}"
owner = "city_management"
uri = "{media}"
grid = "G-0102"
{pacing}

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
            media = esc(&common::media("vtest.avi")),
            zone = common::WALKWAY,
        ));
    }
    text
}

/// The whole pipeline on `cameras` cameras at full speed; returns frames analysed per second
/// (all cameras together) and the run's summary.
fn whole_pipeline(cameras: usize, frames: u64) -> (Rate, skynet::RunSummary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::pipeline_config(
        dir.path(),
        &cameras_config(dir.path(), cameras, Pace::FullSpeed { frames }),
    );
    let (started, cpu_before) = (Instant::now(), process_cpu());
    let summary = pipeline::run(&config, RunOptions::default()).expect("pipeline");
    (
        Rate::over(summary.frames_analysed, started, cpu_before),
        summary,
    )
}

/// The Python baseline's interpreter: the venv benches/baseline/setup.sh makes (it is run
/// here, and returns at once when the pinned packages are there). `None` when it cannot be set
/// up (no network on first use); the bench goes on without the baseline.
fn python_baseline() -> Option<PathBuf> {
    let setup = common::repo().join("benches/baseline/setup.sh");
    let outcome = Command::new("bash")
        .arg(&setup)
        .env("SKYNET_DATA_DIR", paths::data_dir())
        .stdout(Stdio::null())
        .output();
    match outcome {
        Ok(out) if out.status.success() => Some(paths::data_dir().join("bench-venv/bin/python")),
        Ok(out) => {
            println!(
                "  python baseline unavailable: {} failed: {}",
                setup.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!(
                "  python baseline unavailable: cannot run {}: {e}",
                setup.display()
            );
            None
        }
    }
}

/// What the Python baseline printed for one run.
struct PythonRun {
    rate: Rate,
    frames: u64,
}

/// Runs the Python baseline on `streams` streams of `frames` frames with the pipeline's
/// thread budget (2 sessions x 1 intra-op thread).
fn python_streams(python: &Path, streams: usize, frames: u64) -> Result<PythonRun, String> {
    let model = common::weight_dirs()
        .into_iter()
        .map(|d| d.join("yolox_nano.onnx"))
        .find(|p| p.is_file())
        .ok_or("yolox_nano.onnx not found; run scripts/setup.sh")?;
    let out = Command::new(python)
        .arg(common::repo().join("benches/baseline/yolox_streams.py"))
        .arg("--model")
        .arg(&model)
        .arg("--video")
        .arg(common::media("vtest.avi"))
        .args([
            "--streams",
            &streams.to_string(),
            "--frames",
            &frames.to_string(),
        ])
        .args(["--workers", "2", "--intra-threads", "1"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the baseline failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the baseline printed no JSON ({e})"))?;
    let frames = report["frames"].as_u64().ok_or("no frames")?;
    Ok(PythonRun {
        rate: Rate {
            fps: report["frames_per_s"].as_f64().ok_or("no frames_per_s")?,
            cpu_ms: report["cpu_seconds"].as_f64().ok_or("no cpu_seconds")? * 1000.0
                / frames.max(1) as f64,
        },
        frames,
    })
}

/// The per-frame costs of decode and letterbox, measured once per run (they do not depend on
/// how many cameras share them), from which each camera count's limit is worked out with
/// inference figures measured right before it: on a shared machine the load drifts over a
/// run of several minutes, and the limit should see the load the pipeline sees.
struct Costs {
    decode: Rate,
    pre_ms: f64,
    cores: usize,
}

impl Costs {
    /// The lower of two limits: the slowest stage if each had cores of its own, and the CPU
    /// budget when decode, letterbox and inference share the machine's cores.
    fn limit(&self, pipeline_infer_fps: f64, single_thread_infer_fps: f64) -> f64 {
        let stage_limit = self.decode.fps.min(pipeline_infer_fps);
        let cpu_ms = 1000.0 / self.decode.fps + self.pre_ms + 1000.0 / single_thread_infer_fps;
        let cpu_limit = self.cores as f64 * 1000.0 / cpu_ms;
        stage_limit.min(cpu_limit)
    }

    /// CPU time per frame of the stages alone, added up: decode, letterbox, inference with
    /// the pipeline's layout.
    fn cpu_ms(&self, pipeline_infer: Rate) -> f64 {
        self.decode.cpu_ms + self.pre_ms + pipeline_infer.cpu_ms
    }
}

fn references(
    runtime: &OnnxRuntime,
    manifest: &Arc<ModelManifest>,
    video: &Path,
    frames: u64,
    cores: usize,
) -> (Costs, Vec<Frame>) {
    // GStreamer's first start in a process loads its plugin registry; keep that out of the
    // figure, as the pipeline runs after it.
    decode_alone(video, 8, 0);
    let (decode, sample) = decode_alone(video, frames, 32);
    println!(
        "  decode alone (GStreamer -> BGR)            {:8.1} frames/s  {:6.2} ms/frame  CPU {:6.2} ms/frame",
        decode.fps,
        1000.0 / decode.fps,
        decode.cpu_ms
    );

    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    let mut detector = OnnxDetector::new(runtime, Arc::clone(manifest), options).expect("session");
    let preprocess = preprocess_alone(&mut detector, &sample, 4);
    let pre_ms = preprocess.as_secs_f64() * 1000.0;
    println!(
        "  letterbox alone (one thread)               {:8.1} frames/s  {pre_ms:6.2} ms/frame",
        1000.0 / pre_ms
    );

    // One session of two threads, for the record: two sessions of one thread beat it.
    let rate = inference_alone(runtime, manifest, &sample[0], frames, 1, 2);
    println!(
        "  inference alone, 1 session x 2 threads     {:8.1} frames/s  {:6.2} ms/frame  CPU {:6.2} ms/frame",
        rate.fps,
        1000.0 / rate.fps,
        rate.cpu_ms
    );
    (
        Costs {
            decode,
            pre_ms,
            cores,
        },
        sample,
    )
}

fn throughput(
    runtime: &OnnxRuntime,
    manifest: &Arc<ModelManifest>,
    frames: u64,
    camera_counts: &[usize],
) -> Vec<Frame> {
    let video = common::media("vtest.avi");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "throughput: vtest.avi 768x576, {frames} frames per camera, YOLOX-Nano 416x416, {cores} cores, \
         2 workers x 1 thread, motion gating off"
    );
    let (costs, sample) = references(runtime, manifest, &video, frames, cores);
    let python = python_baseline();

    println!();
    println!(
        "  wall clock: frames/s, all cameras together; CPU: this process's CPU ms per frame \
         (limit: the stages alone added up); ratios are limit or python over skynet's cost"
    );
    println!(
        "  {:>7}  {:>10}  {:>10}  {:>8}  {:>12}  {:>13}  {:>10}  {:>10}  {:>9}  {:>11}  {:>12}",
        "cameras",
        "skynet fps",
        "python fps",
        "limit",
        "skynet/limit",
        "skynet/python",
        "skynet CPU",
        "python CPU",
        "limit CPU",
        "CPU: limit/",
        "CPU: python/"
    );
    for &cameras in camera_counts {
        // The limit's inference part, measured right before this count's runs.
        let infer_2x1 = inference_alone(runtime, manifest, &sample[0], frames, 2, 1);
        let infer_1x1 = inference_alone(runtime, manifest, &sample[0], frames, 1, 1);
        let limit = costs.limit(infer_2x1.fps, infer_1x1.fps);
        let limit_cpu_ms = costs.cpu_ms(infer_2x1);
        let (skynet, summary) = whole_pipeline(cameras, frames);
        let python_run = python
            .as_deref()
            .map(|python| python_streams(python, cameras, frames));
        let dash = || "-".to_string();
        let (python_fps, python_ratio, python_cpu, python_cpu_ratio) = match &python_run {
            Some(Ok(run)) => (
                format!("{:.1}", run.rate.fps),
                format!("{:.2}", skynet.fps / run.rate.fps),
                format!("{:.2}", run.rate.cpu_ms),
                format!("{:.2}", run.rate.cpu_ms / skynet.cpu_ms),
            ),
            _ => (dash(), dash(), dash(), dash()),
        };
        println!(
            "  {cameras:>7}  {:>10.1}  {python_fps:>10}  {limit:>8.1}  {:>12.2}  {python_ratio:>13}  {:>10.2}  {python_cpu:>10}  {limit_cpu_ms:>9.2}  {:>11.2}  {python_cpu_ratio:>12}",
            skynet.fps,
            skynet.fps / limit,
            skynet.cpu_ms,
            limit_cpu_ms / skynet.cpu_ms,
        );
        println!(
            "           limit: inference alone 2 x 1 {:.1} frames/s (CPU {:.2} ms/frame), 1 x 1 {:.1}; decode alone {:.1}",
            infer_2x1.fps, infer_2x1.cpu_ms, infer_1x1.fps, costs.decode.fps
        );
        println!(
            "           skynet: {} analysed, {} dropped, {} incident revisions",
            summary.frames_analysed, summary.frames_dropped, summary.incident_revisions,
        );
        match python_run {
            Some(Ok(run)) => println!("           python: {} frames", run.frames),
            Some(Err(e)) => println!("           python: {e}"),
            None => {}
        }
    }
    sample
}

/// Per-call latencies of `detect` (letterbox, inference and box decoding) on decoded frames:
/// one session alone, then two sessions calling at once as the pipeline's two workers do.
fn latency(runtime: &OnnxRuntime, manifest: &Arc<ModelManifest>, sample: &[Frame], calls: usize) {
    println!();
    println!(
        "latency: YOLOX-Nano detect() per call (letterbox + inference + decode), {calls} calls per session"
    );
    let options = DetectorOptions {
        weight_dirs: common::weight_dirs(),
        ..DetectorOptions::default()
    };
    for sessions in [1usize, 2] {
        let mut detectors: Vec<OnnxDetector> = (0..sessions)
            .map(|_| {
                OnnxDetector::new(runtime, Arc::clone(manifest), options.clone()).expect("session")
            })
            .collect();
        for d in &mut detectors {
            d.detect(&ImageView::of_frame(&sample[0]).expect("frame"))
                .expect("warm-up");
        }
        let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = detectors
                .into_iter()
                .map(|mut d| {
                    scope.spawn(move || {
                        (0..calls)
                            .map(|i| {
                                let image =
                                    ImageView::of_frame(&sample[i % sample.len()]).expect("frame");
                                let started = Instant::now();
                                d.detect(&image).expect("inference");
                                started.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("latency thread"))
                .collect()
        });
        latencies.sort();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        };
        println!(
            "  {:<40} p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
            if sessions == 1 {
                "1 session x 1 thread, alone"
            } else {
                "2 sessions x 1 thread, calling at once"
            },
            at(0.50),
            at(0.99),
            at(1.0)
        );
    }
}

/// User plus system CPU time of this process (all its threads) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The pipeline with `cameras` cameras paced as live ones and analysed at `fps`; the process's
/// CPU over `measured` after `settle`, per camera (100 % is one core).
fn cpu_per_camera(cameras: usize, fps: f64, settle: Duration, measured: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::pipeline_config(
        dir.path(),
        &cameras_config(dir.path(), cameras, Pace::Realtime { fps }),
    );
    let shutdown = Shutdown::new();
    let options = RunOptions {
        shutdown: shutdown.clone(),
        ..RunOptions::default()
    };
    let run = std::thread::spawn(move || pipeline::run(&config, options).expect("pipeline"));
    std::thread::sleep(settle);
    let (cpu_before, wall_before) = (process_cpu(), Instant::now());
    std::thread::sleep(measured);
    let (cpu, wall) = (process_cpu() - cpu_before, wall_before.elapsed());
    shutdown.trigger();
    let summary = run.join().expect("pipeline thread");
    let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "  {cameras:>7}  {:>12.1} %  {:>13.1} %  {:>20.2}  {:>9}",
        share,
        share / cameras as f64,
        summary.frames_analysed as f64 / summary.elapsed.as_secs_f64() / cameras as f64,
        summary.frames_dropped,
    );
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let frames: u64 = env_number("SKYNET_BENCH_FRAMES", 795);
    let camera_counts = env_list("SKYNET_BENCH_CAMERAS", &[1, 4, 8]);
    let cpu_cameras = env_list("SKYNET_BENCH_CPU_CAMERAS", &[1, 4]);
    let cpu_seconds: f64 = env_number("SKYNET_BENCH_CPU_SECONDS", 30.0);
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_default();
    let runs = |name: &str| part.is_empty() || part == name;

    let runtime =
        OnnxRuntime::init(None, &[paths::data_dir()]).expect("ONNX Runtime: run scripts/setup.sh");
    let manifest = Arc::new(ModelManifest::load(&common::manifest_path()).expect("manifest"));

    let sample = if runs("throughput") {
        throughput(&runtime, &manifest, frames, &camera_counts)
    } else {
        decode_alone(&common::media("vtest.avi"), 32, 32).1
    };
    if runs("latency") {
        latency(
            &runtime,
            &manifest,
            &sample,
            (frames as usize).clamp(20, 500),
        );
    }
    if runs("cpu") {
        let fps = 5.0;
        let measured = Duration::from_secs_f64(cpu_seconds.max(1.0));
        let settle = Duration::from_secs(5).min(measured);
        println!();
        println!(
            "CPU per camera: vtest.avi paced at 10 frames/s and looped, analysed at fps = {fps}, \
             motion gating on (default), CPU over {:.0} s after {:.0} s; 100 % = one core",
            measured.as_secs_f64(),
            settle.as_secs_f64()
        );
        println!(
            "  {:>7}  {:>14}  {:>15}  {:>20}  {:>9}",
            "cameras", "process CPU", "CPU per camera", "analysed/s per camera", "dropped"
        );
        for &cameras in &cpu_cameras {
            cpu_per_camera(cameras, fps, settle, measured);
        }
    }
    if let Some(peak) = peak_resident_mib() {
        println!();
        println!("peak resident memory of this process {peak:.1} MiB");
    }
}

/// VmHWM from /proc: the most memory this process has held, all phases together.
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
