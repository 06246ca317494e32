use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use skynet_core::{DeviceFault, Evidence, IncidentChange, IncidentState, IncidentStatus};

use super::*;
use crate::RiskSettings;

const GRIDS: &str = r#"{"type": "FeatureCollection", "features": [
  {"type": "Feature", "properties": {"id": "A", "kind": "industrial", "department": "street-a"},
   "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]}},
  {"type": "Feature", "properties": {"id": "B", "kind": "school"},
   "geometry": {"type": "Polygon", "coordinates": [[[1,0],[2,0],[2,1],[1,1],[1,0]]]}},
  {"type": "Feature", "properties": {"id": "C"},
   "geometry": {"type": "Polygon", "coordinates": [[[5,5],[6,5],[6,6],[5,6],[5,5]]]}}
]}"#;

// The clock may move a day per input: these tests model risk over gaps of minutes without
// a wall clock ticking through them (the bounded step has tests of its own, at the end).
const SETTINGS: &str = r#"
max_clock_step_s = 86400
half_life_s = 60
close_after_s = 120
update_every_s = 30
cooldown_s = 300

[categories.restricted_area_intrusion]
ceiling = "III"
department = "site_security"

[categories.gas_leak]
ceiling = "II"
half_life_s = 300
department = "emergency_management"

[grid_kinds.school]
weight = 1.5
raise = 1

[[fusion]]
kind = "all"
name = "person-exposed-to-gas"
when = [{ category = "gas_leak", source = "sensor" }, { category = "person_present", source = "camera" }]
within_s = 300
category = "person_exposed_to_gas"
level = "I"

[[fusion]]
kind = "unconfirmed"
name = "gas-unseen"
sensor = ["smoke"]
within_s = 120
confidence = 0.5
"#;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn engine_with(settings: &str) -> GridRiskEngine {
    let settings: RiskSettings = toml::from_str(settings).unwrap();
    let config = settings.validate("n").unwrap();
    let grids = Arc::new(GridMap::parse(Path::new("t.geojson"), GRIDS).unwrap());
    let devices = [
        ("cam-1", SourceKind::Camera, "A"),
        ("gas-1", SourceKind::Sensor, "A"),
        ("smoke-1", SourceKind::Sensor, "A"),
        ("smoke-9", SourceKind::Sensor, "C"),
    ]
    .map(|(id, kind, grid)| DeviceInfo {
        source: SourceRef {
            kind,
            id: DeviceId::new(id),
        },
        grid: GridId::new(grid),
        owner: OwnerKind::SafetyProduction,
    });
    GridRiskEngine::new(config, RiskContext::new(grids, devices))
}

fn engine() -> GridRiskEngine {
    engine_with(SETTINGS)
}

fn obs(at: i64, grid: &str, category: &str, device: &str, weight: f32) -> Observation {
    let kind = if device.starts_with("cam") {
        SourceKind::Camera
    } else {
        SourceKind::Sensor
    };
    Observation {
        at: t(at),
        source: SourceRef {
            kind,
            id: DeviceId::new(device),
        },
        grid: GridId::new(grid),
        category: category.into(),
        weight,
        confidence: 1.0,
        evidence: Evidence::default(),
    }
}

fn incidents(events: &[RiskEvent]) -> Vec<&Incident> {
    events.iter().filter_map(RiskEvent::as_incident).collect()
}

fn grid_levels(events: &[RiskEvent]) -> Vec<Option<RiskLevel>> {
    events
        .iter()
        .filter_map(|e| match e {
            RiskEvent::GridRisk(g) => Some(g.level),
            RiskEvent::Incident(_) | RiskEvent::PatrolRound(_) => None,
        })
        .collect()
}

#[test]
fn one_kind_of_evidence_stays_at_its_ceiling_however_often_it_is_seen() {
    let mut e = engine();
    let mut all = Vec::new();
    for i in 0..600 {
        all.extend(e.observe(&obs(i / 10, "A", "restricted_area_intrusion", "cam-1", 0.9)));
    }
    let revisions = incidents(&all);
    let ids: BTreeSet<&str> = revisions.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one incident");
    let last = revisions.last().unwrap();
    assert_eq!(last.level, RiskLevel::III, "capped at its ceiling");
    assert_eq!(last.department, "site_security");
    assert!(revisions.iter().all(|i| i.level <= RiskLevel::III));
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::III));
    assert!(grid_levels(&all).iter().all(|l| *l <= Some(RiskLevel::III)));
}

