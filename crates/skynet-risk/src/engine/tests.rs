use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use skynet_core::{BBox, Detection, OwnerKind, RuleRef};

use super::*;

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(ms)
}

fn secs(s: i64) -> DateTime<Utc> {
    t(s * 1000)
}

fn obs_on(camera: &str, grid: &str, rule: &str, at: DateTime<Utc>, weight: f32) -> Observation {
    Observation {
        camera: CameraId::new(camera),
        source: skynet_core::SourceKind::Camera,
        grid: GridId::new(grid),
        owner: OwnerKind::Police,
        category: "intrusion".into(),
        rule: RuleRef {
            name: rule.into(),
            kind: "zone_intrusion".into(),
            zone: Some("z".into()),
        },
        at,
        weight,
        detections: Vec::new(),
        reading: None,
    }
}

fn obs(s: i64, weight: f32) -> Observation {
    obs_on("cam", "G1", "r", secs(s), weight)
}

fn cam() -> CameraId {
    CameraId::new("cam")
}

fn statuses(revisions: &[Incident]) -> Vec<(IncidentStatus, u32)> {
    revisions.iter().map(|i| (i.status, i.revision)).collect()
}

#[test]
fn evidence_accumulates_opens_escalates_and_closes() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let opened = engine.observe(&obs(0, 0.3));
    assert_eq!(opened.len(), 1);
    assert_eq!(
        (opened[0].status, opened[0].level, opened[0].revision),
        (IncidentStatus::Opened, RiskLevel::IV, 1)
    );
    // 1 - 0.7^2 = 0.51: level III.
    let escalated = engine.observe(&obs(0, 0.3));
    assert_eq!(
        (
            escalated[0].status,
            escalated[0].level,
            escalated[0].revision
        ),
        (IncidentStatus::Escalated, RiskLevel::III, 2)
    );
    assert_eq!(escalated[0].id, opened[0].id);
    assert!(engine.advance(&cam(), secs(60)).is_empty());
    let closed = engine.advance(&cam(), secs(120));
    assert_eq!(statuses(&closed), vec![(IncidentStatus::Closed, 3)]);
    assert_eq!(engine.open_incidents(), 0);
}

#[test]
fn risk_decays_with_half_life_and_weak_evidence_opens_nothing() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    assert!(engine.observe(&obs(0, 0.2)).is_empty());
    let (score, level) = engine.cell_risk(&GridId::new("G1"), secs(60));
    assert!((score - 0.1).abs() < 1e-4, "{score}");
    assert_eq!(level, None);
}

#[test]
fn the_readme_figures_hold() {
    // One observation 0.3 (IV), two 0.51 (III), four 0.76 (II), six 0.88 (I).
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let mut scores = Vec::new();
    for _ in 0..6 {
        engine.observe(&obs(0, 0.3));
        scores.push(engine.cell_risk(&GridId::new("G1"), secs(0)));
    }
    let expect = [
        (0.3, Some(RiskLevel::IV)),
        (0.51, Some(RiskLevel::III)),
        (0.657, Some(RiskLevel::III)),
        (0.7599, Some(RiskLevel::II)),
        (0.83193, Some(RiskLevel::II)),
        (0.882351, Some(RiskLevel::I)),
    ];
    for ((score, level), (want, want_level)) in scores.into_iter().zip(expect) {
        assert!((score - want).abs() < 1e-5, "{score} vs {want}");
        assert_eq!(level, want_level);
    }
}

#[test]
fn flush_emits_only_changed_incidents_and_ids_are_deterministic() {
    let mut a = GridRiskEngine::new(RiskConfig::default());
    let mut b = GridRiskEngine::new(RiskConfig::default());
    assert_eq!(a.observe(&obs(5, 0.3))[0].id, b.observe(&obs(5, 0.3))[0].id);
    assert!(a.flush().is_empty());
    assert!(a.observe(&obs(6, 0.1)).is_empty());
    let updated = a.flush();
    assert_eq!(
        (updated[0].status, updated[0].observations),
        (IncidentStatus::Updated, 2)
    );
    assert!(a.flush().is_empty());
}

