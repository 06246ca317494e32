//! Hot reload on the `skynet` binary (README, "Hot reload"): two looping realtime file
//! cameras; a threshold change of one camera by SIGHUP reconnects nothing and stops neither
//! camera's frames; an invalid file, and a change that needs a restart, are refused (counted
//! `outcome="error"`) while the running config goes on.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{
    eventually, free_port, http_get, live_config_in, media, metric, spawn_logged, terminate,
};

/// Two cameras replaying vtest.avi at its own pace, for ever; `classes_a` goes under cam-a.
fn cameras(classes_a: &str) -> String {
    let video = media("vtest.avi").display().to_string();
    format!(
        r#"
[[cameras]]
id = "cam-a"
owner = "city_management"
uri = "{video}"
realtime = true
loop = true
fps = 4.0
grid = "G-0102"
{classes_a}

[[cameras]]
id = "cam-b"
owner = "city_management"
uri = "{video}"
realtime = true
loop = true
fps = 4.0
grid = "G-0102"
"#
    )
}

fn metrics(listen: SocketAddr) -> String {
    http_get(listen, "/metrics").unwrap_or_default()
}

fn value(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, &format!("{name}{{{labels}}} "))
}

fn reloads(text: &str, outcome: &str) -> f64 {
    value(
        text,
        "skynet_config_reloads_total",
        &format!("outcome=\"{outcome}\""),
    )
}

fn camera(text: &str, name: &str, id: &str) -> f64 {
    value(text, name, &format!("camera=\"{id}\""))
}

fn score_filtered(text: &str, id: &str) -> f64 {
    value(
        text,
        "skynet_detections_filtered_total",
        &format!("camera=\"{id}\",reason=\"score\""),
    )
}

/// The config `dir/skynet.toml` rewritten with `cameras` in place of the ones it has.
fn rewrite(path: &Path, cameras: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let head = text.split("\n[[cameras]]").next().unwrap().to_string();
    std::fs::write(path, format!("{head}\n{cameras}")).unwrap();
}

/// Waits until the reload thread counts (both outcomes at 0: SIGHUP is caught from then on)
/// and both cameras decode.
fn wait_running(listen: SocketAddr, log: &std::sync::Arc<std::sync::Mutex<String>>) {
    assert!(
        eventually(Duration::from_secs(120), || {
            let m = metrics(listen);
            m.contains("skynet_config_reloads_total{outcome=\"ok\"} 0")
                && camera(&m, "skynet_frames_decoded_total", "cam-a") > 0.0
                && camera(&m, "skynet_frames_decoded_total", "cam-b") > 0.0
        }),
        "not running with hot reload:\n{}",
        log.lock().unwrap()
    );
}

#[test]
fn a_threshold_reload_reconnects_no_camera_and_stops_no_frames() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let config = live_config_in(dir.path(), listen, &cameras(""));
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_running(listen, &log);

    let before = metrics(listen);
    // Every label's lowest score is the detector's threshold: the filter drops none by score.
    assert_eq!(score_filtered(&before, "cam-a"), 0.0, "{before}");
    // cam-a now keeps only people scored at least 0.99: nearly every person is dropped.
    rewrite(
        &config,
        &cameras("  [cameras.classes.person]\n  min_score = 0.99\n"),
    );
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(30), || reloads(&metrics(listen), "ok")
            == 1.0),
        "no reload:\n{}",
        log.lock().unwrap()
    );
    let reloaded = metrics(listen);
    // The new threshold is in effect for cam-a (people below 0.99 dropped by score), and
    // both cameras go on decoding, with no reconnection.
    let frames = |m: &str, id: &str| camera(m, "skynet_frames_decoded_total", id);
    assert!(
        eventually(Duration::from_secs(120), || {
            let m = metrics(listen);
            score_filtered(&m, "cam-a") > 0.0
                && frames(&m, "cam-a") > frames(&reloaded, "cam-a") + 8.0
                && frames(&m, "cam-b") > frames(&reloaded, "cam-b") + 8.0
        }),
        "the new threshold never dropped a person, or a camera stopped:\n{}\n{}",
        metrics(listen),
        log.lock().unwrap()
    );
    let after = metrics(listen);
    for id in ["cam-a", "cam-b"] {
        assert_eq!(
            camera(&after, "skynet_camera_reconnects_total", id),
            camera(&before, "skynet_camera_reconnects_total", id),
            "{id} reconnected"
        );
    }
    assert_eq!(
        score_filtered(&after, "cam-b"),
        0.0,
        "cam-b's threshold changed"
    );
    assert_eq!(reloads(&after, "error"), 0.0);

    let (status, text) = terminate(&mut child, &log);
    // Every camera, with its own stop signal, stopped with the process.
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("config reloaded"), "{text}");
    assert!(text.contains("camera thresholds: cam-a"), "{text}");
}