#[test]
fn repeats_add_confidence_and_duration_not_severity() {
    let mut e = engine();
    let mut o = obs(0, "A", "loitering", "cam-1", 0.6);
    o.confidence = 0.5;
    let first = e.observe(&o);
    let opened = incidents(&first)[0].clone();
    assert_eq!(opened.level, RiskLevel::IV);
    assert_eq!(opened.confidence, 0.5);
    let mut last = Vec::new();
    for i in 1..=40 {
        o.at = t(i);
        last.extend(e.observe(&o));
    }
    let now = e.open_incident(&GridId::new("A"), "loitering").unwrap();
    assert_eq!(now.level, RiskLevel::IV, "no more severe");
    assert!(now.confidence > 0.99, "more confident: {}", now.confidence);
    assert_eq!(now.last_seen, t(40));
    assert_eq!(now.observations, 41);
    assert_eq!(now.contributions.len(), 1);
    assert_eq!(now.contributions[0].count, 41);
}

#[test]
fn different_kinds_together_reach_higher_levels() {
    let mut e = engine();
    e.observe(&obs(0, "A", "restricted_area_intrusion", "cam-1", 0.9));
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::III));
    e.observe(&obs(1, "A", "loitering", "cam-1", 0.6));
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::II));
}

#[test]
fn gas_and_a_person_make_a_level_one_incident_that_lists_its_parts() {
    let mut e = engine();
    let mut events = e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.6));
    assert_eq!(incidents(&events)[0].level, RiskLevel::III);
    events.extend(e.observe(&obs(100, "A", "person_present", "cam-1", 0.3)));
    let fused: Vec<&Incident> = incidents(&events)
        .into_iter()
        .filter(|i| i.category == "person_exposed_to_gas")
        .collect();
    assert_eq!(fused.len(), 1);
    let fused = fused[0];
    assert_eq!(fused.level, RiskLevel::I);
    assert_eq!(fused.rule.kind, FUSION_KIND);
    assert_eq!(fused.rule.name, "person-exposed-to-gas");
    let parts: Vec<(&str, &str)> = fused
        .contributions
        .iter()
        .map(|c| (c.source.id.as_str(), c.category.as_str()))
        .collect();
    assert_eq!(
        parts,
        vec![("gas-1", "gas_leak"), ("cam-1", "person_present")]
    );
    assert_eq!(fused.deadlines.dispatch_by, Some(t(100 + 15 * 60)));
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::I));
    assert_eq!(grid_levels(&events).last(), Some(&Some(RiskLevel::I)));

    // Outside the window, or in another cell, nothing is fused.
    let mut e = engine();
    e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.6));
    let late = e.observe(&obs(400, "A", "person_present", "cam-1", 0.3));
    assert!(
        incidents(&late)
            .iter()
            .all(|i| i.category != "person_exposed_to_gas")
    );
    let elsewhere = e.observe(&obs(401, "B", "gas_leak", "gas-1", 0.6));
    assert!(
        incidents(&elsewhere)
            .iter()
            .all(|i| i.category != "person_exposed_to_gas")
    );
}

#[test]
fn a_sensor_alarm_the_cameras_do_not_see_waits_for_verification() {
    let mut e = engine();
    let events = e.observe(&obs(0, "A", "smoke", "smoke-1", 0.6));
    let opened = incidents(&events)[0].clone();
    assert_eq!(opened.verification.as_deref(), Some("required"));
    assert_eq!(opened.confidence, 0.5);
    assert_eq!(opened.level, RiskLevel::IV, "0.6 × 0.5 = 0.3");
    let events = e.observe(&obs(10, "A", "smoke", "cam-1", 0.5));
    let confirmed = incidents(&events)
        .into_iter()
        .find(|i| i.id == opened.id)
        .expect("a revision of the sensor's incident");
    assert_eq!(confirmed.verification.as_deref(), Some("confirmed"));
    assert_eq!(confirmed.change, IncidentChange::Confirmed);
    // A cell without cameras cannot verify: nothing is flagged.
    let events = e.observe(&obs(20, "C", "smoke", "smoke-9", 0.6));
    assert_eq!(incidents(&events)[0].verification, None);
}

#[test]
fn a_missed_deadline_escalates_once() {
    let mut e = engine();
    let opened = incidents(&e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.8)))[0].clone();
    assert_eq!(opened.level, RiskLevel::II);
    assert_eq!(opened.department, "emergency_management");
    let dispatch_by = opened.deadlines.dispatch_by.unwrap();
    assert_eq!(dispatch_by, t(30 * 60));
    let mut events = Vec::new();
    for s in (10..=40 * 60).step_by(10) {
        // Evidence keeps coming, so the incident stays open.
        events.extend(e.observe(&obs(s, "A", "gas_leak", "gas-1", 0.8)));
    }
    let missed: Vec<&Incident> = incidents(&events)
        .into_iter()
        .filter(|i| i.change == IncidentChange::DeadlineMissed)
        .collect();
    assert_eq!(missed.len(), 1, "escalated once");
    assert_eq!(missed[0].level, RiskLevel::I, "one step above its ceiling");
    assert_eq!(missed[0].missed, vec!["dispatch".to_string()]);
    // Escalated at its due time, before the evidence of that time joined it.
    assert!(missed[0].last_seen < dispatch_by);
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::I));
}

