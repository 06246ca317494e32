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
    DeviceId, Evidence, GridId, Observation, OwnerKind, ReadingValue, RiskEvent, RuleRef,
    SourceKind, SourceRef,
};
use skynet_risk::{
    DeviceInfo, GridMap, GridRiskEngine, RiskConfig, RiskContext, RiskEngine, RiskSettings,
};

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
        // Computed the same way on both sides of a shared border, so neighbours meet exactly.
        let at = |base: usize, k: usize| (base + k) as f64 / 1000.0;
        let (col, row) = (i % side, i / side);
        let (x0, y0, x1, y1) = (
            at(114_000, col),
            at(22_000, row),
            at(114_000, col + 1),
            at(22_000, row + 1),
        );
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

/// Observations `from..from + n` of the run: the same on every run, made a chunk at a time
/// so the inputs never crowd the engine's memory figure. A share `alarms` of them is an alarm
/// (any category, random severity); the rest is everyday evidence too weak to open an
/// incident: people present, seen by the cameras.
fn observations(
    from: usize,
    n: usize,
    cells: usize,
    alarms: f32,
    start: DateTime<Utc>,
) -> Vec<Observation> {
    let mut rng = fastrand::Rng::with_seed(from as u64);
    let categories = [
        ("person_present", SourceKind::Camera),
        ("restricted_area_intrusion", SourceKind::Camera),
        ("crowd", SourceKind::Camera),
        ("gas_leak", SourceKind::Sensor),
        ("smoke", SourceKind::Sensor),
        ("water_level_high", SourceKind::Sensor),
    ];
    (from..from + n)
        .map(|i| {
            // Hot spots: a tenth of the cells get half of the evidence.
            let cell = if rng.bool() {
                rng.usize(..cells / 10)
            } else {
                rng.usize(..cells)
            };
            let alarm = rng.f32() < alarms;
            let (category, kind) = if alarm {
                categories[rng.usize(..categories.len())]
            } else {
                categories[0]
            };
            let at = start + chrono::Duration::microseconds(10 * i as i64);
            let device = match kind {
                SourceKind::Camera => format!("cam-{cell}"),
                SourceKind::Sensor => format!("sensor-{cell}"),
            };
            Observation {
                at,
                source: SourceRef {
                    kind,
                    id: DeviceId::new(device),
                },
                grid: GridId::new(format!("C-{cell}")),
                category: category.into(),
                weight: if alarm {
                    0.2 + rng.f32() * 0.8
                } else {
                    0.05 + rng.f32() * 0.15
                },
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

/// What one scenario measured.
struct Figures {
    rate: f64,
    parse_rate: f64,
    latencies: Vec<Duration>,
    incidents: usize,
    grid_changes: usize,
    open: usize,
    rss_before: f64,
    rss_after: f64,
    snapshot_bytes: usize,
    /// The engine's snapshot as the pipeline takes it with a batch of revisions.
    snapshot_time: Duration,
}

impl Figures {
    fn with_snapshot(mut self, engine: &GridRiskEngine) -> Self {
        let t = Instant::now();
        let text = serde_json::to_string(&engine.snapshot()).unwrap_or_default();
        self.snapshot_time = t.elapsed();
        self.snapshot_bytes = text.len();
        self
    }
}

fn run(config: RiskConfig, context: RiskContext, n: usize, cells: usize, alarms: f32) -> Figures {
    let start = DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time");
    const CHUNK: usize = 10_000;
    let chunks = n.div_ceil(CHUNK);
    let chunk = |c: usize| observations(c * CHUNK, CHUNK.min(n - c * CHUNK), cells, alarms, start);

    // Baseline: parsing the same observations from JSON Lines.
    let mut parse_time = Duration::ZERO;
    let mut parsed = 0usize;
    for c in 0..chunks {
        let lines: Vec<String> = chunk(c)
            .iter()
            .map(|o| serde_json::to_string(o).expect("serialises"))
            .collect();
        let t = Instant::now();
        for line in &lines {
            let o: Observation = serde_json::from_str(line).expect("parses");
            parsed += o.category.len();
        }
        parse_time += t.elapsed();
    }
    std::hint::black_box(parsed);

    let rss_before = resident_mib();
    let mut engine = GridRiskEngine::new(config, context);
    let mut latencies = Vec::with_capacity(n);
    let (mut incidents, mut grid_changes) = (0usize, 0usize);
    let mut elapsed = Duration::ZERO;
    for c in 0..chunks {
        let inputs = chunk(c);
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
                    // The engine makes none: rounds come from the patrol scheduler.
                    RiskEvent::PatrolRound(_) => {}
                }
            }
        }
        elapsed += t.elapsed();
    }
    let rss_after = resident_mib();
    latencies.sort_unstable();
    Figures {
        rate: n as f64 / elapsed.as_secs_f64(),
        parse_rate: n as f64 / parse_time.as_secs_f64(),
        latencies,
        incidents,
        grid_changes,
        open: engine.open_incidents(),
        rss_before,
        rss_after,
        snapshot_bytes: 0,
        snapshot_time: Duration::ZERO,
    }
    .with_snapshot(&engine)
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
    let devices: Vec<DeviceInfo> = (0..cells)
        .flat_map(|c| {
            let grid = GridId::new(format!("C-{c}"));
            [
                DeviceInfo {
                    source: SourceRef::camera(&DeviceId::new(format!("cam-{c}"))),
                    grid: grid.clone(),
                    owner: OwnerKind::CityManagement,
                },
                DeviceInfo {
                    source: SourceRef::sensor(&DeviceId::new(format!("sensor-{c}"))),
                    grid,
                    owner: OwnerKind::SafetyProduction,
                },
            ]
        })
        .collect();
    println!(
        "risk engine: {cells} cells, {n} observations over {:.0} s of event time, 2 devices per cell",
        n as f64 / 100_000.0
    );
    for (name, alarms) in [
        ("typical (10% alarms)", 0.1f32),
        ("storm (every observation an alarm)", 1.0),
    ] {
        let context = RiskContext::new(grids.clone(), devices.clone());
        let f = run(config.clone(), context, n, cells, alarms);
        // Give the previous scenario's memory back, so the next one's figure is its own.
        // SAFETY: malloc_trim only returns free heap pages to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        println!("{name}");
        println!("  throughput          {:>12.0} observations/s", f.rate);
        println!(
            "  goal                {:>12.0} observations/s   ratio {:.2}",
            100_000.0,
            f.rate / 100_000.0
        );
        println!(
            "  JSON parse baseline {:>12.0} observations/s   ratio {:.2}",
            f.parse_rate,
            f.rate / f.parse_rate
        );
        println!(
            "  observe latency     p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            percentile(&f.latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&f.latencies, 0.99).as_secs_f64() * 1e6,
            f.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
        );
        println!(
            "  events              {} incident revisions, {} grid-risk changes, {} open",
            f.incidents, f.grid_changes, f.open
        );
        println!(
            "  memory              {:.0} MiB resident before the engine, {:.0} MiB after ({:+.0} MiB, 8 MiB of it latency samples)",
            f.rss_before,
            f.rss_after,
            f.rss_after - f.rss_before,
        );
        println!(
            "  snapshot            {:.1} MiB of JSON in {:.0} ms",
            f.snapshot_bytes as f64 / (1024.0 * 1024.0),
            f.snapshot_time.as_secs_f64() * 1e3
        );
    }
}
