//! The runtime's promises, tested on the `skynet` binary as a supervisor runs it: restarts
//! after SIGKILL, sinks that block, sources that keep failing.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{
    RtspCamera, config_in, eventually, free_port, http_get, metric, spawn_logged, spawn_run,
    stored_events, terminate, text,
};

fn lines_by_id(jsonl: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_id: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
        let id = v["id"].as_str().unwrap().to_string();
        by_id.entry(id).or_default().push(v);
    }
    by_id
}

#[test]
fn an_incident_open_at_sigkill_goes_on_under_the_same_id_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Paced like a live camera so it is mid-stream when killed; a fixed start keeps both runs
    // on the same timeline.
    let config = config_in(
        dir.path(),
        "realtime = true\nmax_frames = 150\nstart_at = \"2026-11-26T08:00:00Z\"",
        free_port(),
        "",
    );
    let first = spawn_run(&config, &["--until-eof"], Stdio::piped());
    let opened = eventually(Duration::from_secs(60), || {
        !stored_events(dir.path()).is_empty()
    });
    let mut first = first;
    first.kill().unwrap(); // SIGKILL
    let first = first.wait_with_output().unwrap();
    assert!(
        opened,
        "no incident before the kill: {}",
        text(&first.stderr)
    );
    let before = stored_events(dir.path());
    let open_incident = before.last().unwrap().data.clone();
    assert_ne!(open_incident.status, skynet_core::IncidentStatus::Closed);

    let second = spawn_run(&config, &["--until-eof"], Stdio::piped())
        .wait_with_output()
        .unwrap();
    let stderr = text(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        stderr.contains("going on from the state committed"),
        "{stderr}"
    );

    let after = stored_events(dir.path());
    // The open incident went on under the same id, with the next revisions.
    let later: Vec<_> = after
        .iter()
        .filter(|e| e.data.id == open_incident.id && e.data.revision > open_incident.revision)
        .collect();
    assert!(
        !later.is_empty(),
        "the open incident did not go on: {after:#?}"
    );
    assert_eq!(later[0].data.revision, open_incident.revision + 1);
    assert_eq!(later[0].data.first_seen, open_incident.first_seen);

    // Every revision in the outbox reached every sink at least once, and no event id was
    // ever delivered with two different contents.
    let jsonl = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    let stdout = format!("{}{}", text(&first.stdout), text(&second.stdout));
    for (sink, delivered) in [
        ("jsonl", lines_by_id(&jsonl)),
        ("stdout", lines_by_id(&stdout)),
    ] {
        for event in &after {
            assert!(
                delivered.contains_key(&event.id),
                "{sink} lacks {}",
                event.id
            );
        }
        for (id, copies) in &delivered {
            assert!(
                copies.windows(2).all(|w| w[0] == w[1]),
                "{sink}: {id} delivered with different content"
            );
        }
    }
    // A sink that never acknowledged anything sees every stored body as it is.
    let outbox: BTreeMap<String, serde_json::Value> =
        skynet_emit::Outbox::open(&dir.path().join("outbox.sqlite"))
            .unwrap()
            .pending("never-acknowledged", 100_000)
            .unwrap()
            .into_iter()
            .map(|e| (e.id, serde_json::from_str(&e.body).unwrap()))
            .collect();
    for (id, copies) in lines_by_id(&jsonl) {
        assert_eq!(copies[0], outbox[&id], "{id} differs from the outbox");
    }
}

