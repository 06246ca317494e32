//! Inferring less on a CPU: detector calls per analysed frame on vtest.avi with the inference
//! interval on, and whether the incidents and line counts agree with detecting every frame.
//!
//! The same config runs several times over the same frames (motion gating on, as deployed):
//! once detecting every frame (the reference), then with `inference_interval` settings in
//! which the tracker carries objects between detections. Printed per run: detector calls per
//! analysed frame and per decoded frame, frames/s, the incidents (category and first-seen
//! time), observations per rule, and line crossings per direction, each against the
//! reference. Goal: half the calls or fewer with the same incidents.
//!
//! `cargo bench --bench inferless`; `SKYNET_BENCH_FRAMES=N` shortens it (default 795, the whole
//! file).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use skynet::{RunOptions, pipeline};

#[path = "../tests/common/mod.rs"]
mod common;

/// A line across the paved path (see tests/reference/vtest_zones.md): people walking along
/// the path cross it both ways.
const LINE: &str = "[[0.55, 0.30], [0.55, 0.75]]";

fn config_text(dir: &Path, frames: u64, interval: &str) -> String {
    let base = common::vtest_config(dir, "bench", common::WALKWAY, frames);
    let recorded = format!(
        "[risk]\nrecord = \"{}\"\n",
        dir.join("observations.jsonl").display()
    );
    base.replacen("[risk]\n", &recorded, 1).replacen(
        "max_frames",
        &format!("{interval}\nmax_frames"),
        1,
    ) + &format!(
        r#"
  [[cameras.rules]]
  name = "path-line"
  kind = "line_crossing"
  line = {LINE}
  labels = ["person"]

  [[cameras.rules]]
  name = "walkway-dwell"
  kind = "dwell"
  zone = "zone"
  min_dwell_s = 4.0
"#
    )
}

#[derive(Debug, Default)]
struct Outcome {
    decoded: u64,
    analysed: u64,
    inferred: u64,
    seconds: f64,
    /// Incident id to (category, first seen).
    incidents: BTreeMap<String, (String, String)>,
    /// Observations per rule name.
    observations: BTreeMap<String, usize>,
    /// Line crossings per direction.
    crossings: BTreeMap<String, usize>,
}

fn run(frames: u64, interval: &str) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::pipeline_config(dir.path(), &config_text(dir.path(), frames, interval));
    let started = Instant::now();
    let summary = pipeline::run(&config, RunOptions::default()).expect("pipeline");
    let mut outcome = Outcome {
        decoded: summary.frames_decoded,
        analysed: summary.frames_analysed,
        inferred: summary.frames_inferred,
        seconds: started.elapsed().as_secs_f64(),
        ..Outcome::default()
    };
    let incidents = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap_or_default();
    for line in incidents.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let data = &event["data"];
        if let (Some(id), Some(category), Some(first)) = (
            data["id"].as_str(),
            data["category"].as_str(),
            data["first_seen"].as_str(),
        ) {
            outcome
                .incidents
                .insert(id.to_string(), (category.to_string(), first.to_string()));
        }
    }
    let observations =
        std::fs::read_to_string(dir.path().join("observations.jsonl")).unwrap_or_default();
    for line in observations.lines() {
        let Ok(o) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let evidence = &o["evidence"];
        let rule = evidence["rule"]["name"].as_str().unwrap_or("?").to_string();
        *outcome.observations.entry(rule).or_default() += 1;
        if let Some(direction) = evidence["direction"].as_str() {
            *outcome.crossings.entry(direction.to_string()).or_default() += 1;
        }
    }
    outcome
}

fn main() {
    let frames: u64 = std::env::var("SKYNET_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(795);
    println!("skynet infer-less benchmark: vtest.avi, {frames} frames, motion gating on");
    let runs = [
        ("every frame (reference)", ""),
        (
            "fixed interval 2",
            "inference_interval = { max = 2, adaptive = false }",
        ),
        (
            "adaptive, max 3",
            "inference_interval = { max = 3, adaptive = true }",
        ),
        (
            "adaptive, max 5",
            "inference_interval = { max = 5, adaptive = true }",
        ),
    ];
    let mut reference: Option<Outcome> = None;
    for (name, interval) in runs {
        let o = run(frames, interval);
        let calls_per_analysed = o.inferred as f64 / o.analysed.max(1) as f64;
        let calls_per_decoded = o.inferred as f64 / o.decoded.max(1) as f64;
        println!();
        println!("  {name}");
        println!(
            "    detector calls {} / analysed frames {} = {calls_per_analysed:.2} per analysed frame ({calls_per_decoded:.2} per decoded frame, {} decoded)",
            o.inferred, o.analysed, o.decoded
        );
        println!(
            "    {:.1} analysed frames/s",
            o.analysed as f64 / o.seconds.max(1e-9)
        );
        let categories: Vec<String> = o
            .incidents
            .values()
            .map(|(c, first)| format!("{c}@{}", &first[11..first.len().min(22)]))
            .collect();
        println!(
            "    incidents {}: {}",
            o.incidents.len(),
            categories.join(", ")
        );
        println!("    observations per rule {:?}", o.observations);
        println!("    line crossings {:?}", o.crossings);
        if let Some(r) = &reference {
            let same_ids = o.incidents.keys().eq(r.incidents.keys());
            let same_categories = o
                .incidents
                .values()
                .map(|(c, _)| c)
                .eq(r.incidents.values().map(|(c, _)| c));
            println!(
                "    vs reference: calls {:.2}x; incidents {} (same ids: {same_ids}, same categories: {same_categories}); crossings in {} / {}, out {} / {}",
                o.inferred as f64 / r.inferred.max(1) as f64,
                if same_categories { "agree" } else { "DIFFER" },
                o.crossings.get("in").unwrap_or(&0),
                r.crossings.get("in").unwrap_or(&0),
                o.crossings.get("out").unwrap_or(&0),
                r.crossings.get("out").unwrap_or(&0),
            );
        } else {
            reference = Some(o);
        }
    }
}