#[test]
fn an_invalid_or_restart_only_reload_is_refused_and_the_old_config_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let config = live_config_in(dir.path(), listen, &cameras(""));
    let (mut child, log) = spawn_logged(&config, &["--watch"]);
    wait_running(listen, &log);

    // Invalid: a score out of range. Seen by the watch, refused with where and why.
    rewrite(
        &config,
        &cameras("  [cameras.classes.person]\n  min_score = 1.5\n"),
    );
    assert!(
        eventually(Duration::from_secs(30), || reloads(
            &metrics(listen),
            "error"
        ) == 1.0),
        "no refused reload:\n{}",
        log.lock().unwrap()
    );
    let refused = metrics(listen);
    assert_eq!(reloads(&refused, "ok"), 0.0);

    // Needs a restart: another outbox. Refused too, with the reason.
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = text.replace(
        "path = \"./outbox.sqlite\"",
        "path = \"./elsewhere.sqlite\"",
    );
    assert_ne!(text, moved, "the test's config has no ./outbox.sqlite");
    // In one write: the watch must not see a half-made file.
    let head = moved.split("\n[[cameras]]").next().unwrap().to_string();
    std::fs::write(&config, format!("{head}\n{}", cameras(""))).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || reloads(
            &metrics(listen),
            "error"
        ) == 2.0),
        "the outbox change was not refused:\n{}",
        log.lock().unwrap()
    );

    // The old config goes on: both cameras decode, nothing is dropped by score.
    assert!(
        eventually(Duration::from_secs(60), || {
            let m = metrics(listen);
            ["cam-a", "cam-b"].iter().all(|id| {
                camera(&m, "skynet_frames_decoded_total", id)
                    > camera(&refused, "skynet_frames_decoded_total", id) + 8.0
            })
        }),
        "a camera stopped after a refused reload"
    );
    let m = metrics(listen);
    assert_eq!(score_filtered(&m, "cam-a"), 0.0);
    assert_eq!(reloads(&m, "ok"), 0.0);

    let (status, text) = terminate(&mut child, &log);
    // Every camera, with its own stop signal, stopped with the process.
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("config reload refused"), "{text}");
    assert!(
        text.contains("skynet.toml:"),
        "the reason names file:line:col: {text}"
    );
    assert!(text.contains("changing [outbox] needs a restart"), "{text}");
    assert!(!dir.path().join("elsewhere.sqlite").exists());
}

/// cam-a's zone rule over the walkway of vtest.avi, with `zone` as its polygon.
fn zone_rule(zone: &str) -> String {
    format!(
        r#"
  [[cameras.zones]]
  name = "walk"
  polygon = {zone}

  [[cameras.rules]]
  name = "walk-rule"
  kind = "zone_intrusion"
  zone = "walk"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0
"#
    )
}