#[test]
fn dispatched_in_time_is_not_escalated_and_feedback_follows_the_lifecycle() {
    let mut e = engine();
    let id = incidents(&e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.8)))[0]
        .id
        .clone();
    let ack = e
        .feedback(&case(&id, IncidentState::Acknowledged, t(60)))
        .unwrap();
    assert_eq!(incidents(&ack)[0].state, IncidentState::Acknowledged);
    assert_eq!(incidents(&ack)[0].change, IncidentChange::Feedback);
    e.feedback(&case(&id, IncidentState::Dispatched, t(120)))
        .unwrap();
    let err = e
        .feedback(&case(&id, IncidentState::Acknowledged, t(130)))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("dispatched; it cannot become acknowledged"),
        "{err}"
    );
    assert!(matches!(
        e.feedback(&case("nope", IncidentState::Resolved, t(130))),
        Err(RiskError::UnknownIncident(_))
    ));
    // Dispatched: quiet evidence does not close it, and the dispatch deadline does not count.
    let later = e.advance(t(3600));
    assert!(
        incidents(&later)
            .iter()
            .all(|i| i.change != IncidentChange::Quiet)
    );
    assert!(
        incidents(&later)
            .iter()
            .all(|i| !i.missed.contains(&"dispatch".to_string()))
    );
    e.feedback(&case(&id, IncidentState::Resolved, t(3700)))
        .unwrap();
    let done = e
        .feedback(&case(&id, IncidentState::Verified, t(3800)))
        .unwrap();
    assert_eq!(incidents(&done)[0].status, IncidentStatus::Closed);
    assert_eq!(incidents(&done)[0].state, IncidentState::Verified);
    assert_eq!(e.open_incidents(), 0);
}

#[test]
fn quiet_incidents_close_and_evidence_within_the_cooldown_reopens_them() {
    let mut e = engine();
    let id = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let closed = e.advance(t(130));
    let closed: Vec<&Incident> = incidents(&closed);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].change, IncidentChange::Quiet);
    assert_eq!(closed[0].state, IncidentState::Closed);
    let again = e.observe(&obs(200, "A", "loitering", "cam-1", 0.6));
    let again = incidents(&again)[0];
    assert_eq!(again.id, id, "the same incident");
    assert_eq!(again.change, IncidentChange::Reopened);
    assert_eq!(again.state, IncidentState::Open);
    e.advance(t(400));
    let fresh = e.observe(&obs(1000, "A", "loitering", "cam-1", 0.6));
    assert_ne!(incidents(&fresh)[0].id, id, "after the cooldown, a new one");
}

#[test]
fn a_device_fault_opens_until_the_device_recovers() {
    let mut e = engine();
    let fault = DeviceFault {
        camera: DeviceId::new("cam-1"),
        source: SourceKind::Camera,
        grid: GridId::new("A"),
        owner: OwnerKind::Police,
        category: "camera_offline".into(),
        since: t(0),
        at: t(30),
    };
    let opened = e.observe(&fault.observation());
    assert_eq!(incidents(&opened)[0].level, RiskLevel::IV);
    assert_eq!(incidents(&opened)[0].rule.kind, DEVICE_FAULT_KIND);
    assert!(e.observe(&fault.observation()).is_empty(), "once");
    assert!(
        incidents(&e.advance(t(10_000))).is_empty(),
        "not closed for being quiet"
    );
    assert_eq!(e.faulty_devices().len(), 1);
    assert_eq!(e.cell_level(&GridId::new("A")).0, None, "no hazard");
    let recovered = e.observe(&DeviceFault::recovery(
        SourceRef::camera(&DeviceId::new("cam-1")),
        GridId::new("A"),
        "camera_offline",
        t(10_001),
    ));
    assert_eq!(incidents(&recovered)[0].change, IncidentChange::Recovered);
    assert!(e.faulty_devices().is_empty());
}

#[test]
fn a_school_weighs_more_and_raises_the_ceiling() {
    let mut e = engine();
    e.observe(&obs(0, "A", "restricted_area_intrusion", "cam-1", 0.5));
    e.observe(&obs(0, "B", "restricted_area_intrusion", "cam-1", 0.5));
    assert_eq!(e.cell_level(&GridId::new("A")).0, Some(RiskLevel::III));
    assert_eq!(
        e.cell_level(&GridId::new("B")).0,
        Some(RiskLevel::II),
        "0.75, ceiling II"
    );
}

