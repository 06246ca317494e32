//! `skynet replay` on configs/city.toml: recorded observations in, exactly the expected
//! incidents and grid-risk changes out, the same on every run.

use std::path::Path;
use std::process::Command;

mod common;

use common::{published_schema, repo, schema_errors, text};
use serde_json::Value;

/// Runs `skynet replay --config configs/city.toml <observations>`; the events it printed.
fn replay(observations: &Path) -> (Vec<Value>, String, bool) {
    let out = Command::new(common::skynet_bin())
        .args(["replay", "--config", "configs/city.toml"])
        .arg(observations)
        .current_dir(repo())
        .output()
        .expect("skynet runs");
    let events = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (events, text(&out.stderr), out.status.success())
}

fn fixture(name: &str) -> std::path::PathBuf {
    repo().join("tests/fixtures/replay").join(name)
}

/// `(category, revision, change, level, state)` of each incident revision, in order.
fn incidents(events: &[Value]) -> Vec<(String, u64, String, String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "skynet.incident.v1")
        .map(|e| {
            let d = &e["data"];
            (
                d["category"].as_str().unwrap().to_string(),
                d["revision"].as_u64().unwrap(),
                d["change"].as_str().unwrap().to_string(),
                d["level"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `(grid, previous level, level)` of each grid-risk change.
fn grid_changes(events: &[Value]) -> Vec<(String, Value, Value)> {
    events
        .iter()
        .filter(|e| e["type"] == "skynet.grid_risk.v1")
        .map(|e| {
            let d = &e["data"];
            (
                d["grid"].as_str().unwrap().to_string(),
                d["previous_level"].clone(),
                d["level"].clone(),
            )
        })
        .collect()
}

fn row(
    category: &str,
    revision: u64,
    change: &str,
    level: &str,
) -> (String, u64, String, String, String) {
    (
        category.into(),
        revision,
        change.into(),
        level.into(),
        "open".into(),
    )
}

#[test]
fn a_gas_leak_and_a_person_present_make_a_level_one_incident() {
    let (events, stderr, ok) = replay(&fixture("gas-and-person.jsonl"));
    assert!(ok, "{stderr}");
    assert_eq!(
        incidents(&events),
        vec![
            // Not seen by the cell's camera yet: flagged, at lower confidence.
            row("gas_leak", 1, "opened", "IV"),
            row("gas_leak", 2, "evidence", "IV"),
            // The camera sees a person: the alarm is confirmed...
            row("gas_leak", 3, "confirmed", "IV"),
            // ...and the fusion rule makes the level I incident.
            row("person_exposed_to_gas", 1, "opened", "I"),
            row("gas_leak", 4, "escalated", "II"),
            row("person_exposed_to_gas", 2, "evidence", "I"),
        ]
    );
    assert_eq!(
        grid_changes(&events),
        vec![
            ("G-0201".into(), Value::Null, "IV".into()),
            ("G-0201".into(), "IV".into(), "I".into()),
        ]
    );
    let fused = &events
        .iter()
        .find(|e| e["data"]["category"] == "person_exposed_to_gas")
        .unwrap()["data"];
    assert_eq!(fused["department"], "emergency-management");
    assert_eq!(fused["rule"]["kind"], "fusion");
    assert_eq!(fused["rule"]["name"], "person-exposed-to-gas");
    // Dispatched within 5 minutes, resolved within the hour (the category's deadlines).
    assert_eq!(fused["deadlines"]["dispatch_by"], "2026-11-27T09:06:30Z");
    assert_eq!(fused["deadlines"]["resolve_by"], "2026-11-27T10:01:30Z");
    // It explains itself: every observation that contributed.
    let parts: Vec<(&str, &str)> = fused["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["source"]["id"].as_str().unwrap(),
                c["category"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![("gas-07", "gas_leak"), ("cam-safety-03", "person_present")]
    );
    let leak = &events[0]["data"];
    assert_eq!(leak["verification"], "required");
    assert_eq!(leak["sensor"], "gas-07");
    assert_eq!(leak["reading"]["unit"], "ppm");
}

#[test]
fn smoke_and_a_crowd_make_a_confirmed_fire() {
    let (events, stderr, ok) = replay(&fixture("smoke-and-crowd.jsonl"));
    assert!(ok, "{stderr}");
    assert_eq!(
        incidents(&events),
        vec![
            row("smoke", 1, "opened", "IV"),
            // The 09:00:20 reading, `update_every_s` (30 s) after the opening, as live.
            row("smoke", 2, "evidence", "IV"),
            row("smoke", 3, "confirmed", "IV"),
            row("crowd", 1, "opened", "III"),
            row("fire_confirmed", 1, "opened", "II"),
        ]
    );
    let fire = &events
        .iter()
        .find(|e| e["data"]["category"] == "fire_confirmed")
        .unwrap()["data"];
    assert_eq!(fire["department"], "fire-brigade");
    assert_eq!(fire["contributions"].as_array().unwrap().len(), 2);
    assert_eq!(
        grid_changes(&events),
        vec![
            ("G-0201".into(), Value::Null, "IV".into()),
            ("G-0201".into(), "IV".into(), "II".into()),
        ]
    );
}

#[test]
fn a_camera_offline_opens_until_it_is_back() {
    let (events, stderr, ok) = replay(&fixture("camera-offline.jsonl"));
    assert!(ok, "{stderr}");
    let revisions = incidents(&events);
    assert_eq!(
        revisions,
        vec![
            row("camera_offline", 1, "opened", "IV"),
            (
                "camera_offline".into(),
                2,
                "recovered".into(),
                "IV".into(),
                "closed".into()
            ),
        ]
    );
    assert_eq!(events[0]["data"]["camera"], "cam-safety-03");
    assert_eq!(events[0]["data"]["rule"]["kind"], "device_fault");
    assert_eq!(events[0]["data"]["first_seen"], "2026-11-27T09:00:00Z");
    assert!(grid_changes(&events).is_empty(), "a fault is not a hazard");
}

#[test]
fn a_duplicate_storm_gives_one_incident() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.jsonl");
    let line = std::fs::read_to_string(fixture("gas-and-person.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&path, format!("{line}\n").repeat(1000)).unwrap();
    let (events, stderr, ok) = replay(&path);
    assert!(ok, "{stderr}");
    assert_eq!(
        incidents(&events),
        vec![
            row("gas_leak", 1, "opened", "IV"),
            // At the end of the input: what the 999 repeats added (count, confidence).
            row("gas_leak", 2, "evidence", "IV"),
        ]
    );
    let last = &events.last().unwrap()["data"];
    assert_eq!(last["observations"], 1000);
    assert_eq!(last["contributions"][0]["count"], 1000);
    assert_eq!(grid_changes(&events).len(), 1);
}

#[test]
fn a_missed_deadline_escalates_the_incident() {
    let (events, stderr, ok) = replay(&fixture("missed-deadline.jsonl"));
    assert!(ok, "{stderr}");
    let revisions = incidents(&events);
    let changes: Vec<(&str, &str)> = revisions
        .iter()
        .filter(|r| r.2 != "evidence")
        .map(|r| (r.2.as_str(), r.3.as_str()))
        .collect();
    assert_eq!(changes, vec![("opened", "II"), ("deadline_missed", "I")]);
    let missed = events
        .iter()
        .find(|e| e["data"]["change"] == "deadline_missed")
        .unwrap();
    assert_eq!(missed["data"]["missed"], serde_json::json!(["dispatch"]));
    assert_eq!(missed["data"]["department"], "water-affairs");
    // Escalated at its due time (09:30), before the evidence of that minute joined it: the
    // revision reports the occurrence as last seen, at 09:29.
    assert_eq!(missed["time"], "2026-11-27T09:29:00Z");
    assert_eq!(
        grid_changes(&events),
        vec![
            ("G-0301".into(), Value::Null, "II".into()),
            ("G-0301".into(), "II".into(), "I".into()),
        ]
    );
}

#[test]
fn a_replay_is_exact_ids_included() {
    let first = replay(&fixture("gas-and-person.jsonl")).0;
    let second = replay(&fixture("gas-and-person.jsonl")).0;
    assert!(!first.is_empty());
    assert_eq!(first, second);
}

#[test]
fn bad_lines_are_named_and_the_rest_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let good = std::fs::read_to_string(fixture("gas-and-person.jsonl")).unwrap();
    let good = good.lines().next().unwrap();
    std::fs::write(
        &path,
        format!(
            "{good}\n{{\"at\": \"yesterday\"}}\n{}\n\n{}\n",
            good.replace("G-0201", "G-9999"),
            good.replace("\"weight\":0.6", "\"weight\":7"),
        ),
    )
    .unwrap();
    let (events, stderr, ok) = replay(&path);
    assert!(!ok, "refused lines make the exit status 1");
    assert!(
        stderr.contains("mixed.jsonl:2: not an observation"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mixed.jsonl:3: unknown grid `G-9999`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mixed.jsonl:5: `weight` must be within [0, 1], got 7"),
        "{stderr}"
    );
    assert_eq!(incidents(&events).len(), 1, "the good line still counts");
}

/// The published JSON Schemas describe what skynet really reads and writes: every fixture
/// observation, and every event a replay of them prints, validates against its schema.
#[test]
fn the_events_and_observations_validate_against_the_published_schemas() {
    let schema = published_schema;
    let observation = schema("observation.schema.json");
    let incident = schema("incident.schema.json");
    let grid_risk = schema("grid_risk.schema.json");
    let mut seen = std::collections::BTreeSet::new();
    for name in [
        "gas-and-person.jsonl",
        "smoke-and-crowd.jsonl",
        "camera-offline.jsonl",
        "missed-deadline.jsonl",
    ] {
        let input = std::fs::read_to_string(fixture(name)).unwrap();
        for line in input.lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            let errors: Vec<String> = observation
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {line}: {errors:?}");
        }
        let (events, stderr, ok) = replay(&fixture(name));
        assert!(ok, "{stderr}");
        for event in &events {
            let kind = event["type"].as_str().unwrap().to_string();
            let validator = match kind.as_str() {
                "skynet.incident.v1" => &incident,
                "skynet.grid_risk.v1" => &grid_risk,
                other => panic!("unexpected event type {other}"),
            };
            let errors = schema_errors(validator, event);
            assert!(errors.is_empty(), "{name}: {event}: {errors:?}");
            seen.insert(kind);
        }
    }
    assert_eq!(seen.len(), 2, "both event types were checked");
    // And the schemas refuse what is wrong: a level that does not exist.
    let (events, _, _) = replay(&fixture("gas-and-person.jsonl"));
    let mut wrong = events[0].clone();
    wrong["data"]["level"] = "V".into();
    assert!(!incident.is_valid(&wrong));
}

// ---- What-if: `skynet replay --config NEW --compare OLD` -------------------------------

/// configs/city.toml written to `dir/name`, its relative paths made absolute, each
/// `(from, to)` replaced (each must occur).
fn city_config(dir: &Path, name: &str, changes: &[(&str, &str)]) -> std::path::PathBuf {
    let root = repo().display().to_string();
    let mut text = std::fs::read_to_string(repo().join("configs/city.toml"))
        .unwrap()
        .replace(
            "\"city-grids.geojson\"",
            &format!("\"{root}/configs/city-grids.geojson\""),
        )
        .replace("\"../", &format!("\"{root}/"));
    for (from, to) in changes {
        assert!(text.contains(from), "configs/city.toml has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `[detect.classes.person] min_score = 0.85`: the recorded person (0.8) is below it.
const STRICT_PERSON: (&str, &str) = (
    "queue = 4\n",
    "queue = 4\n\n[detect.classes.person]\nmin_score = 0.85\n",
);

/// Runs `skynet replay --config NEW --compare OLD [--json] OBSERVATIONS`: stdout's lines,
/// stderr, success.
fn compare(new: &Path, old: &Path, observations: &Path, json: bool) -> (Vec<String>, String, bool) {
    let mut command = Command::new(common::skynet_bin());
    command
        .arg("replay")
        .arg("--config")
        .arg(new)
        .arg("--compare")
        .arg(old);
    if json {
        command.arg("--json");
    }
    let out = command
        .arg(observations)
        .current_dir(repo())
        .output()
        .expect("skynet runs");
    let lines = text(&out.stdout).lines().map(str::to_string).collect();
    (lines, text(&out.stderr), out.status.success())
}

/// Every fixture's observations, one after the other: a small recorded "day".
fn recorded_day(dir: &Path) -> std::path::PathBuf {
    let mut day = String::new();
    for name in [
        "gas-and-person.jsonl",
        "smoke-and-crowd.jsonl",
        "camera-offline.jsonl",
        "missed-deadline.jsonl",
    ] {
        day.push_str(&std::fs::read_to_string(fixture(name)).unwrap());
    }
    let path = dir.join("day.jsonl");
    std::fs::write(&path, day).unwrap();
    path
}

const LEAK: &str = "grid G-0201 gas_leak sensor gas-07 first seen 2026-11-27T09:00:00Z";
const FUSED: &str =
    "grid G-0201 person_exposed_to_gas camera cam-safety-03 first seen 2026-11-27T09:01:30Z";

#[test]
fn a_higher_person_threshold_drops_the_fused_incident_and_lowers_the_leak() {
    let dir = tempfile::tempdir().unwrap();
    let old = city_config(dir.path(), "old.toml", &[]);
    let new = city_config(dir.path(), "new.toml", &[STRICT_PERSON]);
    let (lines, stderr, ok) = compare(&new, &old, &recorded_day(dir.path()), false);
    assert!(ok, "{stderr}");
    // The person seen at 0.8 is below 0.85: no fusion, and the leak is never confirmed by
    // the camera, so it stays at IV. The other five incidents (smoke, crowd, fire, the
    // camera's fault, the flood) are as they were.
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("changed {LEAK} level II\u{2192}IV id ")),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with(&format!("dropped {FUSED} level I id ")),
        "{lines:#?}"
    );
    assert_eq!(
        lines[2],
        "0 added, 1 dropped, 1 changed in level, 5 unchanged"
    );
}

#[test]
fn the_other_way_round_the_fused_incident_is_added_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let strict = city_config(dir.path(), "strict.toml", &[STRICT_PERSON]);
    let lax = city_config(dir.path(), "lax.toml", &[]);
    let (lines, stderr, ok) = compare(&lax, &strict, &fixture("gas-and-person.jsonl"), true);
    assert!(ok, "{stderr}");
    let rows: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(rows.len(), 3, "{lines:#?}");
    assert_eq!(rows[0]["change"], "changed");
    assert_eq!(rows[0]["category"], "gas_leak");
    assert_eq!(
        rows[0]["source"],
        serde_json::json!({"kind": "sensor", "id": "gas-07"})
    );
    assert_eq!(
        (&rows[0]["old_level"], &rows[0]["new_level"]),
        (&"IV".into(), &"II".into())
    );
    assert_eq!(rows[0]["old_id"], rows[0]["new_id"], "the same occurrence");
    assert_eq!(rows[1]["change"], "added");
    assert_eq!(rows[1]["category"], "person_exposed_to_gas");
    assert_eq!(rows[1]["first_seen"], "2026-11-27T09:01:30Z");
    assert_eq!(rows[1]["old_level"], Value::Null);
    assert_eq!(rows[1]["new_level"], "I");
    assert_eq!(
        rows[2],
        serde_json::json!({"summary": {"added": 1, "dropped": 0, "changed": 1, "unchanged": 0,
            "old_incidents": 1, "new_incidents": 2}})
    );
}

#[test]
fn a_lower_ceiling_changes_the_level_only() {
    let dir = tempfile::tempdir().unwrap();
    let old = city_config(dir.path(), "old.toml", &[]);
    let new = city_config(
        dir.path(),
        "new.toml",
        &[(
            "[risk.categories.gas_leak]\n  ceiling = \"II\"",
            "[risk.categories.gas_leak]\n  ceiling = \"III\"",
        )],
    );
    let (lines, stderr, ok) = compare(&new, &old, &recorded_day(dir.path()), false);
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("changed {LEAK} level II\u{2192}III id ")),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1],
        "0 added, 0 dropped, 1 changed in level, 6 unchanged"
    );
}

#[test]
fn a_config_compared_with_itself_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = city_config(dir.path(), "same.toml", &[]);
    let (lines, stderr, ok) = compare(&config, &config, &recorded_day(dir.path()), false);
    assert!(ok, "{stderr}");
    assert_eq!(
        lines,
        ["0 added, 0 dropped, 0 changed in level, 7 unchanged"]
    );
}

#[test]
fn a_what_if_names_the_lines_it_refused_and_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = city_config(dir.path(), "same.toml", &[]);
    let path = dir.path().join("mixed.jsonl");
    let good = std::fs::read_to_string(fixture("gas-and-person.jsonl")).unwrap();
    std::fs::write(&path, format!("{{\"at\": \"yesterday\"}}\n{good}")).unwrap();
    let (lines, stderr, ok) = compare(&config, &config, &path, false);
    assert!(!ok, "a refused line makes the exit status 1");
    assert!(
        stderr.contains("mixed.jsonl:1: not an observation"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("mixed.jsonl:1:").count(),
        1,
        "reported once, not once per config: {stderr}"
    );
    assert_eq!(
        lines,
        ["0 added, 0 dropped, 0 changed in level, 2 unchanged"]
    );
}
