//! Attacks on what lies on disk and what is shown: a local user reading the state database
//! (password and token hashes, notes, the audit) or the evidence JPEGs because the umask
//! let them; a camera password in a query string reaching the log or the metrics; a dead
//! letter whose reason carries terminal escapes.
//!
//! The umask is the process's: the tests that need a permissive one take [`UMASK`], set
//! 0o022 (the usual default, under which a plain create gives 0644) and put it back.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use skynet_emit::{CloudEvent, Outbox, OutboxEvent};

use crate::common::{
    config_in, eventually, free_port, http_get, live_config_in, metric, skynet_bin, spawn_logged,
    terminate,
};

static UMASK: Mutex<()> = Mutex::new(());

/// Runs `f` with the umask 0o022, restored after.
fn with_permissive_umask<R>(f: impl FnOnce() -> R) -> R {
    let _one_at_a_time = UMASK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: umask only swaps the process's file mode mask.
    let before = unsafe { libc::umask(0o022) };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // SAFETY: as above.
    unsafe { libc::umask(before) };
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn incident(id: &str) -> skynet_core::Incident {
    serde_json::from_value(serde_json::json!({
        "id": id, "revision": 1, "status": "opened", "state": "open", "change": "opened",
        "category": "gas_leak", "level": "II", "level_colour": "orange", "risk_score": 0.7,
        "confidence": 0.9, "grid": "G-0201", "department": "emergency", "deadlines": {},
        "sensor": "gas-07", "owner": "safety_production",
        "first_seen": "2026-11-27T10:00:00Z", "last_seen": "2026-11-27T10:00:00Z",
        "observations": 3, "contributions": [], "detections": [],
        "rule": {"name": "gas-high", "kind": "threshold"}
    }))
    .unwrap()
}

#[test]
fn the_state_database_and_its_journal_are_created_owner_only_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/state");
    let db = state.join("outbox.sqlite");
    with_permissive_umask(|| {
        let mut outbox = Outbox::open(&db).unwrap();
        outbox
            .commit(
                &[OutboxEvent::Incident(CloudEvent::incident(
                    "test",
                    &incident("inc-1"),
                ))],
                None,
            )
            .unwrap();
        let store = skynet_serve::console::ConsoleStore::open(&db).unwrap();
        // The write-ahead log and its index exist while a connection is open.
        assert!(db.with_extension("sqlite-wal").exists());
        assert_eq!(mode(&db), 0o600, "the database");
        assert_eq!(mode(&db.with_extension("sqlite-wal")), 0o600, "its -wal");
        assert_eq!(mode(&db.with_extension("sqlite-shm")), 0o600, "its -shm");
        assert_eq!(mode(&state), 0o700, "the directory created for it");
        assert_eq!(mode(&dir.path().join("var")), 0o700, "and its parent");
        drop((store, outbox));
        // The console's store alone creates it owner-only too.
        let other = dir.path().join("console/state.sqlite");
        drop(skynet_serve::console::ConsoleStore::open(&other).unwrap());
        assert_eq!(mode(&other), 0o600);
        // The legitimate use goes on: the database still opens and reads.
        assert_eq!(Outbox::open(&db).unwrap().events().unwrap().len(), 1);
    });
}

#[test]
fn a_state_database_left_readable_by_others_is_tightened_at_start_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", free_port(), "");
    let db = dir.path().join("outbox.sqlite");
    drop(Outbox::open(&db).unwrap());
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Any command that opens the database tightens it: here `skynet users list`.
    let output = Command::new(skynet_bin())
        .args(["users", "list", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // (Old -wal and -shm files are tightened too: skynet-core's unit tests; SQLite removes
    // them when the last connection closes, so none is left here to look at.)
    assert_eq!(mode(&db), 0o600, "{stderr}");
    assert!(
        stderr.contains("tightened") && stderr.contains("outbox.sqlite"),
        "the warning names the file: {stderr}"
    );
    // Once tight, nothing more is said.
    let output = Command::new(skynet_bin())
        .args(["users", "list", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stderr).contains("tightened"));
}

#[test]
fn evidence_and_recorded_observations_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence");
    let config = skynet_snapshot::SnapshotConfig {
        enabled: true,
        dir: evidence.clone(),
        url_base: "/evidence/".into(),
        retain: Duration::from_secs(86_400),
        jpeg_quality: 80,
        min_interval: chrono::Duration::seconds(1),
        max_per_s: 10.0,
        clips: skynet_snapshot::ClipsConfig::default(),
        max_bytes: None,
    };
    with_permissive_umask(|| {
        let store = skynet_snapshot::SnapshotStore::new(&config);
        let image = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        let jpeg = store.encode(&image).unwrap();
        let stored = store.write("inc-1", 1, &jpeg).unwrap();
        assert_eq!(mode(&stored.path), 0o600, "the JPEG");
        assert_eq!(mode(&evidence.join("inc-1")), 0o700, "its incident folder");
        assert_eq!(mode(&evidence), 0o700, "the evidence directory");
        // Evidence from before (or copied in) is tightened by the sweep at start.
        let old = evidence.join("inc-1/0.jpg");
        std::fs::write(&old, &jpeg).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        skynet_snapshot::sweep(&evidence, Duration::from_secs(86_400)).unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::read(&stored.path).unwrap(), jpeg, "still readable");

        let record = dir.path().join("records/observations.jsonl");
        let recorder = skynet_risk::recorder::ObservationRecorder::open(&record).unwrap();
        drop(recorder);
        assert_eq!(mode(&record), 0o600, "the observation record");
        assert_eq!(mode(record.parent().unwrap()), 0o700);
    });
}