#[test]
fn a_stdout_sink_nobody_reads_stalls_neither_the_outbox_nor_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "max_frames = 300", free_port(), "");
    // A pipe that is already full: every write to it blocks. Filled here, before skynet
    // starts, by non-blocking writes until the kernel refuses one (no timing involved);
    // then blocking again, since skynet shares the open file and its flags.
    let (reader, mut writer) = std::io::pipe().unwrap();
    {
        use std::os::fd::AsRawFd;
        let fd = writer.as_raw_fd();
        // SAFETY: fcntl on a descriptor this test owns; only the status flags change.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags >= 0);
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == 0);
        for chunk in [4096, 1] {
            loop {
                match writer.write(&vec![b'x'; chunk]) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("filling the pipe: {e}"),
                }
            }
        }
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } == 0);
    }
    let child = spawn_run(
        &config,
        &["--until-eof"],
        Stdio::from(writer.try_clone().unwrap()),
    );
    // A stall would hang the test: a watchdog ends skynet after a generous deadline (far
    // beyond the seconds it needs), and the exit status below then says so.
    let pid = child.id();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let finished = std::sync::Arc::clone(&finished);
        std::thread::spawn(move || {
            if !eventually(Duration::from_secs(600), || {
                finished.load(std::sync::atomic::Ordering::SeqCst)
            }) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    watchdog.join().unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "skynet stalled behind its stdout (ended by the watchdog) or failed: {stderr}"
    );
    // Every frame analysed, every revision committed and in the file.
    assert!(stderr.contains("decoded=300 analysed=300"), "{stderr}");
    let events = stored_events(dir.path());
    assert!(!events.is_empty(), "{stderr}");
    let jsonl = lines_by_id(&std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap());
    for e in &events {
        assert!(jsonl.contains_key(&e.id), "jsonl lacks {}", e.id);
    }
    // The stdout sink is behind; its events wait in the outbox for the next start.
    assert!(stderr.contains("sink still behind at shutdown"), "{stderr}");
    let outbox = skynet_emit::Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
    assert_eq!(outbox.pending_count("jsonl").unwrap(), 0);
    assert!(outbox.pending_count("stdout").unwrap() > 0);
    drop(reader);
    let _ = writer.flush();
}

#[test]
fn a_source_that_keeps_failing_is_retried_and_readyz_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    // Nothing listens on this port: every connection is refused.
    let dead = free_port();
    let config = config_in(
        dir.path(),
        "max_frames = 20",
        listen,
        &format!(
            r#"
[[cameras]]
id = "cam-gone"
owner = "police"
uri = "rtsp://operator:s3cret-pw@127.0.0.1:{}/stream1"
grid = "G-0101"
reconnect = {{ initial_backoff_s = 0.1, max_backoff_s = 0.5 }}
"#,
            dead.port()
        ),
    );
    let (mut child, log) = spawn_logged(&config, &[]);
    let mut readyz = String::new();
    let mut metrics = String::new();
    let retried = eventually(Duration::from_secs(60), || {
        readyz = http_get(listen, "/readyz").unwrap_or_default();
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(
            &metrics,
            "skynet_source_restarts_total{camera=\"cam-gone\"}",
        ) >= 3.0
    });
    let healthz = http_get(listen, "/healthz").unwrap_or_default();
    let (status, stderr) = terminate(&mut child, &log);
    assert!(retried, "not retried:\n{metrics}\n{stderr}");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    let body: serde_json::Value =
        serde_json::from_str(readyz.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap();
    assert_eq!(body["ready"], false);
    let gone = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "cam-gone")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(gone["kind"], "source");
    assert_eq!(gone["state"], "retrying");
    assert!(
        gone["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{gone}"
    );
    assert!(
        metrics.contains("skynet_component_up{component=\"cam-gone\",kind=\"source\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skynet_component_up{component=\"jsonl\",kind=\"sink\"} 1"),
        "{metrics}"
    );
    // The password is in no log line, health reason or metric.
    for (what, output) in [
        ("stderr", &stderr),
        ("readyz", &readyz),
        ("metrics", &metrics),
    ] {
        assert!(
            !output.contains("s3cret-pw"),
            "{what} shows the password:\n{output}"
        );
    }
    // The process was stopped by the signal, with a camera failing: not a clean success.
    assert!(status.code().is_some(), "{stderr}");
}