#[test]
fn invalid_observations_are_refused() {
    let mut e = engine();
    let mut bad = obs(0, "A", "Gas Leak", "gas-1", 0.5);
    assert!(e.observe(&bad).is_empty());
    bad.category = "gas".into();
    bad.weight = 1.5;
    assert!(e.observe(&bad).is_empty());
    assert_eq!(e.open_incidents(), 0);
}

#[test]
fn a_restored_engine_goes_on_exactly_like_the_original() {
    let inputs: Vec<Observation> = (0..200)
        .map(|i| {
            let (category, device) = match i % 3 {
                0 => ("gas_leak", "gas-1"),
                1 => ("person_present", "cam-1"),
                _ => ("loitering", "cam-1"),
            };
            obs(i * 7, "A", category, device, 0.4 + (i % 5) as f32 / 10.0)
        })
        .collect();
    let mut straight = engine();
    let mut expected = Vec::new();
    for o in &inputs {
        expected.extend(straight.observe(o));
    }
    let mut first = engine();
    let mut got = Vec::new();
    for o in &inputs[..100] {
        got.extend(first.observe(o));
    }
    let text = serde_json::to_string(&first.snapshot()).unwrap();
    let mut second = engine();
    second
        .restore(&serde_json::from_str::<Box<RawValue>>(&text).unwrap())
        .unwrap();
    for o in &inputs[100..] {
        got.extend(second.observe(o));
    }
    assert_eq!(got, expected);
    // Only into a fresh engine, and only its own version.
    assert!(matches!(
        second.restore(&straight.snapshot()),
        Err(RiskError::NotFresh { .. })
    ));
    assert!(matches!(
        engine()
            .restore(&serde_json::value::to_raw_value(&serde_json::json!({"version": 2})).unwrap()),
        Err(RiskError::SnapshotVersion { .. })
    ));
}

