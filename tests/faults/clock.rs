//! Time (issue 21, part 6).
//!
//! - A wall-clock jump: `skynet run` with sensors on a private Mosquitto. One gas sensor's
//!   leak opens an incident; then a reading stamped a year ahead arrives (the edge's
//!   `max_future_s` opened wide, as a wrong clock on the machine would let it through). The
//!   jump is counted in `skynet_clock_jumps_total`, the clock moves one `max_clock_step_s`,
//!   the open incident is not closed by it, and the reading counts at the engine's time.
//! - Replay across a gap: a recorded day (gas-and-person.jsonl, then the same again three
//!   hours later) through `skynet replay` gives the same incident revisions as the engine
//!   fed the same observations with a live wall clock ticking through the night; after the
//!   gap the evidence opens new incidents, and the old ones' closing revisions come first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use skynet_risk::RiskEngine;

use crate::common::mosquitto::{Broker, Mqtt};
use crate::common::{
    eventually, free_port, http_get, metric, repo, skynet_bin, spawn_logged, stored_events,
    terminate, text,
};

const GAS_RULE: &str = r#"
  [[sensors.rules]]
  kind = "threshold"
  above = 50.0
  for_s = 0
  category = "gas_leak"
  weight = 0.6
"#;

fn sensor_config(
    dir: &Path,
    listen: SocketAddr,
    broker: &str,
    id: &str,
    prefix: &str,
) -> std::path::PathBuf {
    let repo = repo();
    let mut sensors = String::new();
    for (sensor, grid) in [("gas-j", "G-0201"), ("gas-k", "G-0301")] {
        sensors += &format!(
            "[[sensors]]\nid = \"{sensor}\"\nkind = \"gas_co\"\ngrid = \"{grid}\"\nowner = \"safety_production\"\n{GAS_RULE}"
        );
    }
    let text = format!(
        r#"
[node]
name = "clock-test"
[metrics]
listen = "{listen}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
[risk]
max_clock_step_s = 60
# Long enough that only a jump, not the test's own time, could close the incident.
close_after_s = 3600
[mqtt]
url = "{broker}"
client_id = "{id}"
clean_session = true
deadletter_topic = "{prefix}-deadletter"
# Readings a year ahead pass the edge, as they would on a machine whose clock is wrong.
max_future_s = 100000000
  [[mqtt.topics]]
  pattern = "{prefix}/senml/+"
{sensors}
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
    );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The incident revisions committed so far: `(grid, id, status, first_seen)`.
fn committed(dir: &Path) -> Vec<(String, String, String, DateTime<Utc>)> {
    stored_events(dir)
        .into_iter()
        .map(|e| {
            let i = e.data;
            (
                i.grid.to_string(),
                i.id,
                format!("{:?}", i.status).to_lowercase(),
                i.first_seen,
            )
        })
        .collect()
}

#[test]
fn a_wall_clock_jump_is_counted_and_does_not_close_open_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let broker = Broker::start();
    let prefix = format!("skynet-test/{}-clock", std::process::id());
    let id = prefix.replace('/', "-");
    let config = sensor_config(dir.path(), listen, &broker.url(), &id, &prefix);
    let (mut child, log) = spawn_logged(&config, &[]);
    let metrics = || http_get(listen, "/metrics").unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(60), || metric(
            &metrics(),
            "skynet_mqtt_connected"
        ) == 1.0),
        "skynet connects to the broker"
    );
    broker.wait_subscribed(&id, &format!("{prefix}/senml/+"), 1);
    let publisher = Mqtt::connect(&broker.url(), &format!("{id}-pub"));
    let now = Utc::now();
    let at = |t: DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;
    publisher.publish(
        &format!("{prefix}/senml/gas-j"),
        format!(
            r#"[{{"bn":"gas-j/","bt":{},"bu":"ppm","n":"co","v":80}}]"#,
            at(now)
        ),
    );
    assert!(
        eventually(Duration::from_secs(60), || committed(dir.path())
            .iter()
            .any(|(grid, ..)| grid == "G-0201")),
        "the leak's incident is committed: {}",
        log.lock().unwrap()
    );
    let leak = committed(dir.path())
        .into_iter()
        .find(|(grid, ..)| grid == "G-0201")
        .unwrap()
        .1;

    // A reading stamped a year ahead.
    let year_ahead = now + chrono::Duration::days(365);
    publisher.publish(
        &format!("{prefix}/senml/gas-k"),
        format!(
            r#"[{{"bn":"gas-k/","bt":{},"bu":"ppm","n":"co","v":80}}]"#,
            at(year_ahead)
        ),
    );
    assert!(
        eventually(Duration::from_secs(60), || metric(
            &metrics(),
            "skynet_clock_jumps_total"
        ) >= 1.0
            && committed(dir.path())
                .iter()
                .any(|(grid, ..)| grid == "G-0301")),
        "the jump is counted and the reading's incident committed: {}",
        log.lock().unwrap()
    );
    let events = committed(dir.path());
    // The open incident is still open: the clock moved one step, not a year.
    assert!(
        events
            .iter()
            .filter(|(_, id, ..)| *id == leak)
            .all(|(_, _, status, _)| status != "closed"),
        "{events:?}"
    );
    // The reading counted at the engine's time (a step ahead at most), not a year ahead.
    let (_, _, _, first_seen) = events.iter().find(|(grid, ..)| grid == "G-0301").unwrap();
    assert!(
        *first_seen < now + chrono::Duration::hours(1),
        "first seen {first_seen}, a year ahead would be {year_ahead}"
    );
    let (_, text) = terminate(&mut child, &log);
    assert!(text.contains("the clock jumped forward"), "{text}");
    drop(broker);
}