#[test]
fn ids_keep_the_documented_uuid_v5_name() {
    // Consumers and earlier runs know ids as UUIDv5(node/grid/camera/rule/first-seen-ms).
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let opened = engine.observe(&obs(5, 0.3));
    let expected = Uuid::new_v5(&INCIDENT_NAMESPACE, b"skynet/G1/cam/r/5000").to_string();
    assert_eq!(opened[0].id, expected);
}

#[test]
fn evidence_below_level_iv_still_reaches_the_open_incident() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let opened = engine.observe(&obs(0, 0.3));
    assert_eq!(opened[0].level, RiskLevel::IV);
    // 100 s later the cell has decayed to 0.094; with 0.1 more it is 0.185, below IV.
    let revisions = engine.observe(&obs(100, 0.1));
    let (score, level) = engine.cell_risk(&GridId::new("G1"), secs(100));
    assert!(score < 0.25 && level.is_none(), "{score}");
    // The evidence reached the incident, and an update was due (100 s > update_every).
    assert_eq!(statuses(&revisions), vec![(IncidentStatus::Updated, 2)]);
    let updated = &revisions[0];
    assert_eq!(updated.last_seen, secs(100));
    assert_eq!(updated.observations, 2);
    assert!((updated.risk_score - score).abs() < 1e-6);
    assert_eq!(updated.level, RiskLevel::IV, "levels never go down");
    // So the quiet period runs from the latest evidence, not from the opening.
    assert!(engine.advance(&cam(), secs(150)).is_empty());
    assert_eq!(
        statuses(&engine.advance(&cam(), secs(220))),
        vec![(IncidentStatus::Closed, 3)]
    );
}

#[test]
fn one_cameras_clock_never_closes_another_cameras_incident() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let live = CameraId::new("live");
    let replay = CameraId::new("replay");
    let now = secs(1_000_000);
    let a = engine.observe(&obs_on("live", "G1", "r", now, 0.3));
    let b = engine.observe(&obs_on("replay", "G1", "r", secs(0), 0.3));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_ne!(a[0].id, b[0].id, "one incident per camera");
    // The replay races a day ahead of the live camera: only its own incident closes.
    let closed = engine.advance(&replay, now + Duration::days(1));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].camera, replay);
    assert_eq!(closed[0].status, IncidentStatus::Closed);
    assert_eq!(engine.open_incidents(), 1);
    // The live camera's own clock closes its incident when it is quiet.
    assert!(
        engine
            .advance(&live, now + Duration::seconds(119))
            .is_empty()
    );
    let closed = engine.advance(&live, now + Duration::seconds(120));
    assert_eq!(closed[0].camera, live);
    assert_eq!(engine.open_incidents(), 0);
}

#[test]
fn updated_revisions_at_most_every_update_every() {
    let config = RiskConfig {
        half_life: Duration::hours(1),
        close_after: Duration::hours(1),
        update_every: Duration::seconds(30),
        ..RiskConfig::default()
    };
    let mut engine = GridRiskEngine::new(config);
    let mut emitted: Vec<(i64, IncidentStatus)> = Vec::new();
    let mut record = |at: i64, revisions: Vec<Incident>| {
        emitted.extend(revisions.into_iter().map(|i| (at, i.status)));
    };
    record(0, engine.observe(&obs(0, 0.3)));
    // Small evidence every 5 s for two minutes (stays below III); the clock also advances.
    for s in (5..=120).step_by(5) {
        record(s, engine.observe(&obs(s, 0.002)));
        record(s, engine.advance(&cam(), secs(s)));
    }
    let updates: Vec<i64> = emitted
        .iter()
        .filter(|(_, s)| *s == IncidentStatus::Updated)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(updates, vec![30, 60, 90, 120], "{emitted:?}");
    // Nothing new: nothing due, whatever the clock says.
    assert!(engine.advance(&cam(), secs(200)).is_empty());
    // Learned something 10 s after the last revision: not due on observe, due on advance.
    assert!(engine.observe(&obs(130, 0.002)).is_empty());
    assert!(engine.advance(&cam(), secs(149)).is_empty());
    assert_eq!(
        engine.advance(&cam(), secs(150))[0].status,
        IncidentStatus::Updated
    );
    // At shutdown, flush emits what changed even before it is due.
    assert!(engine.observe(&obs(151, 0.002)).is_empty());
    assert_eq!(engine.flush()[0].status, IncidentStatus::Updated);
}

