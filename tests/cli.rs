//! The `skynet` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

use common::{repo, text};

fn skynet(args: &[&str]) -> Output {
    Command::new(common::skynet_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("skynet runs")
}

fn dog_jpg() -> PathBuf {
    [
        skynet::paths::data_dir().join("media/dog.jpg"),
        repo().join("../shared/media/dog.jpg"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("dog.jpg: run scripts/setup.sh")
}

#[test]
fn check_accepts_the_demo_config() {
    let out = skynet(&["check", "--config", "configs/demo.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(
        "ok: configs/demo.toml (1 camera(s), 3 rule(s), 3 grid cell(s), model yolox_nano)"
    ));
}

#[test]
fn check_accepts_the_city_config() {
    let out = skynet(&["check", "--config", "configs/city.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(
            "ok: configs/city.toml (1 camera(s), 5 sensor(s), 8 rule(s), 4 grid cell(s), model yolox_nano)"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_rejects_a_bad_config_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let demo = std::fs::read_to_string(repo().join("configs/demo.toml")).unwrap();
    std::fs::write(&bad, demo.replace("[grids]\nfile", "[grids]\nfiel")).unwrap();
    let out = skynet(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:18:1: unknown field `fiel`, expected `file`",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn detect_prints_one_json_object_per_image() {
    let dog = dog_jpg();
    let out = skynet(&[
        "--log-format",
        "json",
        "detect",
        "--model",
        "models/yolox_nano.toml",
        "--threshold",
        "0.5",
        dog.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["image"], dog.to_str().unwrap());
    let labels: Vec<&str> = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["dog", "bicycle", "car"]);
    assert_eq!(v["detections"][0]["box"].as_array().unwrap().len(), 4);
    // Logs stay off stdout, one JSON object per line on stderr.
    for line in text(&out.stderr).lines() {
        let log: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(log["level"].is_string(), "{line}");
    }
}

#[test]
fn detect_reports_a_bad_image_and_goes_on() {
    let dog = dog_jpg();
    let out = skynet(&[
        "detect",
        "--model",
        "models/yolox_nano.toml",
        "/nonexistent.jpg",
        dog.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent.jpg"));
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn a_missing_onnx_runtime_says_what_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(common::skynet_bin())
        .args(["detect", "--model", "models/yolox_nano.toml", "x.jpg"])
        .current_dir(repo())
        .env_remove("ORT_DYLIB_PATH")
        .env("SKYNET_DATA_DIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("ONNX Runtime library not found"), "{err}");
    assert!(
        err.contains(
            &empty
                .path()
                .join("lib/libonnxruntime.so")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains("scripts/setup.sh"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = skynet(&[
        "detect",
        "--onnxruntime",
        "/opt/nowhere/libonnxruntime.so",
        "--model",
        "models/yolox_nano.toml",
        "x.jpg",
    ]);
    assert!(
        text(&out.stderr).contains("looked in: /opt/nowhere/libonnxruntime.so"),
        "{}",
        text(&out.stderr)
    );
}

/// The demo config, with its outputs moved into `dir` and `extra` camera settings.
fn demo_config_in(dir: &std::path::Path, extra: &str) -> PathBuf {
    common::config_in(dir, extra, "127.0.0.1:0".parse().unwrap(), "")
}

#[test]
fn run_until_eof_prints_incidents_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = demo_config_in(dir.path(), "max_frames = 120");
    let out = skynet(&["run", "--config", path.to_str().unwrap(), "--until-eof"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().expect("an incident on stdout")).unwrap();
    assert_eq!(first["type"], "skynet.incident.v1");
    assert_eq!(first["data"]["camera"], "cam-street-01");
    assert!(dir.path().join("outbox.sqlite").is_file());
    let jsonl = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    assert_eq!(
        jsonl, stdout,
        "the file sink and stdout carry the same events"
    );
    assert!(text(&out.stderr).contains("pipeline finished"));
}

#[test]
fn sigterm_drains_everything_in_flight_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    // Paced like a live camera, so it is still running when the signal comes.
    let path = demo_config_in(dir.path(), "realtime = true");
    let child = Command::new(common::skynet_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The signal comes once the first incident is committed (a condition, not a pause):
    // the run is then mid-video with revisions in flight.
    let outbox_path = dir.path().join("outbox.sqlite");
    let committed = common::eventually(std::time::Duration::from_secs(120), || {
        outbox_path.exists()
            && skynet_emit::Outbox::open(&outbox_path)
                .and_then(|o| o.events())
                .is_ok_and(|e| !e.is_empty())
    });
    assert!(committed, "no incident committed before the signal");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pipeline finished"), "{stderr}");
    // Every incident revision made before the signal reached stdout, the file and the outbox.
    let outbox = skynet_emit::Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
    let stored = outbox.events().unwrap().len();
    assert!(stored >= 1, "{stderr}");
    let incident_lines = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(r#""type":"skynet.incident.v1""#))
        .count();
    assert_eq!(incident_lines, stored);
    assert_eq!(outbox.pending_count("stdout").unwrap(), 0);
    assert_eq!(outbox.pending_count("jsonl").unwrap(), 0);
}

#[test]
fn the_deployment_example_config_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("deploy/skynet.example.toml")).unwrap();
    // Installed paths (container, systemd) point into the repository here.
    let local = example
        .replace(
            "/etc/skynet/grids.geojson",
            &repo()
                .join("configs/demo-grids.geojson")
                .display()
                .to_string(),
        )
        .replace(
            "/usr/share/skynet/models/",
            &format!("{}/models/", repo().display()),
        );
    let path = dir.path().join("skynet.toml");
    std::fs::write(&path, local).unwrap();
    let check = || {
        let mut command = Command::new(common::skynet_bin());
        command
            .args(["check", "--config", path.to_str().unwrap()])
            .current_dir(repo());
        command
    };
    // The camera's credentials come from the environment, as a service gets them.
    let out = check()
        .env("CAM_SQUARE_NORTH_01_USER", "viewer")
        .env("CAM_SQUARE_NORTH_01_PASSWORD", "pw-from-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without them, the error names the variable and where it is used.
    let out = check()
        .env_remove("CAM_SQUARE_NORTH_01_USER")
        .env_remove("CAM_SQUARE_NORTH_01_PASSWORD")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("CAM_SQUARE_NORTH_01_USER"), "{stderr}");
    assert!(stderr.contains("skynet.toml:"), "{stderr}");
}

#[test]
fn detect_rejects_an_out_of_range_threshold() {
    let out = skynet(&[
        "detect",
        "--model",
        "models/yolox_nano.toml",
        "--threshold",
        "30",
        "x.jpg",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--threshold must be between 0 and 1, got 30"));
}

#[test]
fn detect_tracks_a_video_and_writes_annotated_frames() {
    let dir = tempfile::tempdir().unwrap();
    let video = skynet::paths::data_dir().join("media/vtest.avi");
    let video = if video.is_file() {
        video
    } else {
        repo().join("../shared/media/vtest.avi")
    };
    let annotated = dir.path().join("frames");
    let out = skynet(&[
        "detect",
        "--model",
        "models/yolox_nano.toml",
        "--track",
        "--max-frames",
        "12",
        "--annotate",
        annotated.to_str().unwrap(),
        "--config",
        "configs/demo.toml",
        "--camera",
        "cam-street-01",
        video.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12, "one line per frame");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["frame"], i as u64);
        assert!(line["time"].is_string());
        assert!(line["tracks"].is_array());
    }
    // People walk through every frame of vtest.avi: by the last frames the tracker has
    // confirmed some, and their detections carry the track ids it lists.
    let last = &lines[11];
    let tracked: Vec<u64> = last["detections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["track"].as_u64())
        .collect();
    assert!(!tracked.is_empty(), "{last}");
    let listed: Vec<u64> = last["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert!(tracked.iter().all(|id| listed.contains(id)), "{last}");
    // One annotated JPEG per frame.
    let mut written: Vec<String> = std::fs::read_dir(&annotated)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written.len(), 12);
    assert_eq!(written[0], "vtest-000000.jpg");
    let image = image::open(annotated.join(&written[11])).unwrap();
    assert!(image.width() > 0);
}

#[test]
fn detect_needs_config_and_camera_together() {
    let out = skynet(&[
        "detect",
        "--model",
        "models/yolox_nano.toml",
        "--camera",
        "cam-street-01",
        "x.jpg",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
}

/// `skynet` with `input` on stdin.
fn skynet_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(common::skynet_bin())
        .args(args)
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skynet runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn users_are_added_listed_given_tokens_and_removed_with_audit_entries() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config_in(dir.path(), "");
    let config = config.to_str().unwrap();
    let add = |args: &[&str], password: &str| {
        let mut all = vec!["users", "add"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        skynet_with_stdin(&all, password)
    };
    let out = add(&["op", "--role", "operator"], "a long password\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("added user `op` (operator)"));
    // An inspector needs a department; owners and roles are checked.
    let out = add(&["insp", "--role", "inspector"], "a long password\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("an inspector sees the incidents of their department"),
        "{}",
        text(&out.stderr)
    );
    let out = add(
        &[
            "insp",
            "--role",
            "inspector",
            "--department",
            "emergency",
            "--owner",
            "army",
        ],
        "a long password\n",
    );
    assert!(text(&out.stderr).contains("owner `army` is not one of"));
    let out = add(&["x", "--role", "king"], "a long password\n");
    assert_eq!(out.status.code(), Some(2));
    let out = add(&["short", "--role", "operator"], "short\n");
    assert!(
        text(&out.stderr).contains("at least 12 characters"),
        "{}",
        text(&out.stderr)
    );
    let out = add(&["common", "--role", "operator"], "1QAZ2WSX3EDC\n");
    assert!(
        text(&out.stderr).contains("list of common passwords"),
        "{}",
        text(&out.stderr)
    );
    let out = add(&["empty", "--role", "operator"], "");
    assert!(text(&out.stderr).contains("no password on stdin"));
    let out = add(
        &["insp", "--role", "inspector", "--department", "emergency"],
        "another long one",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = skynet(&["users", "list", "--config", config]);
    assert_eq!(
        text(&out.stdout),
        "insp\tinspector\temergency\t-\nop\toperator\t-\t-\n"
    );
    let out = skynet(&[
        "users",
        "token",
        "op",
        "--label",
        "video wall",
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("ska_") && token.len() == 68, "{token}");
    let out = skynet(&["users", "token", "nobody", "--config", config]);
    assert_eq!(out.status.code(), Some(2));
    // Tokens expire: 90 days unless --ttl-days says otherwise (at least 1).
    let out = skynet(&[
        "users",
        "token",
        "op",
        "--ttl-days",
        "0",
        "--config",
        config,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = skynet(&[
        "users",
        "token",
        "op",
        "--ttl-days",
        "7",
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the token expires on"));
    {
        let db = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
        let days: Vec<i64> = db
            .prepare("SELECT CAST(julianday(expires_at) - julianday('now') + 0.5 AS INTEGER) FROM console_tokens WHERE kind = 'api' ORDER BY created_at")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(days, [90, 7]);
    }

    // The password and the token are stored hashed, and the changes are in the audit log.
    let db = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    let hash: String = db
        .query_row(
            "SELECT password_hash FROM console_users WHERE name = 'op'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains("a long password"));
    let tokens: i64 = db
        .query_row(
            "SELECT count(*) FROM console_tokens WHERE hash = ?1",
            [&token],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tokens, 0, "never stored as issued");
    let actions: Vec<String> = db
        .prepare("SELECT action || ' ' || target FROM console_audit ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        actions,
        [
            "user.put op",
            "user.put insp",
            "token.issue op",
            "token.issue op"
        ]
    );

    let out = skynet(&[
        "users", "revoke", "op", "--label", "other", "--config", config,
    ]);
    assert_eq!(out.status.code(), Some(1), "no token has that label");
    let out = skynet(&[
        "users",
        "revoke",
        "op",
        "--label",
        "video wall",
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("revoked 1 API token(s) of `op`"));
    let out = skynet(&["users", "remove", "op", "--config", config]);
    assert!(out.status.success());
    let out = skynet(&["users", "remove", "op", "--config", config]);
    assert_eq!(out.status.code(), Some(1));
}
