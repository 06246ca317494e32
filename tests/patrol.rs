//! Patrol rounds (issue 26) against the tests' RTSP server with several mount points: a
//! patrol of six cameras, two open at a time, one more camera unreachable.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use skynet::{RunOptions, pipeline};
use skynet_core::{BBox, Detection, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};

/// A person walking to and fro in the walkway, by the wall clock (one standing still would
/// be reported once, not on each visit): the zone rule observes on the visits.
struct PersonInTheWalkway {
    start: std::time::Instant,
}

impl Detector for PersonInTheWalkway {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let (w, h) = (image.width as f32, image.height as f32);
        // Feet between x = 0.44 and 0.56 at y = 0.47: inside common::WALKWAY.
        let phase = self.start.elapsed().as_secs_f32() * std::f32::consts::TAU / 4.0;
        let x = 0.5 + 0.06 * phase.sin();
        Ok(vec![Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new((x - 0.05) * w, 0.3 * h, (x + 0.05) * w, 0.47 * h),
            track: None,
        }])
    }
}

const ROUNDS: i64 = 2;

fn config(dir: &Path, port: u16, nothing: u16) -> String {
    let base = common::vtest_config(dir, "unused", common::WALKWAY, 1);
    let head = base.split("\n[[cameras]]").next().unwrap();
    let mut text = format!(
        "{head}\n[[patrols]]\nname = \"north\"\nevery_s = 1\ndwell_s = 2\nmax_concurrent = 2\noffline_after_rounds = 2\n"
    );
    // The unreachable camera comes second: it is visited beside cam0, in the first wave.
    let mut cameras: Vec<(String, String)> = (0..6)
        .map(|n| (format!("cam{n}"), format!("rtsp://127.0.0.1:{port}/cam{n}")))
        .collect();
    cameras.insert(
        1,
        ("cam-gone".into(), format!("rtsp://127.0.0.1:{nothing}/cam")),
    );
    for (id, uri) in cameras {
        text.push_str(&format!(
            r#"
[[cameras]]
id = "{id}"
owner = "city_management"
uri = "{uri}"
grid = "G-0102"
patrol = "north"
fps = 5
timeout_s = 5
motion = {{ enabled = false }}
privacy_masks = [[[0.0, 0.0], [0.3, 0.0], [0.3, 0.3], [0.0, 0.3]]]

  [[cameras.zones]]
  name = "zone"
  polygon = {zone}

  [[cameras.rules]]
  name = "zone-rule"
  kind = "zone_intrusion"
  zone = "zone"
  labels = ["person"]
  min_frames = 2
  cooldown_s = 0.5
"#,
            zone = common::WALKWAY,
        ));
    }
    text
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn a_patrol_checks_every_camera_each_round_two_at_a_time_and_an_unreachable_one_is_offline() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().port();
    let _server = common::RtspCamera::start_with(port, &["--mounts", "6"]);
    let nothing = common::free_port().port();
    let config = common::pipeline_config(dir.path(), &config(dir.path(), port, nothing));
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("patrol `north`")),
        "a round of 7 cameras, two at a time, with a 2 s dwell cannot finish in 1 s: {:?}",
        config.warnings()
    );

    let shutdown = Shutdown::new();
    let outbox = dir.path().join("outbox.sqlite");
    {
        let stop = shutdown.clone();
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            common::eventually(Duration::from_secs(90), || {
                common::patrol_rounds_stored(&outbox) >= ROUNDS
            });
            stop.trigger();
        });
    }
    pipeline::run(
        &config,
        RunOptions {
            shutdown,
            detectors: Some(vec![Box::new(PersonInTheWalkway {
                start: std::time::Instant::now(),
            }) as Box<dyn Detector>]),
            ..RunOptions::default()
        },
    )
    .unwrap();

    // Every sink has each round: the JSON Lines file here.
    let lines = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rounds: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "skynet.patrol_round.v1")
        .collect();
    assert!(rounds.len() >= ROUNDS as usize, "{} rounds", rounds.len());

    let schema = common::published_schema("patrol_round.schema.json");
    let order = ["cam0", "cam-gone", "cam1", "cam2", "cam3", "cam4", "cam5"];
    let mut numbers = Vec::new();
    let mut observed: BTreeMap<String, u64> = BTreeMap::new();
    for event in &rounds {
        let errors = common::schema_errors(&schema, event);
        assert!(errors.is_empty(), "{errors:?}\n{event:#}");
        let data = &event["data"];
        let round = data["round"].as_u64().unwrap();
        numbers.push(round);
        // Numbered by the every_s slot (1 s here) it started in: on time, or at once after
        // an overrun (its time is read just after the number: up to a slot more on a loaded
        // machine).
        let started = time(&data["started"]).timestamp_millis();
        assert!(
            (round as i64 * 1000..round as i64 * 1000 + 2000).contains(&started),
            "round {round} started at {started} ms"
        );
        assert_eq!(event["id"], format!("north/{round}"));
        assert_eq!(event["subject"], "north");
        assert_eq!(event["time"], data["finished"]);
        let cameras = data["cameras"].as_array().unwrap();
        let ids: Vec<&str> = cameras.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, order, "every camera, in visiting order");
        let by_id: BTreeMap<&str, &serde_json::Value> = ids.iter().copied().zip(cameras).collect();
        eprintln!(
            "round {round}: {:?}",
            cameras
                .iter()
                .map(|c| (
                    c["id"].as_str().unwrap(),
                    c["frames"].as_u64(),
                    c["observations"].as_u64()
                ))
                .collect::<Vec<_>>()
        );

        // The unreachable camera: offline, nothing analysed; all others checked.
        assert_eq!(by_id["cam-gone"]["status"], "offline", "{data:#}");
        assert_eq!(by_id["cam-gone"]["frames"], 0);
        assert!(by_id["cam-gone"].get("snapshot").is_none());
        for id in order.iter().filter(|id| **id != "cam-gone") {
            let look = by_id[id];
            assert_eq!(look["status"], "checked", "{id}: {data:#}");
            assert!(look["frames"].as_u64().unwrap() > 0, "{id}: {look}");
            *observed.entry(id.to_string()).or_default() += look["observations"].as_u64().unwrap();
            // The look's snapshot, under [evidence] dir.
            let snapshot = look["snapshot"].as_str().unwrap();
            let path = format!("patrol/north/{round}/{id}.jpg");
            assert!(snapshot.ends_with(&path), "{snapshot}");
            let jpeg = std::fs::read(dir.path().join("evidence").join(&path)).unwrap();
            assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG");
        }

        // Never more than two open at once: at each visit's start, count the visits open.
        let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = cameras
            .iter()
            .map(|c| (time(&c["opened"]), time(&c["closed"])))
            .collect();
        for (start, _) in &spans {
            let open = spans
                .iter()
                .filter(|(o, c)| o <= start && start < c)
                .count();
            assert!(open <= 2, "{open} open at {start}: {spans:?}");
        }
        // The offline camera did not hold its slot: cam1 opened while cam0, visited beside
        // it, was still open.
        assert!(
            time(&by_id["cam1"]["opened"]) < time(&by_id["cam0"]["closed"]),
            "{data:#}"
        );
    }
    // The rules ran on the visits: each checked camera's observations are counted.
    assert!(observed.values().all(|n| *n > 0), "{observed:?}");
    // Each round here overruns its 1 s: the next takes the slot it starts in, later numbers
    // skipped rather than run back to back.
    assert!(numbers[1] > numbers[0] + 1, "{numbers:?}");

    // Two rounds offline in a row: `camera_offline` opened for it, and only for it.
    let offline: Vec<String> = common::stored_events(dir.path())
        .into_iter()
        .filter(|e| e.data.category == "camera_offline")
        .map(|e| e.data.camera.to_string())
        .collect();
    assert_eq!(offline, ["cam-gone"]);
}

