//! The whole pipeline on real footage: GStreamer decode, YOLOX on ONNX Runtime, zone rule,
//! grid risk, and CloudEvents in the SQLite outbox and the JSON Lines sink.

mod common;

use skynet::{RunOptions, pipeline};
use skynet_emit::{CloudEvent, Outbox};

fn run_vtest(
    camera: &str,
    zone: &str,
    frames: u64,
) -> (tempfile::TempDir, skynet::RunSummary, Vec<CloudEvent>) {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(
        dir.path(),
        &common::vtest_config(dir.path(), camera, zone, frames),
    );
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    let events = Outbox::open(&dir.path().join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap();
    (dir, summary, events)
}

#[test]
fn people_on_the_walkway_raise_an_incident() {
    let (dir, summary, events) = run_vtest("cam-walkway", common::WALKWAY, 200);
    assert_eq!(summary.frames_decoded, 200);
    assert_eq!(summary.frames_analysed, 200);
    assert!(summary.failed_cameras.is_empty());
    assert!(summary.observations >= 3, "{summary:?}");

    let first = events.first().expect("an incident");
    assert_eq!(first.specversion, "1.0");
    assert_eq!(first.event_type, "skynet.incident.v1");
    assert_eq!(first.source, "skynet/test-node");
    assert_eq!(first.id, format!("{}/1", first.data.id));
    let incident = &first.data;
    assert_eq!(incident.status, skynet_core::IncidentStatus::Opened);
    assert_eq!(incident.category, "restricted_area_intrusion");
    assert_eq!(incident.grid.as_str(), "G-0102");
    assert_eq!(incident.camera.as_str(), "cam-walkway");
    assert_eq!(incident.owner, skynet_core::OwnerKind::CityManagement);
    assert_eq!(incident.level, skynet_core::RiskLevel::IV);
    assert_eq!(incident.rule.zone.as_deref(), Some("zone"));
    assert!(
        !incident.detections.is_empty()
            && incident
                .detections
                .iter()
                .all(|d| d.label == "person" && d.score >= 0.5)
    );
    // All revisions are of one incident, and the risk only rose within 20 s of footage.
    assert!(events.iter().all(|e| e.data.id == incident.id));
    assert!(
        events
            .windows(2)
            .all(|w| w[0].data.revision < w[1].data.revision && w[0].data.level <= w[1].data.level)
    );
    assert!(
        events.len() >= 2,
        "the cell escalates while people keep walking there: {events:#?}"
    );

    // The JSON Lines sink got the same events, in the same order.
    let lines = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    let from_file: Vec<CloudEvent> = lines
        .lines()
        .filter(|l| l.contains(r#""type":"skynet.incident.v1""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(from_file, events);
}

#[test]
fn an_empty_zone_raises_nothing() {
    let (dir, summary, events) = run_vtest("cam-wall", common::NOBODY, 200);
    assert_eq!(summary.frames_analysed, 200);
    assert_eq!(summary.observations, 0);
    assert!(events.is_empty(), "{events:#?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap_or_default(),
        ""
    );
}

#[test]
fn a_broken_camera_does_not_stop_the_others() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut text = common::vtest_config(dir.path(), "cam-good", common::WALKWAY, 30);
    text.push_str(
        r#"
[[cameras]]
id = "cam-broken"
owner = "police"
uri = "/nonexistent/camera.avi"
grid = "G-0101"
"#,
    );
    let config = common::pipeline_config(dir.path(), &text);
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    assert_eq!(
        summary
            .failed_cameras
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        vec!["cam-broken"]
    );
    assert_eq!(summary.frames_analysed, 30);
}

#[test]
fn shutdown_stops_sources_and_flushes() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(
        dir.path(),
        &common::vtest_config(dir.path(), "cam-stop", common::WALKWAY, 795),
    );
    let options = RunOptions::default();
    let stop = options.shutdown.clone();
    let trigger = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stop.trigger();
    });
    let summary = pipeline::run(&config, options).unwrap();
    trigger.join().unwrap();
    assert!(summary.frames_decoded < 795, "{summary:?}");
    // Everything decoded was analysed: nothing in flight was lost on the way out.
    assert_eq!(summary.frames_analysed, summary.frames_decoded);
    let stored = Outbox::open(&dir.path().join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap()
        .len() as u64;
    assert_eq!(stored, summary.incident_revisions);
}
