//! The risk engine's figures: a city of 10,000 cells fed observations as fast as the engine
//! takes them, against two baselines measured in the same run.
//!
//! - `throughput`: observations/s through `GridRiskEngine::observe` (and `advance` every
//!   1,000 observations, as the pipeline's clocks do), with four fusion rules, grid kinds,
//!   reliabilities and a camera and a sensor in every cell. As ratios of the 100,000/s goal
//!   and of `serde_json` parsing the same observations (what `skynet replay` does first).
//! - `latency`: each `observe` call timed; p50, p99 and max.
//! - `memory`: resident memory before and after, and the snapshot's size.
//!
//! `cargo bench --bench risk`; `SKYNET_BENCH_OBSERVATIONS` (default 1,000,000) and
//! `SKYNET_BENCH_CELLS` (default 10,000) change the sizes. Event time advances 10 µs per
//! observation: 100,000 observations per second of event time, so decay, deadlines and
//! fusion windows see the rate the goal names.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{
    CameraId, Evidence, GridId, Observation, OwnerKind, ReadingValue, RiskEvent, RuleRef,
    SourceKind, SourceRef,
};
use skynet_risk::{DeviceInfo, GridMap, GridRiskEngine, RiskContext, RiskEngine, RiskSettings};

const SETTINGS: &str = r#"
half_life_s = 60
close_after_s = 120
[categories.gas_leak]
ceiling = "II"
half_life_s = 300
department = "emergency-management"
[categories.person_present]
ceiling = "IV"
[categories.smoke]
ceiling = "III"
[grid_kinds.school]
weight = 1.5
raise = 1
[grid_kinds.industrial]
weight = 1.2
[reliability]
camera = 0.9
[[fusion]]
kind = "all"
name = "person-exposed-to-gas"
when = [{ category = "gas_leak", source = "sensor" }, { category = "person_present", source = "camera" }]
within_s = 300
category = "person_exposed_to_gas"
level = "I"
[[fusion]]
kind = "all"
name = "smoke-confirmed"
when = [{ category = "smoke", source = "sensor" }, { category = ["smoke", "crowd"], source = "camera" }]
within_s = 120
scope = "neighbours"
category = "fire_confirmed"
level = "II"
[[fusion]]
kind = "all"
name = "water-and-crowd"
when = [{ category = "water_level_high", source = "sensor" }, { category = "crowd", source = "camera" }]
within_s = 600
category = "people_at_flood"
level = "I"
[[fusion]]
kind = "unconfirmed"
name = "verify"
sensor = ["gas_leak", "smoke"]
within_s = 120
confidence = 0.6
"#;

/// A square city of `cells` cells, 0.001° apart, with kinds in turn.
fn city(cells: usize) -> GridMap {
    let side = (cells as f64).sqrt().ceil() as usize;
    let kinds = ["residential", "industrial", "commercial", "school", "road"];
    let mut features = Vec::with_capacity(cells);
    for i in 0..cells {
        let (x, y) = ((i % side) as f64 * 0.001, (i / side) as f64 * 0.001);
        let (x0, y0, x1, y1) = (114.0 + x, 22.0 + y, 114.001 + x, 22.001 + y);
        features.push(format!(
            r#"{{"type":"Feature","properties":{{"id":"C-{i}","kind":"{}"}},"geometry":{{"type":"Polygon","coordinates":[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]}}}}"#,
            kinds[i % kinds.len()]
        ));
    }
    let text = format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    );
    GridMap::parse(Path::new("bench.geojson"), &text).expect("the bench city is valid")
}