fn arb_observation() -> impl Strategy<Value = Observation> {
    (
        0i64..600,
        prop::sample::select(vec!["A", "B", "C"]),
        prop::sample::select(vec![
            ("gas_leak", "gas-1"),
            ("person_present", "cam-1"),
            ("restricted_area_intrusion", "cam-1"),
            ("smoke", "smoke-1"),
            ("loitering", "cam-2"),
        ]),
        0.0f32..=1.0,
        0.0f32..=1.0,
    )
        .prop_map(|(at, grid, (category, device), weight, confidence)| {
            let mut o = obs(at, grid, category, device, weight);
            o.confidence = confidence;
            o
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// At one instant, more evidence never lowers a cell's score.
    #[test]
    fn the_score_is_monotone_in_evidence(mut inputs in prop::collection::vec(arb_observation(), 1..60)) {
        let mut e = engine();
        let mut previous: BTreeMap<GridId, f32> = BTreeMap::new();
        for o in &mut inputs {
            o.at = t(0);
            e.observe(o);
            let (_, score) = e.cell_level(&o.grid);
            let before = previous.insert(o.grid.clone(), score).unwrap_or(0.0);
            prop_assert!(score >= before, "{score} < {before}");
        }
    }

    /// However much of it, one kind of evidence never passes its category's ceiling.
    #[test]
    fn one_kind_never_passes_its_ceiling(
        weights in prop::collection::vec(0.0f32..=1.0, 1..200),
        devices in prop::collection::vec(prop::sample::select(vec!["cam-1", "cam-2", "cam-3"]), 200),
    ) {
        let mut e = engine();
        for (i, w) in weights.iter().enumerate() {
            let events = e.observe(&obs(i as i64, "A", "restricted_area_intrusion", devices[i], *w));
            for i in incidents(&events) {
                prop_assert!(i.level <= RiskLevel::III);
            }
            prop_assert!(e.cell_level(&GridId::new("A")).0 <= Some(RiskLevel::III));
        }
    }

    /// Without evidence every cell decays back to no risk.
    #[test]
    fn without_evidence_it_decays_to_zero(inputs in prop::collection::vec(arb_observation(), 1..40)) {
        let mut e = engine();
        for o in &inputs {
            e.observe(o);
        }
        // Long after: every deadline is missed, but the incidents close once quiet.
        for s in (600..200_000).step_by(600) {
            e.advance(t(s));
        }
        for grid in ["A", "B", "C"] {
            prop_assert_eq!(e.cell_level(&GridId::new(grid)), (None, 0.0));
        }
        prop_assert_eq!(e.open_incidents(), 0);
    }

    /// Noise smaller than the band around a threshold changes the level at most once.
    #[test]
    fn hysteresis_prevents_flapping(
        noise in prop::collection::vec(-0.024f32..0.024, 2..200),
        level in prop::sample::select(RiskLevel::ALL.to_vec()),
    ) {
        let thresholds = LevelThresholds::default();
        let centre = thresholds.of(level);
        let mut current = None;
        let mut changes = 0;
        for n in noise {
            let next = thresholds.level_with_hysteresis(current, centre + n, 0.05);
            if next != current && current.is_some() {
                changes += 1;
            }
            current = next;
        }
        prop_assert!(changes <= 1, "{changes} changes");
    }

    /// The same inputs give the same outputs, ids included.
    #[test]
    fn replay_is_deterministic(inputs in prop::collection::vec(arb_observation(), 1..80)) {
        let run = |inputs: &[Observation]| {
            let mut e = engine();
            let mut out = Vec::new();
            for o in inputs {
                out.extend(e.observe(o));
            }
            out.extend(e.advance(t(100_000)));
            out
        };
        prop_assert_eq!(run(&inputs), run(&inputs));
    }
}

/// Level changes of cell C while a water sensor reports a level that wavers just above III's
/// threshold (0.5) every 10 s for 20 minutes. With a 60 s half-life its evidence decays
/// below 0.5 between two readings, but not below 0.45.
fn level_changes_around_a_threshold(hysteresis: f32, weights: &[f32]) -> usize {
    let mut e = engine_with(&format!("hysteresis = {hysteresis}\n{SETTINGS}"));
    let mut changes = 0;
    for (i, w) in weights.iter().enumerate() {
        let at = i as i64 * 10;
        changes += grid_levels(&e.observe(&obs(at, "C", "water_level_high", "water-1", *w))).len();
        changes += grid_levels(&e.advance(t(at + 5))).len();
    }
    changes
}

#[test]
fn without_hysteresis_the_same_noise_flaps() {
    let weights: Vec<f32> = (0..120)
        .map(|i| if i % 2 == 0 { 0.50 } else { 0.54 })
        .collect();
    assert!(level_changes_around_a_threshold(0.0, &weights) > 10);
    assert_eq!(level_changes_around_a_threshold(0.05, &weights), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The engine, not only the level function: evidence wavering around a threshold moves
    /// the cell's level once, and it stays.
    #[test]
    fn hysteresis_keeps_a_cell_from_flapping(weights in prop::collection::vec(0.50f32..0.54, 120)) {
        prop_assert_eq!(level_changes_around_a_threshold(0.05, &weights), 1);
    }
}

/// Issue 21: a `rejected` status while the evidence still comes closes the incident as a
/// false alarm; the evidence that goes on opens nothing (neither reopens it nor opens
/// another) until `cooldown_s` (300 s here) after the rejection; then fresh evidence opens a
/// new incident.
#[test]
fn a_rejected_incident_stays_closed_while_its_evidence_goes_on_until_the_cooldown() {
    let mut e = engine();
    let opened = e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.8));
    let id = incidents(&opened)[0].id.clone();
    e.observe(&obs(5, "A", "gas_leak", "gas-1", 0.8));
    let rejected = e
        .feedback(&case(&id, IncidentState::Rejected, t(10)))
        .unwrap();
    assert_eq!(incidents(&rejected)[0].state, IncidentState::Rejected);
    assert_eq!(incidents(&rejected)[0].status, IncidentStatus::Closed);
    assert_eq!(e.open_incidents(), 0);
    // The sensor keeps reporting for the whole cooldown: no incident revision at all.
    for at in (15..300).step_by(5) {
        let out = e.observe(&obs(at, "A", "gas_leak", "gas-1", 0.8));
        assert!(
            incidents(&out).is_empty(),
            "evidence at {at} s opened or reopened an incident: {out:?}"
        );
        e.advance(t(at));
    }
    assert_eq!(e.open_incidents(), 0);
    // Past the cooldown after the rejection (10 + 300 s): a new incident.
    let fresh = e.observe(&obs(315, "A", "gas_leak", "gas-1", 0.8));
    let fresh = incidents(&fresh);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_ne!(
        fresh[0].id, id,
        "a new incident, not the false alarm reopened"
    );
    assert_eq!(fresh[0].state, IncidentState::Open);
    assert_eq!(e.open_incidents(), 1);
}

fn case(id: &str, status: IncidentState, at: DateTime<Utc>) -> skynet_core::CaseStatus {
    skynet_core::CaseStatus {
        incident: id.to_string(),
        status,
        department: None,
        assignee: None,
        note: None,
        at,
    }
}

#[test]
fn resolving_an_incident_lowers_its_cells_risk_and_rejecting_one_is_a_false_alarm() {
    let mut e = engine();
    let opened = e.observe(&obs(0, "A", "gas_leak", "gas-1", 0.8));
    let id = incidents(&opened)[0].id.clone();
    let raised = e.cell_level(&GridId::new("A")).0;
    assert!(raised.is_some(), "the evidence raised the cell");
    let mut update = case(&id, IncidentState::Dispatched, t(30));
    update.department = Some("fire_brigade".into());
    update.assignee = Some("crew 7".into());
    update.note = Some("on the way".into());
    let dispatched = e.feedback(&update).unwrap();
    let revision = incidents(&dispatched)[0];
    assert_eq!(revision.department, "fire_brigade");
    assert_eq!(revision.assignee.as_deref(), Some("crew 7"));
    assert_eq!(revision.note.as_deref(), Some("on the way"));
    let resolved = e
        .feedback(&case(&id, IncidentState::Resolved, t(60)))
        .unwrap();
    assert!(
        resolved
            .iter()
            .any(|r| matches!(r, RiskEvent::GridRisk(g) if g.level.is_none())),
        "the cell's level falls with the resolved hazard: {resolved:?}"
    );
    assert_eq!(e.cell_level(&GridId::new("A")).0, None);

    let id = incidents(&e.observe(&obs(600, "B", "intrusion", "cam-1", 0.6)))[0]
        .id
        .clone();
    let rejected = e
        .feedback(&case(&id, IncidentState::Rejected, t(630)))
        .unwrap();
    assert_eq!(incidents(&rejected)[0].state, IncidentState::Rejected);
    assert_eq!(incidents(&rejected)[0].status, IncidentStatus::Closed);
    assert_eq!(e.cell_level(&GridId::new("B")).0, None);
}

/// Applies one commit's changes to a row store, as the outbox does.
fn apply_changes(
    store: &mut (BTreeMap<String, String>, BTreeMap<String, String>),
    changes: crate::state::EngineChanges,
) {
    for (rows, changed) in [(&mut store.0, changes.cells), (&mut store.1, changes.ids)] {
        for (key, body) in changed {
            match body {
                Some(body) => rows.insert(key, body),
                None => rows.remove(&key),
            };
        }
    }
}

/// Every row of the engine's whole state, serialized afresh.
fn all_rows(e: &GridRiskEngine) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let cells = e
        .state
        .cells
        .iter()
        .map(|(g, c)| (g.to_string(), serde_json::to_string(c).unwrap()))
        .collect();
    let ids = e
        .state
        .ids
        .iter()
        .map(|(k, v)| {
            (
                serde_json::to_string(k).unwrap(),
                serde_json::to_string(v).unwrap(),
            )
        })
        .collect();
    (cells, ids)
}