#[test]
fn a_camera_password_in_the_query_string_never_reaches_the_log_or_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let nothing = free_port().port();
    let config = live_config_in(
        dir.path(),
        listen,
        &format!(
            r#"
[[cameras]]
id = "cam-query-pw"
owner = "city_management"
uri = "rtsp://127.0.0.1:{nothing}/cam?user=a&password=qu3ry-s3cret&channel=1"
grid = "G-0102"
reconnect = {{ initial_backoff_s = 0.2, max_backoff_s = 0.5 }}
"#
        ),
    );
    let (mut child, log) = spawn_logged(&config, &[]);
    let mut metrics = String::new();
    let retried = eventually(Duration::from_secs(60), || {
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(
            &metrics,
            "skynet_camera_reconnects_total{camera=\"cam-query-pw\"}",
        ) >= 2.0
    });
    let readyz = http_get(listen, "/readyz").unwrap_or_default();
    let (_, log) = terminate(&mut child, &log);
    assert!(retried, "{metrics}\n{log}");
    // The failure is shown, so the test looked where the URI would be.
    assert!(log.contains("cam-query-pw"), "{log}");
    for text in [&readyz, &metrics, &log] {
        assert!(
            !text.contains("qu3ry-s3cret"),
            "the password leaked:\n{text}"
        );
    }
}

#[test]
fn a_dead_letter_reason_with_terminal_escapes_prints_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", free_port(), "");
    let db = dir.path().join("outbox.sqlite");
    let event = CloudEvent::incident("test", &incident("inc-esc"));
    let mut outbox = Outbox::open(&db).unwrap();
    outbox
        .commit(&[OutboxEvent::Incident(event.clone())], None)
        .unwrap();
    // A destination's answer, stored as it came: clear the screen, retitle the window,
    // a C1 CSI, and a carriage return that would overwrite the line.
    let reason = "HTTP 400: \x1b[2J\x1b]0;owned\x07 \u{9b}31m\rfake line";
    let letter = skynet_emit::DeadLetter {
        sink: "hook".into(),
        seq: 1,
        id: event.id.clone(),
        status: Some(400),
        reason: reason.into(),
        at: chrono::Utc::now(),
        body: serde_json::to_string(&event).unwrap(),
        replay: false,
    };
    outbox
        .acknowledge_with_dead_letters("hook", 1, &[letter])
        .expect("a dead letter stored");
    drop(outbox);
    let dead_letters = |extra: &[&str]| {
        Command::new(skynet_bin())
            .args(["outbox", "dead-letters"])
            .args(extra)
            .args(["--config", config.to_str().unwrap()])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let output = dead_letters(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&event.id), "{stdout}");
    assert!(
        !stdout.contains(['\x1b', '\x07', '\r', '\u{9b}']),
        "raw control characters reached the terminal: {stdout:?}"
    );
    assert!(stdout.contains("\\u{1b}[2J"), "{stdout}");
    assert!(stdout.contains("\\u{9b}31m"), "{stdout}");
    // `--json` keeps the reason whole, as valid JSON with every control escaped.
    let output = dead_letters(&["--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains(['\x1b', '\x07', '\r', '\u{9b}']),
        "{stdout:?}"
    );
    let letter: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(letter["reason"], reason);
}
