//! Patrol sizing (issue 26): how many patrol cameras one node holds with a round every 60 s
//! and a 3 s dwell, on 1080p H.264 RTSP cameras with a key frame every second, analysed at
//! 1 frame/s with key frames only and the real detector (YOLOX nano).
//!
//! Two phases, in one process each, against the tests' RTSP server serving one mount per
//! camera (`--h264`: the clip as it is, so the server costs little):
//!
//! 1. **Calibration**: one round of `SKYNET_BENCH_CALIBRATE` cameras (default 32), back to
//!    back, `max_concurrent` cameras at a time. From the round event: the mean visit (open to
//!    close: connect, first key frame, dwell, drain) and from `getrusage` the CPU per visit.
//!    The rule: a round takes `cameras x visit / max_concurrent`, so a node holds
//!    `every_s x max_concurrent / visit` cameras while the CPU lasts:
//!    `cameras x cpu_per_visit <= every_s x cores x 0.8`.
//! 2. **Verification**: one round of the predicted count (or `SKYNET_BENCH_PATROL_CAMERAS`)
//!    with `every_s = 60`: the round's measured length against its 60 s.
//!
//! `cargo bench --bench patrol`; `SKYNET_BENCH_MAX_CONCURRENT` (default 16),
//! `SKYNET_BENCH_PART=calibrate|verify`, `SKYNET_BENCH_KEYFRAMES=false` (the baseline: every
//! frame decoded).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet::{RunOptions, pipeline};
use skynet_core::Shutdown;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

use support::{H264Server as Server, cpu_seconds};

const EVERY_S: f64 = 60.0;
const DWELL_S: f64 = 3.0;
/// The share of the cores the patrol may use, leaving room for bursts and the rest.
const CPU_SHARE: f64 = 0.8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    skynet::memory::limit_malloc_arenas();
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_else(|_| "all".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrent = env_usize("SKYNET_BENCH_MAX_CONCURRENT", 16);
    println!("skynet patrol benchmark, {cores} cores, max_concurrent = {concurrent}");
    let clip = clip_1080p_gop1();

    let mut predicted = None;
    if part == "all" || part == "calibrate" {
        let n = env_usize("SKYNET_BENCH_CALIBRATE", 32);
        let round = patrol_round(&clip, n, concurrent, 1.0);
        let visit = round.mean_visit_s;
        let cpu = round.cpu_s / n as f64;
        let by_time = (EVERY_S * concurrent as f64 / visit).floor() as usize;
        let by_cpu = (EVERY_S * cores as f64 * CPU_SHARE / cpu).floor() as usize;
        println!("  calibration: {n} cameras, one round back to back");
        println!(
            "    round {:.1} s, mean visit {visit:.2} s (dwell {DWELL_S} s + {:.2} s to connect, see the first key frame and drain), {} checked",
            round.length_s,
            visit - DWELL_S,
            round.checked,
        );
        println!(
            "    CPU per visit {cpu:.3} core-seconds (skynet), {:.3} (the RTSP server)",
            round.server_cpu_s / n as f64
        );
        println!(
            "    predicted: {by_time} cameras by time ({EVERY_S} s x {concurrent} / {visit:.2} s), {by_cpu} by CPU ({EVERY_S} s x {cores} cores x {CPU_SHARE} / {cpu:.3} s); {} per node",
            by_time.min(by_cpu)
        );
        predicted = Some(by_time.min(by_cpu));
    }
    if part == "all" || part == "verify" {
        let n = std::env::var("SKYNET_BENCH_PATROL_CAMERAS")
            .ok()
            .and_then(|v| v.parse().ok())
            .or(predicted)
            .unwrap_or(200);
        let round = patrol_round(&clip, n, concurrent, EVERY_S);
        println!(
            "  verification: {n} cameras, every_s = {EVERY_S}, dwell_s = {DWELL_S}, max_concurrent = {concurrent}"
        );
        println!(
            "    round {:.1} s ({}), {} checked, {} not; mean visit {:.2} s; CPU {:.0} % of one core (skynet), {:.0} % (the RTSP server)",
            round.length_s,
            if round.length_s <= EVERY_S {
                "on time"
            } else {
                "LATE"
            },
            round.checked,
            n - round.checked,
            round.mean_visit_s,
            round.cpu_s / round.length_s * 100.0,
            round.server_cpu_s / round.length_s * 100.0,
        );
    }
}