fn restored_from_rows(
    store: &(BTreeMap<String, String>, BTreeMap<String, String>),
    meta: String,
) -> GridRiskEngine {
    let rows = crate::state::EngineRows {
        meta,
        cells: store.0.clone().into_iter().collect(),
        ids: store.1.clone().into_iter().collect(),
    };
    let mut e = engine();
    e.restore_rows(&rows).unwrap();
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// No mutation path escapes the change tracking: the rows written commit by commit
    /// (only what changed) always equal the whole state, and restoring them gives an
    /// engine that goes on exactly like the original.
    #[test]
    fn incremental_rows_always_equal_the_whole_state(
        steps in prop::collection::vec(
            (arb_observation(), 0u8..10, any::<bool>()),
            1..120,
        ),
    ) {
        let mut e = engine();
        let mut store = Default::default();
        let mut meta = String::new();
        let mut at = 0;
        for (i, (mut o, action, commit)) in steps.into_iter().enumerate() {
            // Mostly forward in time, with gaps that close, forget and escalate.
            at += i64::from(action) * 20;
            o.at = t(at + (o.at.timestamp() % 7));
            match action {
                0 => { e.advance(t(at + 400)); }
                1 => {
                    // A case status on some open incident.
                    let open: Vec<String> = e.state.cells.values()
                        .flat_map(|c| c.open.values().map(|o| o.incident.id.clone()))
                        .collect();
                    if let Some(id) = open.first() {
                        let status = [IncidentState::Acknowledged, IncidentState::Resolved,
                            IncidentState::Rejected][i % 3];
                        let _ = e.feedback(&case(id, status, t(at)));
                    }
                }
                2 => {
                    let fault = DeviceFault {
                        camera: o.source.id.clone(),
                        source: o.source.kind,
                        grid: o.grid.clone(),
                        owner: OwnerKind::Police,
                        category: "device_offline".into(),
                        since: t(at),
                        at: o.at,
                    };
                    if i % 2 == 0 {
                        e.observe(&fault.observation());
                    } else {
                        e.observe(&DeviceFault::recovery(o.source.clone(), o.grid.clone(), "device_offline", o.at));
                    }
                }
                3 => { e.flush(); }
                _ => { e.observe(&o); }
            }
            if commit {
                let changes = e.take_changes();
                meta = changes.meta.clone();
                apply_changes(&mut store, changes);
                prop_assert_eq!(&store, &all_rows(&e));
            }
        }
        let changes = e.take_changes();
        meta = if changes.meta.is_empty() { meta } else { changes.meta.clone() };
        apply_changes(&mut store, changes);
        prop_assert_eq!(&store, &all_rows(&e));
        let mut restored = restored_from_rows(&store, meta);
        prop_assert_eq!(restored.snapshot().get().to_string(), e.snapshot().get().to_string());
        // Restored rows are stored rows: nothing to write until something changes.
        let after = restored.take_changes();
        prop_assert!(after.cells.is_empty() && after.ids.is_empty());
        let next = obs(at + 1000, "B", "gas_leak", "gas-1", 0.9);
        prop_assert_eq!(restored.observe(&next), e.observe(&next));
    }
}