#[test]
fn a_reopened_incident_gets_a_new_id() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let first = engine.observe(&obs(0, 0.3));
    engine.advance(&cam(), secs(120));
    // The same file replayed again: the same first-seen time, so the same plain name.
    let again = engine.observe(&obs(0, 0.3));
    assert_eq!(again[0].status, IncidentStatus::Opened);
    assert_ne!(again[0].id, first[0].id);
    engine.advance(&cam(), secs(120));
    // And a third time, earlier still: yet another id.
    let earlier = engine.observe(&obs(-50, 0.3));
    let ids: BTreeSet<&str> = [&first, &again, &earlier]
        .iter()
        .map(|r| r[0].id.as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    engine.advance(&cam(), secs(500));
    // Later than every earlier incident: the plain id a fresh replay would give.
    let later = engine.observe(&obs(600, 0.3));
    let mut fresh = GridRiskEngine::new(RiskConfig::default());
    assert_eq!(later[0].id, fresh.observe(&obs(600, 0.3))[0].id);
    // The same input gives the same ids, reopenings included.
    let mut replay = GridRiskEngine::new(RiskConfig::default());
    let replayed = replay.observe(&obs(0, 0.3));
    replay.advance(&cam(), secs(120));
    assert_eq!(replayed[0].id, first[0].id);
    assert_eq!(replay.observe(&obs(0, 0.3))[0].id, again[0].id);
}

#[test]
fn evidence_after_the_quiet_period_opens_a_new_incident_even_without_advance() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let first = engine.observe(&obs(0, 0.9));
    let revisions = engine.observe(&obs(500, 0.9));
    assert_eq!(
        statuses(&revisions),
        vec![(IncidentStatus::Closed, 2), (IncidentStatus::Opened, 1)]
    );
    assert_eq!(revisions[0].id, first[0].id);
    assert_ne!(revisions[1].id, first[0].id);
    assert_eq!(engine.open_incidents(), 1);
}

#[test]
fn snapshot_and_restore_go_on_with_the_same_id_and_the_next_revision() {
    let mut before = GridRiskEngine::new(RiskConfig::default());
    let opened = before.observe(&obs(0, 0.3));
    // Learned something not yet emitted.
    assert!(before.observe(&obs(1, 0.05)).is_empty());
    // Through text, as a file would keep it.
    let text = before.snapshot().to_string();
    let mut after = GridRiskEngine::new(RiskConfig::default());
    after.restore(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(after.open_incidents(), 1);
    assert_eq!(
        after.cell_risk(&GridId::new("G1"), secs(30)),
        before.cell_risk(&GridId::new("G1"), secs(30))
    );
    let flushed = after.flush();
    assert_eq!(statuses(&flushed), vec![(IncidentStatus::Updated, 2)]);
    assert_eq!(flushed[0].id, opened[0].id);
    assert_eq!(flushed[0].observations, 2);
    let escalated = after.observe(&obs(2, 0.3));
    assert_eq!(statuses(&escalated), vec![(IncidentStatus::Escalated, 3)]);
    assert_eq!(escalated[0].id, opened[0].id);
    // The id bookkeeping came along: replaying the same start after a close gets a new id.
    after.advance(&cam(), secs(200));
    assert_ne!(after.observe(&obs(0, 0.3))[0].id, opened[0].id);
}

#[test]
fn restore_rejects_what_it_cannot_continue_from() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    engine.observe(&obs(0, 0.3));
    let good = engine.snapshot();

    let mut busy = GridRiskEngine::new(RiskConfig::default());
    busy.observe(&obs(0, 0.1));
    assert!(matches!(
        busy.restore(good.clone()),
        Err(RiskError::NotFresh { cells: 1, open: 0 })
    ));

    let fresh = || GridRiskEngine::new(RiskConfig::default());
    let mut newer = good.clone();
    newer["version"] = serde_json::json!(3);
    let err = fresh().restore(newer).unwrap_err().to_string();
    assert!(
        err.contains("version 3; this build reads version 2"),
        "{err}"
    );
    let err = fresh()
        .restore(serde_json::json!({"cells": []}))
        .unwrap_err();
    assert!(matches!(err, RiskError::SnapshotVersion { .. }), "{err}");

    let mut extra = good.clone();
    extra["surprise"] = serde_json::json!(true);
    assert!(matches!(
        fresh().restore(extra),
        Err(RiskError::SnapshotFormat(_))
    ));

    let mut bad_score = good.clone();
    bad_score["cells"][0]["score"] = serde_json::json!(1.5);
    let err = fresh().restore(bad_score).unwrap_err().to_string();
    assert!(err.contains("cell `G1` has score 1.5"), "{err}");

    let mut no_ids = good.clone();
    no_ids["ids"] = serde_json::json!([]);
    let err = fresh().restore(no_ids).unwrap_err().to_string();
    assert!(err.contains("no id bookkeeping"), "{err}");

    // A failed restore leaves the engine fresh, so a good one can follow.
    let mut engine = fresh();
    let mut twice = good.clone();
    let cell = twice["cells"][0].clone();
    twice["cells"].as_array_mut().unwrap().push(cell);
    assert!(engine.restore(twice).is_err());
    engine.restore(good).unwrap();
    assert_eq!(engine.open_incidents(), 1);
}