struct RoundFigures {
    length_s: f64,
    mean_visit_s: f64,
    checked: usize,
    cpu_s: f64,
    server_cpu_s: f64,
}

/// Runs one patrol round of `n` cameras and returns its figures.
fn patrol_round(clip: &Path, n: usize, concurrent: usize, every_s: f64) -> RoundFigures {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::free_port().port();
    let server = Server::start(port, clip, n);
    let text = config(dir.path(), port, n, concurrent, every_s);
    let config = common::pipeline_config(dir.path(), &text);
    let shutdown = Shutdown::new();
    let outbox = dir.path().join("outbox.sqlite");
    {
        let (stop, outbox) = (shutdown.clone(), outbox.clone());
        std::thread::spawn(move || {
            common::eventually(Duration::from_secs(3600), || {
                common::patrol_rounds_stored(&outbox) >= 1
            });
            stop.trigger();
        });
    }
    let (cpu0, server0) = (cpu_seconds("/proc/self/stat"), server.cpu_seconds());
    let started = Instant::now();
    pipeline::run(
        &config,
        RunOptions {
            shutdown,
            ..RunOptions::default()
        },
    )
    .expect("the pipeline runs");
    let _wall = started.elapsed();
    let cpu_s = cpu_seconds("/proc/self/stat") - cpu0;
    let server_cpu_s = server.cpu_seconds() - server0;

    let lines = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap_or_default();
    let round = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "skynet.patrol_round.v1")
        .expect("a round event");
    let data = &round["data"];
    let time = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
    let length_s = match (time(&data["started"]), time(&data["finished"])) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    };
    let cameras = data["cameras"].as_array().cloned().unwrap_or_default();
    let visits: Vec<f64> = cameras
        .iter()
        .filter_map(|c| Some((time(&c["opened"])?, time(&c["closed"])?)))
        .map(|(o, c)| (c - o).num_milliseconds() as f64 / 1000.0)
        .collect();
    RoundFigures {
        length_s,
        mean_visit_s: visits.iter().sum::<f64>() / visits.len().max(1) as f64,
        checked: cameras.iter().filter(|c| c["status"] == "checked").count(),
        cpu_s,
        server_cpu_s,
    }
}

fn config(dir: &Path, port: u16, n: usize, concurrent: usize, every_s: f64) -> String {
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

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/events.jsonl"

[evidence]
dir = "{dir}/evidence"

[[patrols]]
name = "bench"
every_s = {every_s}
dwell_s = {DWELL_S}
max_concurrent = {concurrent}
"#,
        grids = esc(&common::repo().join("configs/demo-grids.geojson")),
        model = esc(&common::manifest_path()),
        dir = esc(dir),
    );
    // SKYNET_BENCH_KEYFRAMES=false: the same patrol decoding every frame (the baseline).
    let keyframes = std::env::var("SKYNET_BENCH_KEYFRAMES").unwrap_or_else(|_| "true".into());
    for i in 0..n {
        text.push_str(&format!(
            r#"
[[cameras]]
id = "cam{i}"
owner = "city_management"
uri = "rtsp://127.0.0.1:{port}/cam{i}"
grid = "G-0102"
patrol = "bench"
fps = 1
keyframes_only = {keyframes}
"#
        ));
    }
    text
}

/// vtest.avi scaled to 1920x1080, H.264 at 10 frames/s with a key frame every second (10
/// frames) and no B-frames (as IP cameras send it: see the README on `keyframes_only` and
/// B-frames), made once and kept under target/.
fn clip_1080p_gop1() -> PathBuf {
    support::clip_1080p(
        &support::media_dir().join("vtest-1080p-gop1-nob.mp4"),
        &[],
        &["key-int-max=10".into(), "bframes=0".into()],
    )
}
