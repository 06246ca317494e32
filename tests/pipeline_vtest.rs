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

/// Local detail in a rectangle of fractions of the image: the mean variance of the grey
/// level over 8x8 tiles.
fn tile_variance(img: &image::RgbImage, [x0, y0, x1, y1]: [f64; 4]) -> f64 {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let (x0, y0, x1, y1) = (
        (x0 * w) as u32,
        (y0 * h) as u32,
        (x1 * w) as u32,
        (y1 * h) as u32,
    );
    let grey = |x: u32, y: u32| {
        let p = img.get_pixel(x, y);
        (f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])) / 3.0
    };
    let (mut variance, mut tiles) = (0.0, 0.0_f64);
    for ty in (y0..y1.saturating_sub(7)).step_by(8) {
        for tx in (x0..x1.saturating_sub(7)).step_by(8) {
            let values: Vec<f64> = (ty..ty + 8)
                .flat_map(|y| (tx..tx + 8).map(move |x| grey(x, y)))
                .collect();
            let mean = values.iter().sum::<f64>() / 64.0;
            variance += values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 64.0;
            tiles += 1.0;
        }
    }
    variance / tiles.max(1.0)
}

/// The same footage on two cameras in two cells, one with a privacy mask: each incident's
/// first revision carries a snapshot whose file exists and matches its SHA-256, and the
/// masked area is blurred in one and sharp in the other.
#[test]
fn incidents_reference_snapshots_with_privacy_masks_blurred() {
    const MASK: [f64; 4] = [0.0, 0.0, 0.3, 0.3];
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let base = common::vtest_config(dir.path(), "cam-masked", common::WALKWAY, 60);
    let camera = &base[base.find("[[cameras]]").unwrap()..];
    let plain = camera
        .replace("cam-masked", "cam-plain")
        .replace("G-0102", "G-0101");
    let masked = base.replace(
        "max_frames = 60\n",
        &format!(
            "max_frames = 60\nprivacy_masks = [[[{0}, {1}], [{2}, {1}], [{2}, {3}], [{0}, {3}]]]\n",
            MASK[0], MASK[1], MASK[2], MASK[3]
        ),
    );
    let config = common::pipeline_config(dir.path(), &format!("{masked}\n{plain}"));
    pipeline::run(&config, RunOptions::default()).unwrap();
    let events = Outbox::open(&dir.path().join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap();

    // Every event, evidence included, is what the published schema describes.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("schemas/incident.schema.json")).unwrap(),
    )
    .unwrap();
    let schema = jsonschema::validator_for(&schema).unwrap();
    for event in &events {
        let value = serde_json::to_value(event).unwrap();
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }

    let mut snapshots = std::collections::BTreeMap::new();
    for camera in ["cam-masked", "cam-plain"] {
        let first = events
            .iter()
            .find(|e| e.data.camera.as_str() == camera)
            .unwrap_or_else(|| panic!("an incident of {camera}: {events:#?}"));
        let incident = &first.data;
        assert!(!incident.detections.is_empty());
        assert_eq!(incident.evidence.len(), 1, "{incident:#?}");
        let evidence = &incident.evidence[0];
        assert_eq!(evidence.kind, "snapshot");
        assert_eq!(evidence.camera.as_str(), camera);
        let path = dir
            .path()
            .join("evidence")
            .join(&incident.id)
            .join(format!("{}.jpg", incident.revision));
        assert!(
            evidence.url.starts_with("file:///")
                && evidence.url.ends_with(&format!(
                    "/evidence/{}/{}.jpg",
                    incident.id, incident.revision
                )),
            "{}",
            evidence.url
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(evidence.sha256, skynet_snapshot::sha256_hex(&bytes));
        let jpeg = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(jpeg.dimensions(), (evidence.width, evidence.height));
        // A revision that brings no new detections gets no new snapshot.
        for later in events.iter().filter(|e| e.data.id == incident.id) {
            if later.data.revision > incident.revision
                && later.data.detections == incident.detections
            {
                assert!(later.data.evidence.is_empty(), "{:#?}", later.data);
            }
        }
        snapshots.insert(camera, (evidence.frame_at, jpeg));
    }
    let (masked_at, masked) = &snapshots["cam-masked"];
    let (plain_at, plain) = &snapshots["cam-plain"];
    assert_eq!(masked_at, plain_at, "the same frame of the same footage");
    // Inside the mask (off its edge): the detail of the plain frame is gone.
    let inside = [
        MASK[0] + 0.02,
        MASK[1] + 0.02,
        MASK[2] - 0.02,
        MASK[3] - 0.02,
    ];
    let (sharp, blurred) = (tile_variance(plain, inside), tile_variance(masked, inside));
    assert!(sharp > 20.0, "the masked area has detail to hide: {sharp}");
    assert!(
        blurred < sharp * 0.2,
        "local variance {sharp:.1} -> {blurred:.1}: not blurred"
    );
    // Outside it, the two snapshots are the same picture (up to JPEG noise).
    let outside = [0.35, 0.6, 1.0, 1.0];
    let (a, b) = (
        tile_variance(plain, outside),
        tile_variance(masked, outside),
    );
    assert!((a - b).abs() < a * 0.1, "{a} vs {b}");
}