#[test]
fn a_source_and_a_rule_change_restart_that_source_alone_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    // With a console: the reload goes to its audit log.
    let api = format!("[api]\nlisten = \"{}\"\n", free_port());
    // cam-a keeps people from 0.5: the reload's audit row has that value's old and new.
    let person = |score: &str| format!("  [cameras.classes.person]\n  min_score = {score}\n");
    let config = live_config_in(
        dir.path(),
        listen,
        &format!(
            "{api}{}",
            cameras(&format!("{}{}", person("0.5"), zone_rule(common::WALKWAY)))
        ),
    );
    let (mut child, log) = spawn_logged(&config, &["--watch"]);
    wait_running(listen, &log);
    let before = metrics(listen);

    // cam-b reads another file; cam-a's zone moves and its person score rises. Seen by the
    // watch.
    let copy = dir.path().join("vtest-copy.avi");
    std::fs::copy(media("vtest.avi"), &copy).unwrap();
    let video = media("vtest.avi").display().to_string();
    let changed = cameras(&format!("{}{}", person("0.99"), zone_rule(common::NOBODY)));
    let (a, b) = changed.split_at(changed.rfind("[[cameras]]").unwrap());
    let b = b.replace(&video, &copy.display().to_string());
    rewrite(&config, &format!("{a}{b}"));
    assert!(
        eventually(Duration::from_secs(30), || reloads(&metrics(listen), "ok")
            == 1.0),
        "no reload:\n{}",
        log.lock().unwrap()
    );
    let reloaded = metrics(listen);
    assert!(
        eventually(Duration::from_secs(60), || {
            let text = log.lock().unwrap().clone();
            let m = metrics(listen);
            text.contains("source restarted with the reloaded config")
                && text.contains("rules rebuilt from the reloaded config")
                && camera(&m, "skynet_frames_decoded_total", "cam-a")
                    > camera(&reloaded, "skynet_frames_decoded_total", "cam-a") + 8.0
                && camera(&m, "skynet_frames_decoded_total", "cam-b")
                    > camera(&reloaded, "skynet_frames_decoded_total", "cam-b") + 8.0
        }),
        "cam-b's source was not restarted, the rules not rebuilt, or a camera stopped:\n{}",
        log.lock().unwrap()
    );
    let after = metrics(listen);
    assert_eq!(
        camera(&after, "skynet_camera_reconnects_total", "cam-a"),
        camera(&before, "skynet_camera_reconnects_total", "cam-a"),
        "cam-a reconnected"
    );
    let (status, text) = terminate(&mut child, &log);
    // Every camera, with its own stop signal, stopped with the process.
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        text.contains("camera sources: cam-b; camera thresholds: cam-a; camera rules: cam-a"),
        "{text}"
    );
    // Only cam-b's source restarted.
    assert_eq!(
        text.matches("source restarted with the reloaded config")
            .count(),
        1,
        "{text}"
    );

    let db = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    let (actor, target, entry): (String, String, String) = db
        .query_row(
            "SELECT actor, target, after FROM console_audit WHERE action = 'config_reload'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(actor, "reload");
    assert!(target.ends_with("skynet.toml"), "{target}");
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["outcome"], "ok");
    assert_eq!(entry["trigger"], "file changed");
    assert_eq!(
        entry["diff"]["camera_sources"],
        serde_json::json!(["cam-b"])
    );
    assert_eq!(entry["diff"]["camera_rules"], serde_json::json!(["cam-a"]));
    // The live limits' old and new values; nothing else of the file.
    assert_eq!(
        entry["diff"]["values"],
        serde_json::json!([
            {"camera": "cam-a", "key": "classes.person.min_score", "old": 0.5, "new": 0.99}
        ])
    );
    assert!(
        text.contains("values: cam-a classes.person.min_score 0.5 -> 0.99"),
        "{text}"
    );
}

#[test]
fn a_refused_reload_never_logs_or_audits_a_urls_password() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let api = format!("[api]\nlisten = \"{}\"\n", free_port());
    let config = live_config_in(dir.path(), listen, &format!("{api}{}", cameras("")));
    let (mut child, log) = spawn_logged(&config, &["--watch"]);
    wait_running(listen, &log);

    // A webhook whose URL has no `://`: the config error would repeat it, password and all.
    let text = std::fs::read_to_string(&config).unwrap();
    let leaky = text.replacen(
        "\n[[cameras]]",
        "\n[[sinks]]\nkind = \"webhook\"\nurl = \"htp//user:hunter2pass@example.com/x\"\n\n[[cameras]]",
        1,
    );
    assert_ne!(text, leaky);
    std::fs::write(&config, leaky).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || reloads(
            &metrics(listen),
            "error"
        ) == 1.0),
        "the webhook change was not refused:\n{}",
        log.lock().unwrap()
    );
    assert_eq!(reloads(&metrics(listen), "ok"), 0.0);

    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("config reload refused"), "{text}");
    assert!(text.contains("details on `skynet check`"), "{text}");
    assert!(
        !text.contains("hunter2pass"),
        "the password is in the log:\n{text}"
    );

    let db = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    let mut stmt = db
        .prepare("SELECT COALESCE(before, '') || COALESCE(after, '') FROM console_audit")
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        rows.iter().all(|r| !r.contains("hunter2pass")),
        "the password is in the audit log: {rows:?}"
    );
    let entry: String = db
        .query_row(
            "SELECT after FROM console_audit WHERE action = 'config_reload'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["outcome"], "error");
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("skynet.toml:"), "{reason}");
    assert!(reason.contains("details on `skynet check`"), "{reason}");
}
