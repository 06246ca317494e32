//! The saved state's cost as open incidents grow (issue 21): commit time at 100 and at
//! 50,000 open incidents in the same run, as a ratio (goal: under 3), and the restart time
//! (read and restore) with 50,000 open incidents.
//!
//! Each size: a city of that many cells, one gas leak open in each (one sensor per cell),
//! all committed once. Evidence decays slowly (half-life 2 h): the cells, all alike, would
//! otherwise change level in the same sweep, one commit of 50,000 grid-risk changes that
//! says nothing about the state's cost. Then `SKYNET_BENCH_COMMITS` (default 200) commits as the pipeline
//! makes them: one observation in a random cell (evidence for its open incident), then the
//! state's changes (`RiskEngine::take_changes` and the small `pipeline` row) committed with
//! the revisions to a file outbox (WAL, `synchronous=FULL`: every commit is an fsync). The
//! commit time is the state's part and the transaction, not the observation.
//!
//! For comparison, the same commits as before issue 21, in the same run: the whole engine
//! snapshot serialized and written as the one `state` row.
//!
//! `cargo bench -p skynet-tests --bench state`; `SKYNET_BENCH_OPEN` (default `100,50000`)
//! and `SKYNET_BENCH_COMMITS` change the sizes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{
    DeviceId, Evidence, GridId, Observation, OwnerKind, RiskEvent, SourceKind, SourceRef,
};
use skynet_emit::{Outbox, OutboxEvent, StateChanges};
use skynet_risk::state::{EngineRows, PipelineState};
use skynet_risk::{DeviceInfo, GridMap, GridRiskEngine, RiskContext, RiskEngine, RiskSettings};

const SETTINGS: &str = r#"
half_life_s = 7200
close_after_s = 3600
update_every_s = 1
[categories.gas_leak]
ceiling = "II"
department = "emergency-management"
"#;

/// A row of `cells` square cells.
fn city(cells: usize) -> GridMap {
    let features: Vec<String> = (0..cells)
        .map(|i| {
            let x0 = 114.0 + i as f64 / 1000.0;
            let x1 = 114.0 + (i + 1) as f64 / 1000.0;
            format!(
                r#"{{"type":"Feature","properties":{{"id":"C-{i}"}},"geometry":{{"type":"Polygon","coordinates":[[[{x0},22.0],[{x1},22.0],[{x1},22.001],[{x0},22.001],[{x0},22.0]]]}}}}"#
            )
        })
        .collect();
    let text = format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    );
    GridMap::parse(Path::new("bench.geojson"), &text).expect("the bench city is valid")
}

fn engine(cells: usize, grids: &Arc<GridMap>) -> GridRiskEngine {
    let settings: RiskSettings = toml::from_str(SETTINGS).expect("bench settings");
    let config = settings.validate("bench").expect("valid bench settings");
    let devices = (0..cells).map(|c| DeviceInfo {
        source: SourceRef::sensor(&DeviceId::new(format!("gas-{c}"))),
        grid: GridId::new(format!("C-{c}")),
        owner: OwnerKind::SafetyProduction,
    });
    GridRiskEngine::new(config, RiskContext::new(Arc::clone(grids), devices))
}

fn leak(cell: usize, at: DateTime<Utc>) -> Observation {
    Observation {
        at,
        source: SourceRef {
            kind: SourceKind::Sensor,
            id: DeviceId::new(format!("gas-{cell}")),
        },
        grid: GridId::new(format!("C-{cell}")),
        category: "gas_leak".into(),
        weight: 0.9,
        confidence: 1.0,
        evidence: Evidence::default(),
    }
}

/// The state's changes as the pipeline commits them (crates/skynet/src/pipeline/state.rs).
fn changes(engine: &mut GridRiskEngine) -> StateChanges {
    let engine_changes = engine.take_changes();
    let state = PipelineState {
        version: PipelineState::VERSION,
        cameras: Default::default(),
        rules: Default::default(),
        sensor_rules: Default::default(),
        engine: serde_json::value::RawValue::from_string(engine_changes.meta).unwrap(),
    };
    StateChanges {
        pipeline: serde_json::to_string(&state).unwrap(),
        cells: engine_changes.cells,
        ids: engine_changes.ids,
    }
}

/// The whole state as one row, as before issue 21.
fn whole(engine: &GridRiskEngine) -> String {
    let state = PipelineState {
        version: PipelineState::VERSION_ONE_ROW,
        cameras: Default::default(),
        rules: Default::default(),
        sensor_rules: Default::default(),
        engine: engine.snapshot(),
    };
    serde_json::to_string(&state).unwrap()
}

fn events(revisions: &[RiskEvent]) -> Vec<OutboxEvent> {
    revisions
        .iter()
        .map(|r| OutboxEvent::new("bench", r))
        .collect()
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len().max(1) as u32
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    open: usize,
    first_commit: Duration,
    rows: Vec<Duration>,
    whole_row: Vec<Duration>,
    whole_bytes: usize,
    restart: Option<(Duration, Duration, u64)>,
}