#[test]
fn a_live_camera_that_vanishes_is_reconnected_without_a_process_restart() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let port = free_port().port();
    let camera = RtspCamera::start(port);
    let config = config_in(
        dir.path(),
        "",
        listen,
        &format!(
            r#"
[[cameras]]
id = "cam-rtsp"
owner = "police"
uri = "rtsp://127.0.0.1:{port}/cam"
grid = "G-0101"
reconnect = {{ initial_backoff_s = 0.2, max_backoff_s = 1 }}
stall_timeout_s = 2
"#
        ),
    );
    let (mut child, log) = spawn_logged(&config, &[]);
    let decoded = "skynet_frames_decoded_total{camera=\"cam-rtsp\"}";
    let up = "skynet_component_up{component=\"cam-rtsp\",kind=\"source\"}";
    let restarts = "skynet_source_restarts_total{camera=\"cam-rtsp\"}";
    let mut metrics = String::new();
    let flowing = eventually(Duration::from_secs(60), || {
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(&metrics, decoded) >= 20.0 && metric(&metrics, up) == 1.0
    });
    assert!(flowing, "no frames from the RTSP camera:\n{metrics}");

    camera.kill();
    let mut readyz = String::new();
    let noticed = eventually(Duration::from_secs(60), || {
        readyz = http_get(listen, "/readyz").unwrap_or_default();
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        readyz.starts_with("HTTP/1.1 503") && metric(&metrics, up) == 0.0
    });
    assert!(
        noticed,
        "the camera's loss went unnoticed:\n{readyz}\n{metrics}"
    );
    assert!(readyz.contains("\"component\":\"cam-rtsp\""), "{readyz}");
    // The camera stays away a while longer: the scenario, not a wait for anything.
    std::thread::sleep(Duration::from_secs(3));
    let before = metric(&metrics, decoded);

    let camera = RtspCamera::start(port);
    let back = eventually(Duration::from_secs(60), || {
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(&metrics, up) == 1.0 && metric(&metrics, decoded) >= before + 20.0
    });
    let ready_again = http_get(listen, "/readyz").unwrap_or_default();

    // A camera that stops sending but keeps its connection open (frozen) is caught by the
    // stall watchdog, and comes back when it thaws.
    let pid = camera.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let stalled = eventually(Duration::from_secs(30), || {
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(&metrics, up) == 0.0
    });
    let frozen_at = metric(&metrics, decoded);
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let thawed = eventually(Duration::from_secs(60), || {
        metrics = http_get(listen, "/metrics").unwrap_or_default();
        metric(&metrics, up) == 1.0 && metric(&metrics, decoded) >= frozen_at + 10.0
    });
    let (status, log) = terminate(&mut child, &log);
    assert!(back, "the camera did not come back:\n{metrics}\n{log}");
    assert!(metric(&metrics, restarts) >= 1.0, "{metrics}");
    assert!(ready_again.starts_with("HTTP/1.1 200"), "{ready_again}");
    assert!(stalled, "a frozen camera still shows up:\n{metrics}\n{log}");
    assert!(
        thawed,
        "the thawed camera did not come back:\n{metrics}\n{log}"
    );
    assert!(log.contains("stalled"), "{log}");
    assert!(status.success(), "exit {status:?}");
    drop(camera);
}

#[test]
fn an_outbox_that_keeps_refusing_commits_ends_the_process_non_zero_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "max_frames = 200", free_port(), "");
    let (mut child, log) = spawn_logged(&config, &[]);
    let started = eventually(Duration::from_secs(60), || {
        log.lock().unwrap().contains("stream started")
    });
    assert!(started, "{}", log.lock().unwrap());
    // Another process takes the outbox's write lock and keeps it: every commit is refused.
    let locker = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = eventually(Duration::from_secs(60), || {
        log.lock()
            .unwrap()
            .contains("outbox commit failed; retrying")
    });
    let (status, log) = terminate(&mut child, &log);
    drop(locker);
    assert!(refused, "{log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("error: the outbox stage failed: the outbox kept refusing commits"),
        "{log}"
    );
}