fn observations(n: usize, cells: usize, start: DateTime<Utc>) -> Vec<Observation> {
    let mut rng = fastrand::Rng::with_seed(7);
    let categories = [
        ("person_present", SourceKind::Camera),
        ("restricted_area_intrusion", SourceKind::Camera),
        ("crowd", SourceKind::Camera),
        ("gas_leak", SourceKind::Sensor),
        ("smoke", SourceKind::Sensor),
        ("water_level_high", SourceKind::Sensor),
    ];
    (0..n)
        .map(|i| {
            // Hot spots: a tenth of the cells get half of the evidence.
            let cell = if rng.bool() {
                rng.usize(..cells / 10)
            } else {
                rng.usize(..cells)
            };
            let (category, kind) = categories[rng.usize(..categories.len())];
            let at = start + chrono::Duration::microseconds(10 * i as i64);
            let device = match kind {
                SourceKind::Camera => format!("cam-{cell}"),
                SourceKind::Sensor => format!("sensor-{cell}"),
            };
            Observation {
                at,
                source: SourceRef {
                    kind,
                    id: CameraId::new(device),
                },
                grid: GridId::new(format!("C-{cell}")),
                category: category.into(),
                weight: 0.2 + rng.f32() * 0.8,
                confidence: 0.5 + rng.f32() * 0.5,
                evidence: Evidence {
                    rule: Some(RuleRef {
                        name: "bench".into(),
                        kind: "threshold".into(),
                        zone: None,
                    }),
                    reading: (kind == SourceKind::Sensor).then(|| ReadingValue {
                        quantity: "co".into(),
                        value: 60.0,
                        unit: "ppm".into(),
                        at,
                    }),
                    ..Evidence::default()
                },
            }
        })
        .collect()
}

fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let n: usize = std::env::var("SKYNET_BENCH_OBSERVATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cells: usize = std::env::var("SKYNET_BENCH_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let settings: RiskSettings = toml::from_str(SETTINGS).expect("bench settings");
    let config = settings
        .validate("bench")
        .expect("bench settings are valid");
    let grids = Arc::new(city(cells));
    let devices = (0..cells).flat_map(|c| {
        let grid = GridId::new(format!("C-{c}"));
        [
            DeviceInfo {
                source: SourceRef::camera(&CameraId::new(format!("cam-{c}"))),
                grid: grid.clone(),
                owner: OwnerKind::CityManagement,
            },
            DeviceInfo {
                source: SourceRef::sensor(&CameraId::new(format!("sensor-{c}"))),
                grid,
                owner: OwnerKind::SafetyProduction,
            },
        ]
    });
    let context = RiskContext::new(grids, devices);
    let start = DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time");
    let inputs = observations(n, cells, start);

    // Baseline: parsing the same observations from JSON Lines.
    let lines: Vec<String> = inputs
        .iter()
        .map(|o| serde_json::to_string(o).expect("serialises"))
        .collect();
    let t = Instant::now();
    let mut parsed = 0usize;
    for line in &lines {
        let o: Observation = serde_json::from_str(line).expect("parses");
        parsed += o.category.len();
    }
    let parse_rate = n as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(parsed);
    drop(lines);

    let rss_before = resident_mib();
    let mut engine = GridRiskEngine::new(config, context);
    let mut latencies = Vec::with_capacity(n);
    let (mut incidents, mut grid_changes) = (0usize, 0usize);
    let t = Instant::now();
    for (i, o) in inputs.iter().enumerate() {
        let call = Instant::now();
        let mut events = engine.observe(o);
        if i % 1000 == 999 {
            events.extend(engine.advance(o.at));
        }
        latencies.push(call.elapsed());
        for e in &events {
            match e {
                RiskEvent::Incident(_) => incidents += 1,
                RiskEvent::GridRisk(_) => grid_changes += 1,
            }
        }
    }
    let elapsed = t.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    let rss_after = resident_mib();
    let snapshot = serde_json::to_string(&engine.snapshot()).map_or(0, |s| s.len());
    latencies.sort_unstable();

    println!(
        "risk engine: {cells} cells, {n} observations over {:.0} s of event time",
        n as f64 / 100_000.0
    );
    println!("  throughput          {rate:>12.0} observations/s");
    println!(
        "  goal                {:>12.0} observations/s   ratio {:.2}",
        100_000.0,
        rate / 100_000.0
    );
    println!(
        "  JSON parse baseline {parse_rate:>12.0} observations/s   ratio {:.2}",
        rate / parse_rate
    );
    println!(
        "  observe latency     p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
    );
    println!(
        "  events              {incidents} incident revisions, {grid_changes} grid-risk changes, {} open",
        engine.open_incidents()
    );
    println!(
        "  memory              {rss_before:.0} MiB before the engine (inputs), {rss_after:.0} MiB after ({:+.0} MiB); snapshot {:.1} MiB",
        rss_after - rss_before,
        snapshot as f64 / (1024.0 * 1024.0)
    );
}
