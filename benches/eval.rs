//! `skynet eval`: evaluation throughput against `skynet run --until-eof` on the same clip,
//! and a sweep of 8 points with `--jobs 2` against 8 evaluations one after another.
//!
//! 1. The same config (vtest.avi, the walkway rules, the real model) runs through
//!    `pipeline::run` as `skynet run --until-eof` does, then through `skynet eval`'s
//!    evaluation (the run, reading back the incidents, scoring them against labels). Frames
//!    per second of both, measured in the same process one after the other, and their ratio
//!    (goal: 0.9 or more).
//! 2. With the release binary (`cargo build --release -p skynet`, found beside this bench):
//!    8 single `skynet eval` processes one after another, then `skynet eval --sweep` over the
//!    same 8 values of `detect.threshold` with `--jobs 2`; wall-clock seconds of both and the
//!    speed-up. Skipped with a note when the binary is not there.
//!
//! `cargo bench --bench eval`; `SKYNET_BENCH_FRAMES=N` changes the clip's length (default 300).

use std::path::{Path, PathBuf};
use std::time::Instant;

use skynet::{RunOptions, pipeline};

#[path = "../tests/common/mod.rs"]
mod common;

fn frames() -> u64 {
    std::env::var("SKYNET_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn write_inputs(dir: &Path, frames: u64) -> (PathBuf, PathBuf) {
    let text = common::vtest_config(dir, "cam-bench", common::WALKWAY, frames).replacen(
        "max_frames",
        "start_at = \"2026-12-01T08:00:00Z\"\nmax_frames",
        1,
    );
    let config = dir.join("bench.toml");
    std::fs::write(&config, text).unwrap();
    let labels = dir.join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"camera\": \"cam-bench\", \"category\": \"restricted_area_intrusion\", \"start_s\": 0.0, \"end_s\": 20.0}\n",
    )
    .unwrap();
    (config, labels)
}

fn args(config: &Path, labels: &Path, out: &Path) -> skynet::eval_cli::EvalArgs {
    skynet::eval_cli::EvalArgs {
        config: config.to_path_buf(),
        labels: labels.to_path_buf(),
        objects: Vec::new(),
        sweep: Vec::new(),
        set: Vec::new(),
        out: out.to_path_buf(),
        jobs: 1,
        max_false_per_hour: 1.0,
    }
}

fn main() {
    let _ = common::runtime();
    let frames = frames();
    let dir = tempfile::tempdir().unwrap();
    let (config_path, labels) = write_inputs(dir.path(), frames);

    // 1. Throughput: run --until-eof, then eval, same clip, same process.
    let config =
        common::pipeline_config(dir.path(), &std::fs::read_to_string(&config_path).unwrap());
    let started = Instant::now();
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    let run_s = started.elapsed().as_secs_f64();
    let decoded = summary.frames_decoded as f64;
    let started = Instant::now();
    let report =
        skynet::eval_cli::evaluate(&args(&config_path, &labels, &dir.path().join("eval"))).unwrap();
    let eval_s = started.elapsed().as_secs_f64();
    println!(
        "throughput on vtest.avi ({decoded} frames): run --until-eof {:.1} frames/s, eval {:.1} frames/s, ratio {:.2} (goal >= 0.9); eval found {} incident(s)",
        decoded / run_s,
        decoded / eval_s,
        run_s / eval_s,
        report.overall.incidents
    );

    // 2. Sweep of 8 points with --jobs 2 against 8 sequential evaluations.
    let Some(binary) = release_binary() else {
        println!("sweep: skipped (build the binary first: cargo build --release -p skynet)");
        return;
    };
    let values: Vec<f64> = (0..8).map(|i| 0.2 + 0.05 * f64::from(i)).collect();
    let started = Instant::now();
    for (i, value) in values.iter().enumerate() {
        let status = std::process::Command::new(&binary)
            .arg("eval")
            .arg("--config")
            .arg(&config_path)
            .arg("--labels")
            .arg(&labels)
            .arg("--set")
            .arg(format!("detect.threshold={value}"))
            .arg("--out")
            .arg(dir.path().join(format!("single-{i}")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let sequential_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let status = std::process::Command::new(&binary)
        .arg("eval")
        .arg("--config")
        .arg(&config_path)
        .arg("--labels")
        .arg(&labels)
        .arg("--sweep")
        .arg("detect.threshold=0.2:0.55:0.05")
        .arg("--jobs")
        .arg("2")
        .arg("--out")
        .arg(dir.path().join("sweep"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let sweep_s = started.elapsed().as_secs_f64();
    println!(
        "sweep of 8 points: 8 sequential evaluations {sequential_s:.1} s, --sweep --jobs 2 {sweep_s:.1} s, speed-up {:.2}",
        sequential_s / sweep_s
    );
}

/// The release `skynet` binary: this bench runs from target/release/deps.
fn release_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("skynet");
    binary.is_file().then_some(binary)
}