#[test]
fn huge_durations_and_extreme_times_do_not_panic() {
    let century = Duration::days(36_525);
    let config = RiskConfig {
        half_life: century,
        close_after: century,
        update_every: century,
        ..RiskConfig::default()
    };
    let camera = CameraId::new("cam");
    for (first, then) in [
        (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC),
        (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC),
    ] {
        let mut engine = GridRiskEngine::new(config.clone());
        engine.observe(&obs_on("cam", "G1", "r", first, 1.0));
        engine.observe(&obs_on("cam", "G1", "r", then, 1.0));
        engine.advance(&camera, then);
        engine.advance(&camera, first);
        engine.flush();
        let (score, _) = engine.cell_risk(&GridId::new("G1"), then);
        assert!((0.0..=1.0).contains(&score));
        let mut restored = GridRiskEngine::new(config.clone());
        restored.restore(engine.snapshot()).unwrap();
    }
    // Zero and negative durations (not from a validated config) must not panic either.
    let odd = RiskConfig {
        half_life: Duration::zero(),
        close_after: -century,
        update_every: Duration::MIN,
        ..RiskConfig::default()
    };
    let mut engine = GridRiskEngine::new(odd);
    engine.observe(&obs(0, 0.5));
    engine.observe(&obs(0, f32::NAN));
    engine.advance(&camera, DateTime::<Utc>::MAX_UTC);
    let (score, _) = engine.cell_risk(&GridId::new("G1"), secs(0));
    assert!((0.0..=1.0).contains(&score));
}

#[test]
fn thresholds_must_rise() {
    assert!(LevelThresholds::default().validate().is_ok());
    assert!(
        LevelThresholds {
            iv: 0.5,
            iii: 0.4,
            ii: 0.7,
            i: 0.9
        }
        .validate()
        .is_err()
    );
}

// ---- The risk gauge -----------------------------------------------------------------------

/// Records the last value set on each `skynet_grid_risk_score{grid}` gauge.
#[derive(Default, Clone)]
struct GridGauges(Arc<Mutex<BTreeMap<String, f64>>>);

struct GridGauge {
    grid: String,
    values: GridGauges,
}

impl metrics::GaugeFn for GridGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        if let Ok(mut v) = self.values.0.lock() {
            v.insert(self.grid.clone(), value);
        }
    }
}

