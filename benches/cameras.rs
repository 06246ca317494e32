//! The camera stage's figures, each against a baseline measured in the same run:
//!
//! - `decode`: frames/s of decode + convert + scale (to the detector's 416x416, BGR) through
//!   the pipeline's source, for vtest.avi and for a 1080p H.264 clip made with x264enc,
//!   against `gst-launch-1.0 filesrc ! decodebin ! fakesink` decoding the same clip.
//! - `cameras`: how many 1080p H.264 RTSP cameras one machine ingests at 5 frames/s analysis
//!   with motion gating on, and the memory each costs.
//! - `memory`: resident memory over time (default 10 minutes) with 8 cameras and a detector
//!   slower than the cameras; the drift between the first and the last minute.
//!
//! `cargo bench --bench cameras` runs all three; `SKYNET_BENCH_PART=decode|cameras|memory`
//! picks one, `SKYNET_BENCH_MEMORY_S` sets the memory run's length and
//! `SKYNET_BENCH_CAMERAS=2,4,8` the camera counts tried.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skynet::{RunOptions, Services, pipeline};
use skynet_core::{Detection, DeviceId, Frame, OverloadPolicy, Shutdown, Watermark, stage_queue};
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_ingest::{FrameOutput, FrameSource, GstSource, GstSourceOptions};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

/// The detector's input size: what the pipeline scales frames to.
const MODEL_SIZE: (u32, u32) = (416, 416);