/// `bad.toml:LINE:COL: message` for a config that must be refused.
fn error_for(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match skynet::PipelineConfig::load(&path) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e
            .to_string()
            .replace(&path.display().to_string(), "bad.toml"),
    }
}

#[test]
fn patrol_config_errors_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let valid = config(dir.path(), 8554, 8555);
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;

    // A camera naming no patrol: at its `patrol` value.
    let text = valid.replacen("patrol = \"north\"", "patrol = \"south\"", 1);
    let e = error_for(&text);
    let line = line_of(&text, "patrol = \"south\"");
    assert!(e.starts_with(&format!("bad.toml:{line}:10: ")), "{e}");
    assert!(
        e.contains("no `[[patrols]]` is named `south` (patrols: north)"),
        "{e}"
    );

    // Out of range: at the key.
    let text = valid.replace("max_concurrent = 2", "max_concurrent = 0");
    let e = error_for(&text);
    let line = line_of(&text, "max_concurrent = 0");
    assert!(e.starts_with(&format!("bad.toml:{line}:")), "{e}");
    assert!(e.contains("max_concurrent"), "{e}");

    // Two patrols of one name.
    let text = valid.replace(
        "[[patrols]]\n",
        "[[patrols]]\nname = \"north\"\nevery_s = 60\ndwell_s = 3\n\n[[patrols]]\n",
    );
    let e = error_for(&text);
    assert!(e.contains("two patrols are named `north`"), "{e}");

    // An unknown key.
    let text = valid.replace("dwell_s = 2\n", "dwell_s = 2\nevery = 3\n");
    let e = error_for(&text);
    let line = line_of(&text, "every = 3");
    assert!(e.starts_with(&format!("bad.toml:{line}:1: ")), "{e}");
}