impl metrics::Recorder for GridGauges {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        let grid = key
            .labels()
            .find(|l| l.key() == "grid")
            .map(|l| l.value().to_string());
        match (key.name(), grid) {
            ("skynet_grid_risk_score", Some(grid)) => {
                metrics::Gauge::from_arc(Arc::new(GridGauge {
                    grid,
                    values: self.clone(),
                }))
            }
            _ => metrics::Gauge::noop(),
        }
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl GridGauges {
    fn get(&self, grid: &str) -> Option<f64> {
        self.0.lock().ok()?.get(grid).copied()
    }
}

#[test]
fn advance_refreshes_the_decayed_gauge_of_the_cameras_cells_and_forgets_empty_cells() {
    let gauges = GridGauges::default();
    metrics::with_local_recorder(&gauges, || {
        let mut engine = GridRiskEngine::new(RiskConfig::default());
        engine.observe(&obs_on("a", "G1", "r", secs(0), 0.4));
        engine.observe(&obs_on("b", "G2", "r", secs(0), 0.4));
        assert_eq!(gauges.get("G1"), Some(f64::from(0.4f32)));
        // One half-life on camera a's clock: G1 (which a feeds) halves, G2 is b's.
        engine.advance(&CameraId::new("a"), secs(60));
        let g1 = gauges.get("G1").unwrap();
        assert!((g1 - 0.2).abs() < 1e-6, "{g1}");
        assert_eq!(gauges.get("G2"), Some(f64::from(0.4f32)));
        // Decayed to nothing: the gauge reads 0 and the cell is forgotten.
        engine.advance(&CameraId::new("a"), secs(60 * 60));
        assert_eq!(gauges.get("G1"), Some(0.0));
        let snapshot = engine.snapshot();
        let cells: Vec<&str> = snapshot["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["grid"].as_str())
            .collect();
        assert_eq!(cells, vec!["G2"]);
        assert_eq!(engine.cell_risk(&GridId::new("G1"), secs(60 * 60)).0, 0.0);
    });
}

// ---- Properties ---------------------------------------------------------------------------

prop_compose! {
    /// Observations on one cell: (milliseconds since the previous one, weight).
    fn evidence()(steps in prop::collection::vec((0i64..120_000, 0.0f32..=1.0), 1..30)) -> Vec<(i64, f32)> {
        steps
    }
}

/// The cell's score at `at` after the given observations, at cumulative times.
fn score_after(steps: &[(i64, f32)], extra: &[(usize, f32)], at_ms: i64) -> f32 {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let mut now = 0;
    for (i, (dt, w)) in steps.iter().enumerate() {
        now += dt;
        engine.observe(&obs_on("cam", "G1", "r", t(now), *w));
        for (_, w) in extra.iter().filter(|(j, _)| *j == i) {
            engine.observe(&obs_on("cam", "G1", "other", t(now), *w));
        }
        let (score, _) = engine.cell_risk(&GridId::new("G1"), t(now));
        assert!((0.0..=1.0).contains(&score), "{score}");
    }
    engine.cell_risk(&GridId::new("G1"), t(now + at_ms)).0
}

proptest! {
    #[test]
    fn score_is_monotone_in_evidence_and_stays_in_the_unit_interval(
        steps in evidence(),
        heavier in prop::collection::vec(0.0f32..=1.0, 30),
        extra in prop::collection::vec((0usize..30, 0.0f32..=1.0), 0..10),
        later in 0i64..1_000_000,
    ) {
        let base = score_after(&steps, &[], later);
        prop_assert!((0.0..=1.0).contains(&base));
        // Heavier evidence at the same times.
        let heavy: Vec<(i64, f32)> = steps
            .iter()
            .zip(&heavier)
            .map(|((dt, w), more)| (*dt, (w + more).min(1.0)))
            .collect();
        let heavy_score = score_after(&heavy, &[], later);
        prop_assert!(heavy_score >= base, "{heavy_score} < {base}");
        // More evidence (another rule firing on the same frames).
        let more = score_after(&steps, &extra, later);
        prop_assert!(more >= base, "{more} < {base}");
        prop_assert!((0.0..=1.0).contains(&more));
    }

    #[test]
    fn more_evidence_at_other_times_never_lowers_the_score(
        steps in evidence(),
        inserted in prop::collection::vec((0usize..30, 0i64..120_000, 0.0f32..=1.0), 1..10),
        later in 0i64..1_000_000,
    ) {
        // Insert observations between the given ones (before step i, after the previous).
        let mut more: Vec<(i64, f32)> = Vec::new();
        for (i, (dt, w)) in steps.iter().enumerate() {
            let mut used = 0;
            for (_, offset, extra_w) in inserted.iter().filter(|(j, _, _)| *j == i) {
                let at = (*offset).min(*dt).max(used);
                more.push((at - used, *extra_w));
                used = at;
            }
            more.push((dt - used, *w));
        }
        let base = score_after(&steps, &[], later);
        let with_more = score_after(&more, &[], later);
        // Decay split in two steps rounds differently from one step: allow float noise only.
        prop_assert!(with_more >= base - 1e-6, "{with_more} < {base}");
    }

    #[test]
    fn without_evidence_the_score_decays_towards_zero(
        steps in evidence(),
        half_life_s in 1i64..(100 * 366 * 86_400),
    ) {
        let config = RiskConfig { half_life: Duration::seconds(half_life_s), ..RiskConfig::default() };
        let mut engine = GridRiskEngine::new(config);
        let mut now = 0;
        for (dt, w) in &steps {
            now += dt;
            engine.observe(&obs_on("cam", "G1", "r", t(now), *w));
        }
        let grid = GridId::new("G1");
        let start = t(now);
        let mut previous = engine.cell_risk(&grid, start).0;
        for k in 1..=12 {
            let at = start
                .checked_add_signed(Duration::seconds(half_life_s * k))
                .expect("within chrono's range for these half-lives");
            let score = engine.cell_risk(&grid, at).0;
            prop_assert!(score <= previous, "rose from {previous} to {score}");
            prop_assert!(score >= 0.0);
            if k >= 10 {
                prop_assert!(score < 1e-3, "{score} after {k} half-lives");
            }
            previous = score;
        }
    }
}

/// One step of a run, with per-camera clocks.
#[derive(Debug, Clone)]
enum Op {
    Observe {
        camera: usize,
        grid: usize,
        rule: usize,
        /// Milliseconds the camera's clock moves; negative when it jumps back.
        dt: i64,
        weight: f32,
        detections: usize,
    },
    Advance {
        camera: usize,
        dt: i64,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..2, 0usize..2, 0usize..2, -20_000i64..60_000, 0.02f32..=0.6, 0usize..3).prop_map(
            |(camera, grid, rule, dt, weight, detections)| Op::Observe { camera, grid, rule, dt, weight, detections }
        ),
        3 => (0usize..2, 0i64..90_000).prop_map(|(camera, dt)| Op::Advance { camera, dt }),
        1 => Just(Op::Flush),
    ]
}

struct Run {
    engine: GridRiskEngine,
    clocks: [i64; 2],
}

impl Run {
    fn config() -> RiskConfig {
        RiskConfig {
            node: "n".into(),
            half_life: Duration::seconds(30),
            close_after: Duration::seconds(60),
            update_every: Duration::seconds(20),
            ..RiskConfig::default()
        }
    }