#[test]
fn a_sweep_with_nothing_due_changes_no_row() {
    let mut e = engine();
    for (i, grid) in ["A", "B", "C"].into_iter().enumerate() {
        e.observe(&obs(i as i64, grid, "gas_leak", "gas-1", 0.9));
    }
    assert_eq!(e.open_incidents(), 3);
    let first = e.take_changes();
    assert_eq!(first.cells.len(), 3);
    // Time passes (scores decay), but nothing closes, fades or falls due.
    e.advance(t(10));
    e.advance(t(12));
    let quiet = e.take_changes();
    assert!(quiet.cells.is_empty(), "{:?}", quiet.cells);
    // One observation: one cell.
    e.observe(&obs(13, "B", "gas_leak", "gas-1", 0.9));
    let one = e.take_changes();
    assert_eq!(one.cells.len(), 1);
    assert_eq!(one.cells[0].0, "B");
}

#[test]
fn a_whole_snapshot_restored_counts_every_row_as_changed() {
    let mut first = engine();
    first.observe(&obs(0, "A", "gas_leak", "gas-1", 0.9));
    let mut second = engine();
    second.restore(&first.snapshot()).unwrap();
    let changes = second.take_changes();
    assert_eq!(changes.cells.len(), 1);
    assert_eq!(changes.ids.len(), 1);
    // A row that does not parse names its table and key.
    let rows = crate::state::EngineRows {
        meta: changes.meta,
        cells: vec![("A".into(), "garbage".into())],
        ids: Vec::new(),
    };
    let err = engine().restore_rows(&rows).unwrap_err();
    assert!(
        matches!(
            err,
            RiskError::Row {
                table: "state_cells",
                ..
            }
        ),
        "{err}"
    );
}

/// Time: before evidence is applied, what went quiet before it closes at its own close time.
#[test]
fn evidence_after_a_gap_closes_the_quiet_incident_first_then_opens_a_new_one() {
    let mut e = engine();
    let first = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    // Three hours later, with no input in between (a recorded night).
    let events = e.observe(&obs(3 * 3600, "A", "loitering", "cam-1", 0.6));
    let revisions = incidents(&events);
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    assert_eq!(
        revisions[0].id, first,
        "the old one's closing revision comes first"
    );
    assert_eq!(revisions[0].change, IncidentChange::Quiet);
    assert_eq!(revisions[0].status, IncidentStatus::Closed);
    assert_eq!(revisions[0].last_seen, t(0));
    assert_ne!(revisions[1].id, first, "a new incident");
    assert_eq!(revisions[1].change, IncidentChange::Opened);
    assert_eq!(revisions[1].first_seen, t(3 * 3600));
}

/// The closing revision is dated at `last_seen + close_after`, not at the evidence that
/// found it quiet: the cooldown runs from there.
#[test]
fn an_incident_closes_at_its_close_time_and_the_cooldown_runs_from_it() {
    // Closed at 120; evidence at 400 is 280 s later, within the 300 s cooldown: reopened.
    let mut e = engine();
    let id = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let events = e.observe(&obs(400, "A", "loitering", "cam-1", 0.6));
    let changes: Vec<(&str, IncidentChange)> = incidents(&events)
        .iter()
        .map(|i| (i.id.as_str(), i.change))
        .collect();
    assert_eq!(
        changes,
        vec![
            (id.as_str(), IncidentChange::Quiet),
            (id.as_str(), IncidentChange::Reopened)
        ]
    );
    // Evidence at 500 is 380 s after the close at 120: a new incident.
    let mut e = engine();
    e.observe(&obs(0, "A", "loitering", "cam-1", 0.6));
    let events = e.observe(&obs(500, "A", "loitering", "cam-1", 0.6));
    let opened = incidents(&events);
    assert_eq!(opened.len(), 2);
    assert_ne!(opened[1].id, id);
    assert_eq!(opened[1].change, IncidentChange::Opened);
}