fn main() {
    // As the `skynet` binary does.
    skynet::memory::limit_malloc_arenas();
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_else(|_| "all".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("skynet camera benchmark, {cores} cores");
    // SKYNET_BENCH_CLIP: another H.264 MP4 to serve (a longer one, say).
    let clip = std::env::var_os("SKYNET_BENCH_CLIP")
        .map(PathBuf::from)
        .unwrap_or_else(clip_1080p);
    if part == "all" || part == "decode" {
        decode(&common::media("vtest.avi"), "vtest.avi 768x576 DivX", 1);
        decode(
            &common::media("vtest.avi"),
            "vtest.avi 768x576 DivX, 2 convert threads",
            2,
        );
        decode(&clip, "1080p H.264 (x264enc)", 1);
        decode(&clip, "1080p H.264 (x264enc), 2 convert threads", 2);
    }
    if part == "all" || part == "cameras" {
        cameras(&clip);
    }
    if part == "all" || part == "memory" {
        memory(&clip);
    }
}

/// vtest.avi scaled to 1920x1080 and encoded as H.264 in MP4 at 10 frames/s (795 frames),
/// made once and kept under target/.
fn clip_1080p() -> PathBuf {
    support::clip_1080p(
        &support::media_dir().join("vtest-1080p.mp4"),
        &[],
        &["key-int-max=20".into()],
    )
}

/// The shortest of `runs` timed runs of `gst-launch-1.0 -q ARGS`, in seconds.
fn best_gst_launch(runs: usize, args: &[String]) -> f64 {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("gst-launch-1.0")
                .arg("-q")
                .args(args)
                .status()
                .expect("gst-launch-1.0");
            assert!(status.success());
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Seconds `gst-launch-1.0 filesrc ! decodebin ! fakesink` takes, best of five.
fn gst_launch_seconds(video: &Path) -> f64 {
    let location = format!("location={}", video.display());
    let args = [
        "filesrc",
        &location,
        "!",
        "decodebin",
        "!",
        "fakesink",
        "sync=false",
    ];
    best_gst_launch(5, &args.map(String::from))
}

/// Seconds from process start to a playing, empty pipeline: what gst-launch pays before its
/// first frame, taken off its time so both sides count decoding only.
fn gst_launch_startup() -> f64 {
    let args = ["fakesrc", "num-buffers=1", "!", "fakesink"];
    best_gst_launch(3, &args.map(String::from))
}

/// Frames/s through the pipeline's source: decode, convert and scale to the model's size,
/// mapped without a copy and queued. Best of five.
fn source_fps(video: &Path, threads: u32) -> (u64, f64) {
    let mut best = (0, 0.0f64);
    for _ in 0..5 {
        let (queue, rx) = stage_queue::<Frame>("bench", "bench", 4, OverloadPolicy::Block);
        let out = FrameOutput::new(queue, Watermark::new(false));
        let mut options = GstSourceOptions::new(video.display().to_string());
        options.max_size = Some(MODEL_SIZE);
        options.convert_threads = threads;
        let mut source = GstSource::new(DeviceId::new("bench"), options);
        let started = Instant::now();
        let producer = std::thread::spawn(move || {
            source.run(&out, &Shutdown::new()).expect("decode");
        });
        let n = rx.iter().count() as u64;
        producer.join().expect("decoder thread");
        let fps = n as f64 / started.elapsed().as_secs_f64();
        if fps > best.1 {
            best = (n, fps);
        }
    }
    best
}

fn decode(video: &Path, name: &str, threads: u32) {
    let startup = gst_launch_startup();
    let launch = gst_launch_seconds(video);
    // Both decode every frame of the same file.
    let (frames, ours) = source_fps(video, threads);
    let launch_fps = frames as f64 / (launch - startup).max(1e-3);
    println!("  {name}: {frames} frames");
    println!(
        "    gst-launch-1.0 decodebin ! fakesink      {launch_fps:8.1} frames/s  ({launch:.2} s, less {startup:.2} s start-up)"
    );
    println!(
        "    skynet source, decode+convert+scale   {ours:8.1} frames/s  (to fit {}x{}, BGR)",
        MODEL_SIZE.0, MODEL_SIZE.1
    );
    println!(
        "    skynet / gst-launch                   {:8.2}",
        ours / launch_fps
    );
}

/// Finds nothing, after `delay`.
struct NullDetector {
    delay: Duration,
}

impl Detector for NullDetector {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(Vec::new())
    }
}

use support::{H264Server as Server, cpu_seconds};

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// Camera ids are unique per run: the metrics recorder lives as long as the process.
static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn config_runs() -> usize {
    RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

fn config_for(dir: &Path, port: u16, cameras: usize, fps: f64) -> skynet::PipelineConfig {
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut text = common::vtest_config(dir, "unused", common::NOBODY, 1);
    // Only the RTSP cameras below.
    text.truncate(text.find("[[cameras]]").expect("a camera table"));
    for n in 0..cameras {
        text.push_str(&format!(
            "\n[[cameras]]\nid = \"cam{n}-run{run}\"\nowner = \"police\"\nuri = \"rtsp://127.0.0.1:{port}/cam{n}\"\ngrid = \"G-0101\"\nfps = {fps}\n"
        ));
    }
    common::pipeline_config(dir, &text)
}

/// Runs `cameras` RTSP cameras for `seconds` with `workers` detectors of `delay` each;
/// `sample` is called every second with the seconds since the start.
fn run_cameras(
    clip: &Path,
    cameras: usize,
    seconds: f64,
    delay: Duration,
    workers: usize,
    mut sample: impl FnMut(f64, &Server),
) -> (skynet::RunSummary, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let server = Server::start(port, clip, cameras);
    let config = config_for(dir.path(), port, cameras, 5.0);
    let services = Arc::new(Services::start(None).expect("services"));
    let shutdown = Shutdown::new();
    let detectors: Vec<Box<dyn Detector>> = (0..workers)
        .map(|_| Box::new(NullDetector { delay }) as Box<dyn Detector>)
        .collect();
    let options = RunOptions {
        shutdown: shutdown.clone(),
        services: Some(Arc::clone(&services)),
        detectors: Some(detectors),
        wait_for_shutdown: true,
        ..Default::default()
    };
    let run = std::thread::spawn(move || pipeline::run(&config, options));
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_secs(1));
        sample(started.elapsed().as_secs_f64(), &server);
    }
    let metrics = services.metrics.render();
    shutdown.trigger();
    let summary = run.join().expect("pipeline thread").expect("pipeline");
    (summary, metrics)
}