    fn new() -> Self {
        Self {
            engine: GridRiskEngine::new(Self::config()),
            clocks: [0; 2],
        }
    }

    fn step(&mut self, op: &Op) -> Vec<Incident> {
        match *op {
            Op::Observe {
                camera,
                grid,
                rule,
                dt,
                weight,
                detections,
            } => {
                self.clocks[camera] += dt;
                let mut o = obs_on(
                    &format!("cam{camera}"),
                    &format!("G{grid}"),
                    &format!("r{rule}"),
                    t(self.clocks[camera]),
                    weight,
                );
                // Whole-pixel boxes and scores of two decimals: what the JSON text keeps.
                o.detections = (0..detections)
                    .map(|i| Detection {
                        label: "person".into(),
                        score: (50 + i) as f32 / 100.0,
                        bbox: BBox::new(i as f32, 1.0, 10.0 + i as f32, 20.0),
                    })
                    .collect();
                self.engine.observe(&o)
            }
            Op::Advance { camera, dt } => {
                self.clocks[camera] += dt;
                self.engine.advance(
                    &CameraId::new(format!("cam{camera}")),
                    t(self.clocks[camera]),
                )
            }
            Op::Flush => self.engine.flush(),
        }
    }
}

proptest! {
    #[test]
    fn snapshot_restore_continue_gives_the_same_revisions_as_no_restart(
        ops in prop::collection::vec(op(), 0..60),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(ops.len() + 1);
        let mut straight = Run::new();
        let mut expected: Vec<Incident> = ops.iter().flat_map(|o| straight.step(o)).collect();
        expected.extend(straight.engine.flush());

        let mut first = Run::new();
        let mut got: Vec<Incident> = ops[..split].iter().flat_map(|o| first.step(o)).collect();
        let text = first.engine.snapshot().to_string();
        let mut second = Run { engine: GridRiskEngine::new(Run::config()), clocks: first.clocks };
        second.engine.restore(serde_json::from_str(&text).expect("snapshot is JSON")).expect("restores");
        got.extend(ops[split..].iter().flat_map(|o| second.step(o)));
        got.extend(second.engine.flush());

        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(second.engine.snapshot(), straight.engine.snapshot());
        // And no two incidents were ever given the same id.
        let opened: Vec<&str> = expected
            .iter()
            .filter(|i| i.status == IncidentStatus::Opened)
            .map(|i| i.id.as_str())
            .collect();
        let distinct: BTreeSet<&str> = opened.iter().copied().collect();
        prop_assert_eq!(distinct.len(), opened.len());
    }
}

#[test]
fn a_camera_far_ahead_never_decays_or_forgets_another_cameras_evidence_in_the_same_cell() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let slow = CameraId::new("slow");
    let fast = CameraId::new("fast");
    let opened = engine.observe(&obs_on("slow", "G1", "r", secs(0), 0.3));
    assert_eq!(opened[0].status, IncidentStatus::Opened);
    // The fast camera in the same cell runs an hour ahead (60 half-lives).
    engine.observe(&obs_on("fast", "G1", "r2", secs(3600), 0.1));
    assert!(
        engine
            .advance(&fast, secs(3600))
            .iter()
            .all(|i| i.camera == fast)
    );
    // The slow camera's evidence is still there at its own time: one more observation takes
    // the cell to level III, as it would with the slow camera alone (0.51) plus a little.
    let escalated = engine.observe(&obs_on("slow", "G1", "r", secs(1), 0.3));
    assert_eq!(
        escalated[0].status,
        IncidentStatus::Escalated,
        "{escalated:?}"
    );
    assert_eq!(escalated[0].id, opened[0].id);
    assert!(escalated[0].risk_score >= 0.5, "{escalated:?}");
    assert!(engine.advance(&slow, secs(2)).is_empty());
}