/// After a gap, timed actions come out in time order over all cells, not in cell order.
#[test]
fn after_a_gap_incidents_close_in_the_order_they_went_quiet() {
    let mut e = engine();
    let b = incidents(&e.observe(&obs(0, "B", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let a = incidents(&e.observe(&obs(50, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let events = e.observe(&obs(3 * 3600, "C", "loitering", "cam-1", 0.6));
    let closed: Vec<&str> = incidents(&events)
        .iter()
        .filter(|i| i.change == IncidentChange::Quiet)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(
        closed,
        vec![b.as_str(), a.as_str()],
        "B went quiet at 120, A at 170"
    );
}

/// A lone time far ahead (a bogus wall clock, a device's wrong clock) moves the clock one
/// step: counted once, open incidents are not closed by it, and evidence dated there counts
/// as the clock's time.
#[test]
fn a_jump_moves_the_clock_one_step_and_is_counted_once() {
    let mut e = engine_with(&SETTINGS.replace("max_clock_step_s = 86400", "max_clock_step_s = 60"));
    let id = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let year = 365 * 24 * 3600;
    let events = e.advance(t(year));
    assert!(incidents(&events).is_empty(), "nothing closed: {events:?}");
    assert_eq!(e.clock(), Some(t(60)), "one step");
    assert_eq!(e.clock_jumps(), 1);
    // Evidence stamped a year ahead, in the same jump: one more step, at the clock's time,
    // not counted again.
    e.observe(&obs(year, "A", "loitering", "cam-1", 0.6));
    assert_eq!(e.clock_jumps(), 1);
    assert_eq!(e.clock(), Some(t(120)));
    let open = e.open_incident(&GridId::new("A"), "loitering").unwrap();
    assert_eq!(open.id, id);
    assert_eq!(open.last_seen, t(120));
    // The wall clock is back: the jump is over; the incident closes once quiet (at 240).
    e.advance(t(100));
    let mut later = e.advance(t(180));
    later.extend(e.advance(t(230)));
    assert!(incidents(&later).is_empty());
    later.extend(e.advance(t(280)));
    let closed = incidents(&later);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].change, IncidentChange::Quiet);
    assert_eq!(e.clock_jumps(), 1);
    // A new jump is counted again.
    e.advance(t(year));
    assert_eq!(e.clock_jumps(), 2);
}

/// A real forward step (the clock was corrected) is followed, one step per input, and what
/// falls due on the way happens at its own time, in order.
#[test]
fn a_forward_step_is_followed_in_steps() {
    let mut e = engine_with(&SETTINGS.replace("max_clock_step_s = 86400", "max_clock_step_s = 60"));
    let id = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    let mut events = Vec::new();
    // The live pipeline calls `advance` ten times a second with the (stepped) wall clock.
    let mut calls = 0;
    while e.clock() < Some(t(3600)) {
        events.extend(e.advance(t(3600) + Duration::milliseconds(100 * calls)));
        calls += 1;
        assert!(calls < 100, "followed within a few inputs");
    }
    assert_eq!(e.clock_jumps(), 1);
    let revisions = incidents(&events);
    assert_eq!(revisions.len(), 1);
    assert_eq!(
        (revisions[0].id.as_str(), revisions[0].change),
        (id.as_str(), IncidentChange::Quiet)
    );
    // Then the clock follows each input again.
    e.advance(t(3610));
    assert_eq!(e.clock(), Some(t(3610)));
    assert_eq!(e.clock_jumps(), 1);
}

/// `follow` moves the clock over a gap known to be true, without the bound.
#[test]
fn follow_moves_the_clock_over_a_true_gap() {
    let mut e = engine_with(&SETTINGS.replace("max_clock_step_s = 86400", "max_clock_step_s = 60"));
    let first = incidents(&e.observe(&obs(0, "A", "loitering", "cam-1", 0.6)))[0]
        .id
        .clone();
    e.follow(t(3 * 3600));
    assert_eq!(e.clock(), Some(t(3 * 3600)));
    let events = e.observe(&obs(3 * 3600, "A", "loitering", "cam-1", 0.6));
    let revisions = incidents(&events);
    assert_eq!(revisions[0].id, first);
    assert_eq!(revisions[0].change, IncidentChange::Quiet);
    assert_ne!(revisions[1].id, first);
    assert_eq!(e.clock_jumps(), 0, "not a jump");
}