/// A metric's values for the cameras of the last run (whose ids end in `-run<N>`).
fn per_camera(metrics: &str, name: &str) -> Vec<f64> {
    let run = config_runs().saturating_sub(1);
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{camera=\"cam")))
        .filter(|l| l.contains(&format!("-run{run}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn cameras(clip: &Path) {
    let counts: Vec<usize> = std::env::var("SKYNET_BENCH_CAMERAS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 8, 12, 16, 20, 24]);
    if let [n] = counts[..]
        && std::env::var_os("SKYNET_BENCH_CHILD").is_some()
    {
        cameras_once(clip, n);
        return;
    }
    println!(
        "  1080p H.264 RTSP cameras at 5 frames/s analysis, motion gating on, {CAMERA_SECONDS} s each, each count in a fresh process:"
    );
    println!(
        "    cameras  frames/s per camera (min, mean)  skynet CPU  server CPU  resident MiB (per camera above one)"
    );
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut one = None;
    for n in counts {
        let output = Command::new(&exe)
            .arg("--bench")
            .env("SKYNET_BENCH_PART", "cameras")
            .env("SKYNET_BENCH_CAMERAS", n.to_string())
            .env("SKYNET_BENCH_CHILD", "1")
            .stderr(Stdio::null())
            .output()
            .expect("the benchmark runs itself");
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            println!("    {n:7}  (no result: exit {:?})", output.status);
            continue;
        };
        let v: Vec<f64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
        let [min, mean, cpu, server, rss] = v[..] else {
            continue;
        };
        let base = *one.get_or_insert(rss);
        let per = if n > 1 {
            format!("(+{:.1})", (rss - base) / (n as f64 - 1.0))
        } else {
            String::new()
        };
        println!(
            "    {n:7}  {min:9.2} {mean:9.2}                  {:7.0} %   {:7.0} %   {rss:8.1} {per}",
            cpu * 100.0,
            server * 100.0,
        );
    }
}

const CAMERA_SECONDS: f64 = 30.0;

/// One camera count, in this process; prints `RESULT min mean cpu server rss`.
fn cameras_once(clip: &Path, n: usize) {
    let seconds = CAMERA_SECONDS;
    let mut server_cpu = (0.0, 0.0);
    let mut warm = None;
    let mut rss = 0.0f64;
    let (_, metrics) = run_cameras(clip, n, seconds, Duration::ZERO, 1, |t, server| {
        // The first 10 s connect and fill buffers; measure after.
        if t >= 10.0 && warm.is_none() {
            warm = Some((Instant::now(), cpu_seconds("/proc/self/stat")));
            server_cpu.0 = server.cpu_seconds();
        }
        server_cpu.1 = server.cpu_seconds();
        rss = rss.max(resident_mib());
    });
    let decoded = per_camera(&metrics, "skynet_frames_decoded_total");
    let (min, mean) = if decoded.len() == n {
        (
            decoded.iter().copied().fold(f64::INFINITY, f64::min) / seconds,
            decoded.iter().sum::<f64>() / n as f64 / seconds,
        )
    } else {
        (0.0, 0.0)
    };
    let (cpu, server) = match warm {
        Some((at, cpu)) => {
            let span = at.elapsed().as_secs_f64().max(1e-3);
            (
                (cpu_seconds("/proc/self/stat") - cpu) / span,
                (server_cpu.1 - server_cpu.0) / span,
            )
        }
        None => (0.0, 0.0),
    };
    println!("RESULT {min} {mean} {cpu} {server} {rss}");
}

fn memory(clip: &Path) {
    let seconds: f64 = std::env::var("SKYNET_BENCH_MEMORY_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600.0);
    println!(
        "  memory: 8 cameras (1080p H.264 RTSP, 5 frames/s analysis) and one detector taking 250 ms a frame, {seconds} s:"
    );
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let (summary, metrics) =
        run_cameras(clip, 8, seconds, Duration::from_millis(250), 1, |t, _| {
            samples.push((t, resident_mib()));
            if (t as u64).is_multiple_of(60) {
                println!("    {t:5.0} s  {:8.1} MiB", resident_mib());
            }
        });
    let minute = |from: f64, to: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, m)| *m)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    // The first two minutes connect, fill the queues and the decoders' pools; compare the
    // third minute with the last, and the second too.
    let second = minute(60.0, 120.0);
    let third = minute(120.0, 180.0);
    let last = minute(seconds - 60.0, seconds + 1.0);
    let dropped: f64 = per_camera(&metrics, "skynet_frames_dropped_total")
        .iter()
        .sum();
    let drift = |from: f64| (last - from) / from * 100.0;
    println!(
        "    resident memory: minute 2 {second:.1} MiB, minute 3 {third:.1} MiB, last minute {last:.1} MiB"
    );
    println!(
        "    drift from minute 3 to the last {:+.1} % (from minute 2 {:+.1} %)",
        drift(third),
        drift(second)
    );
    println!(
        "    {} frames decoded, {} analysed, {dropped} dropped oldest-first",
        summary.frames_decoded, summary.frames_analysed
    );
}