fn offline(since: i64, at: i64) -> DeviceFault {
    DeviceFault {
        camera: cam(),
        source: skynet_core::SourceKind::Camera,
        grid: GridId::new("G1"),
        owner: OwnerKind::CityManagement,
        category: "camera_offline".into(),
        since: secs(since),
        at: secs(at),
    }
}

#[test]
fn a_device_fault_stays_open_until_recovery_and_raises_no_risk() {
    let mut engine = GridRiskEngine::new(RiskConfig::default());
    let opened = engine.device_fault(&offline(10, 40));
    assert_eq!(statuses(&opened), vec![(IncidentStatus::Opened, 1)]);
    let incident = &opened[0];
    assert_eq!(incident.category, "camera_offline");
    assert_eq!(incident.rule.kind, DEVICE_FAULT_KIND);
    assert_eq!(
        (incident.first_seen, incident.last_seen),
        (secs(10), secs(40))
    );
    assert_eq!(incident.level, RiskLevel::IV);
    assert_eq!(engine.cell_risk(&GridId::new("G1"), secs(40)).0, 0.0);
    // Declared again while open: nothing new.
    assert!(engine.device_fault(&offline(10, 41)).is_empty());
    assert_eq!(engine.faulty_devices(), vec![cam()]);
    // Hours of quiet do not close it.
    assert!(engine.advance(&cam(), secs(10_000)).is_empty());
    assert_eq!(engine.open_incidents(), 1);
    // It survives a restart.
    let mut restored = GridRiskEngine::new(RiskConfig::default());
    restored.restore(engine.snapshot()).unwrap();
    assert!(restored.advance(&cam(), secs(20_000)).is_empty());
    let closed = restored.device_recovered(&cam(), "camera_offline", secs(20_001));
    assert_eq!(statuses(&closed), vec![(IncidentStatus::Closed, 2)]);
    assert_eq!(closed[0].id, incident.id);
    assert_eq!(restored.open_incidents(), 0);
    // A later outage is a new incident with a new id.
    let again = restored.device_fault(&offline(30_000, 30_030));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, incident.id);
}