/// `(id, revision, change, status, state, level)` of each incident revision, in order.
fn revisions(events: &[Value]) -> Vec<(String, u64, String, String, String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "skynet.incident.v1")
        .map(|e| {
            let d = &e["data"];
            let s = |k: &str| d[k].as_str().unwrap().to_string();
            (
                s("id"),
                d["revision"].as_u64().unwrap(),
                s("change"),
                s("status"),
                s("state"),
                s("level"),
            )
        })
        .collect()
}

/// A line of a recording, moved `by` later (its time and its reading's).
fn shifted(line: &str, by: chrono::Duration) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let shift = |t: &mut Value| {
        let at: DateTime<Utc> = t.as_str().unwrap().parse().unwrap();
        *t = Value::String((at + by).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    };
    shift(&mut v["at"]);
    if let Some(reading) = v["evidence"].get_mut("reading") {
        shift(&mut reading["at"]);
    }
    v.to_string()
}

#[test]
fn replay_across_a_gap_gives_the_incidents_of_live() {
    let fixture =
        std::fs::read_to_string(repo().join("tests/fixtures/replay/gas-and-person.jsonl")).unwrap();
    let lines: Vec<&str> = fixture.lines().filter(|l| !l.trim().is_empty()).collect();
    let gap = chrono::Duration::hours(3);
    let mut day: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    day.extend(lines.iter().map(|l| shifted(l, gap)));
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("day.jsonl");
    std::fs::write(&recording, day.join("\n") + "\n").unwrap();

    let out = Command::new(skynet_bin())
        .args(["replay", "--config", "configs/city.toml"])
        .arg(&recording)
        .current_dir(repo())
        .output()
        .expect("skynet runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replayed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Live: the same engine and observations, with the wall clock advancing it every
    // second in between (the pipeline does ten times a second), night included.
    let config = skynet::PipelineConfig::load(&repo().join("configs/city.toml")).unwrap();
    let mut engine = skynet_risk::GridRiskEngine::new(config.risk.clone(), config.risk_context());
    let mut live = Vec::new();
    for line in &day {
        let observation: skynet_core::Observation = serde_json::from_str(line).unwrap();
        if let Some(mut t) = engine.clock() {
            t += chrono::Duration::seconds(1);
            while t < observation.at {
                live.extend(engine.advance(t));
                t += chrono::Duration::seconds(1);
            }
        }
        live.extend(engine.observe(&observation));
    }
    live.extend(engine.flush());
    let live: Vec<Value> = live
        .iter()
        .map(|e| {
            serde_json::from_str(
                &skynet_emit::OutboxEvent::new(&config.node, e)
                    .to_json()
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(engine.clock_jumps(), 0, "a ticking clock never jumps");

    let replayed = revisions(&replayed);
    assert_eq!(replayed, revisions(&live), "replay equals live");

    // After the gap, new incidents; the old ones closed (quiet) before the first of them.
    let first_half: BTreeSet<&str> = replayed[..]
        .iter()
        .take_while(|r| r.2 != "quiet")
        .map(|r| r.0.as_str())
        .collect();
    let first_new = replayed
        .iter()
        .position(|r| r.2 == "opened" && !first_half.contains(r.0.as_str()))
        .expect("evidence after the gap opens a new incident");
    let closed: BTreeSet<&str> = replayed[..first_new]
        .iter()
        .filter(|r| r.2 == "quiet")
        .map(|r| r.0.as_str())
        .collect();
    assert_eq!(
        closed, first_half,
        "every old incident closed before: {replayed:?}"
    );
    assert!(
        replayed[first_new..]
            .iter()
            .all(|r| !first_half.contains(r.0.as_str())),
        "nothing after the gap joins an old incident: {replayed:?}"
    );
}