fn measure(open: usize, commits: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let grids = Arc::new(city(open));
    let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let mut e = engine(open, &grids);
    let mut revisions = Vec::new();
    for cell in 0..open {
        revisions.extend(e.observe(&leak(cell, start)));
    }
    assert_eq!(e.open_incidents(), open);
    let path = dir.path().join("outbox.sqlite");
    let mut outbox = Outbox::open(&path).unwrap();
    let t = Instant::now();
    let first = changes(&mut e);
    outbox.commit_state(&events(&revisions), &first).unwrap();
    let first_commit = t.elapsed();
    // The set-up's bulk commit is checkpointed before the measured commits, as the commit
    // thread's idle path does: otherwise the first measured commit pays for copying it.
    outbox.checkpoint(true).unwrap();
    let mut legacy = Outbox::open(&dir.path().join("legacy.sqlite")).unwrap();
    legacy
        .commit(&events(&revisions), Some(&whole(&e)))
        .unwrap();
    legacy.checkpoint(true).unwrap();

    let mut rng = fastrand::Rng::with_seed(7);
    let mut rows = Vec::with_capacity(commits);
    let mut whole_row = Vec::with_capacity(commits);
    let mut whole_bytes = 0;
    for i in 0..commits {
        // 1.5 s of event time per commit: every commit also sweeps the whole city.
        let at = start + chrono::Duration::milliseconds(1500 * (i as i64 + 1));
        let revisions = e.observe(&leak(rng.usize(..open), at));
        let events = events(&revisions);
        let t = Instant::now();
        let state = changes(&mut e);
        outbox.commit_state(&events, &state).unwrap();
        rows.push(t.elapsed());
        if t.elapsed() > Duration::from_millis(500) {
            eprintln!(
                "commit {i}: {:?}, {} cells, {} ids, {} revisions",
                t.elapsed(),
                state.cells.len(),
                state.ids.len(),
                events.len()
            );
        }
    }
    // What the rows hold: the restart below must give it back.
    let committed = e.snapshot().get().to_string();
    // The old way afterwards, not interleaved: its 50 MB writes would still be flushing
    // during the next commit of rows. Fewer of them: each takes a second at 50,000.
    for i in 0..commits.min(30) {
        let at = start + chrono::Duration::milliseconds(1500 * (commits + i + 1) as i64);
        let revisions = e.observe(&leak(rng.usize(..open), at));
        let t = Instant::now();
        let text = whole(&e);
        legacy.commit(&events(&revisions), Some(&text)).unwrap();
        whole_row.push(t.elapsed());
        whole_bytes = text.len();
    }
    drop(outbox);

    // Restart: open, check, read, restore.
    let restart = (open >= 10_000).then(|| {
        let t = Instant::now();
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.quick_check().unwrap(), None);
        let check = t.elapsed();
        let stored = outbox.load_state_rows().unwrap();
        let state = PipelineState::parse(stored.pipeline.as_deref().unwrap()).unwrap();
        let mut restored = engine(open, &grids);
        restored
            .restore_rows(&EngineRows {
                meta: state.engine.get().to_string(),
                cells: stored.cells,
                ids: stored.ids,
            })
            .unwrap();
        let total = t.elapsed();
        assert_eq!(restored.open_incidents(), open);
        assert_eq!(restored.snapshot().get(), committed);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        (total, check, size)
    });
    Figures {
        open,
        first_commit,
        rows,
        whole_row,
        whole_bytes,
        restart,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SKYNET_BENCH_OPEN")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 50_000]);
    let commits: usize = std::env::var("SKYNET_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut all = Vec::new();
    for open in sizes {
        let f = measure(open, commits);
        println!(
            "{:>6} open: commit (changed rows) mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms; \
             whole state as one row (before) mean {:.2} ms, p99 {:.2} ms, {:.1} MiB; \
             first commit of every row {:.0} ms",
            f.open,
            ms(mean(&f.rows)),
            ms(percentile(&f.rows, 0.5)),
            ms(percentile(&f.rows, 0.99)),
            ms(mean(&f.whole_row)),
            ms(percentile(&f.whole_row, 0.99)),
            f.whole_bytes as f64 / (1024.0 * 1024.0),
            ms(f.first_commit),
        );
        if let Some((total, check, size)) = f.restart {
            println!(
                "{:>6} open: restart (open, quick_check, read, restore) {:.0} ms, of which \
                 quick_check {:.0} ms; outbox file {:.1} MiB",
                f.open,
                ms(total),
                ms(check),
                size as f64 / (1024.0 * 1024.0)
            );
        }
        all.push(f);
    }
    if let (Some(small), Some(large)) = (all.first(), all.last())
        && all.len() > 1
    {
        let ratio = |f: fn(&[Duration]) -> Duration, a: &[Duration], b: &[Duration]| {
            f(a).as_secs_f64() / f(b).as_secs_f64()
        };
        let p50 = |t: &[Duration]| percentile(t, 0.5);
        println!(
            "commit time ratio {} / {} open: mean {:.2}, p50 {:.2} (goal < 3); before issue 21: \
             mean {:.1}, p50 {:.1}",
            large.open,
            small.open,
            ratio(mean, &large.rows, &small.rows),
            ratio(p50, &large.rows, &small.rows),
            ratio(mean, &large.whole_row, &small.whole_row),
            ratio(p50, &large.whole_row, &small.whole_row),
        );
    }
}
