//! Delivery to NATS JetStream and the case system's feedback, against real servers: each
//! test starts its own nats-server on a spare port (`nats-server -js -p PORT -sd DIR`,
//! stopped by its pid when the test ends), which it may stop and start again. None uses a
//! server it did not start.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use serde_json::{Value, json};
use skynet_core::ComponentHealth;
use skynet_emit::{Committer, IncidentSink, JsonLinesSink, NatsSink, NatsSinkConfig, Outbox};

/// Names no other test (or run) uses: streams and subjects are global on a server.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn every_revision_reaches_jetstream_once_after_dedup_while_nats_is_stopped_for_30_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::start(&dir.path().join("nats"));
    let outbox_path = dir.path().join("outbox.sqlite");
    let rt = tokio_runtime();
    let mut config = NatsSinkConfig::for_url(nats.url());
    config.ack_timeout_s = 2.0;
    let nats_health = ComponentHealth::detached("nats", "sink");
    let sinks: Vec<(Box<dyn IncidentSink>, ComponentHealth)> = vec![
        (Box::new(NatsSink::new("nats", config)), nats_health.clone()),
        (
            Box::new(JsonLinesSink::new(
                "file",
                &dir.path().join("incidents.jsonl"),
            )),
            ComponentHealth::detached("file", "sink"),
        ),
    ];
    let mut committer = Committer::new("n1", Outbox::open(&outbox_path).unwrap());
    let deliveries =
        skynet_emit::spawn_deliveries(rt.handle(), &outbox_path, sinks, committer.wake_handle());

    // 20 revisions a second for 45 s; NATS stops at 5 s for 30 s. The pacing is the
    // simulated workload: no assertion depends on how fast anything runs.
    let started = Instant::now();
    let mut stopped_at = None;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(45) {
        committer.commit(&[incident(n)], None).unwrap();
        n += 1;
        let t = started.elapsed();
        if stopped_at.is_none() && t >= Duration::from_secs(5) {
            nats.stop();
            stopped_at = Some(t);
        }
        if nats.child.is_none() && stopped_at.is_some_and(|s| t >= s + Duration::from_secs(30)) {
            assert!(
                eventually(Duration::from_secs(60), || nats_health
                    .status()
                    .unwrap()
                    .state
                    != skynet_core::ComponentState::Up),
                "the sink shows that NATS is down"
            );
            nats.resume();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        deliveries.shutdown(Duration::from_secs(60)).is_empty(),
        "every sink caught up"
    );

    let stored = outbox_ids(&committer);
    assert_eq!(stored.len(), n as usize);
    let messages = rt.block_on(read_stream(&nats.url(), "SKYNET_INCIDENTS"));
    let delivered: BTreeSet<String> = messages.iter().map(|(id, ..)| id.clone()).collect();
    assert_eq!(
        delivered, stored,
        "after dedup by id, JetStream holds exactly the outbox"
    );
    // The server deduplicated by Nats-Msg-Id: each event is in the stream once.
    assert_eq!(messages.len(), stored.len());
    let (id, subject, headers, body) = &messages[0];
    assert_eq!(subject, "skynet.incidents.G-00.gas_leak");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(headers["ce-id"], *id);
    assert_eq!(headers["ce-type"], "skynet.incident.v1");
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-source"], "skynet/n1");
    let file = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    assert_eq!(file.lines().count(), n as usize);
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Publishes a case-status event for `incident` to JetStream (acked, as a case system does).
async fn send_status(url: &str, prefix: &str, incident: &str, status: &str, note: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let event = json!({
        "specversion": "1.0", "id": unique("case-"), "source": "cases/test",
        "type": "skynet.case_status.v1", "datacontenttype": "application/json",
        "data": {"incident": incident, "status": status, "department": "city-management-bureau",
                 "assignee": "crew 7", "note": note, "at": chrono::Utc::now()}
    });
    let errors = schema_errors(&published_schema("case_status.schema.json"), &event);
    assert!(errors.is_empty(), "{event}: {errors:?}");
    let subject = format!("{prefix}.{incident}");
    // The stream is skynet's: it may not exist yet in the first seconds.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = js
            .publish(subject.clone(), serde_json::to_vec(&event).unwrap().into())
            .await;
        if let Ok(ack) = sent
            && ack.await.is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "could not publish a case status on {subject}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stored(dir: &Path) -> Vec<Value> {
    let Ok(outbox) = Outbox::open(&dir.join("outbox.sqlite")) else {
        return Vec::new();
    };
    outbox
        .pending("never-acknowledged", 1_000_000)
        .unwrap_or_default()
        .into_iter()
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect()
}

#[test]
fn case_status_moves_the_lifecycle_across_a_sigkill_and_every_revision_reaches_jetstream() {
    let dir = tempfile::tempdir().unwrap();
    // The test's own server: it goes with the test (stopped by pid on drop).
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let session_nats = nats.url();
    let session_nats = session_nats.as_str();
    let stream = unique("T_INC_");
    let prefix = unique("t");
    let cases_stream = unique("T_CASES_");
    let cases_prefix = format!("{prefix}.cases");
    // The webhook receiver answers 500 to its first 5 requests, then takes every signed
    // event: a count, not a time, so a slow start cannot skip the failures.
    let rt = tokio_runtime();
    let receiver = Arc::new(Mutex::new(Hook::default()));
    let hook = rt.block_on(serve_hook(Arc::clone(&receiver), 5));
    let more = format!(
        r#"
[[sinks]]
kind = "nats"
name = "queue"
url = "${{TEST_NATS_URL}}"
stream = "{stream}"
subject_prefix = "{prefix}"

[[sinks]]
kind = "webhook"
name = "hook"
url = "http://{hook}/events"
secret = "{HOOK_SECRET}"
timeout_s = 2

[cases]
url = "${{TEST_NATS_URL}}"
stream = "{cases_stream}"
subject_prefix = "{cases_prefix}"
durable = "{prefix}"
sources = ["cases/test"]
"#
    );
    let config = config_in(
        dir.path(),
        "realtime = true\nmax_frames = 250\nstart_at = \"2026-11-26T08:00:00Z\"",
        free_port(),
        &more,
    );
    let env = [("TEST_NATS_URL", session_nats.to_string())];

    // Killed with SIGKILL once the first incident is committed, then started again.
    let (mut first, first_log) = spawn_logged_with_env(&config, &["--until-eof"], &env);
    let opened = eventually(Duration::from_secs(60), || {
        stored(dir.path())
            .iter()
            .any(|e| e["type"] == "skynet.incident.v1")
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        opened,
        "no incident before the kill: {}",
        first_log.lock().unwrap()
    );
    let (mut second, second_log) = spawn_logged_with_env(&config, &["--until-eof"], &env);

    let incident = stored(dir.path())
        .into_iter()
        .find(|e| e["type"] == "skynet.incident.v1")
        .unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let has_state = |state: &str| {
        stored(dir.path()).iter().any(|e| {
            e["data"]["id"] == incident.as_str()
                && e["data"]["state"] == state
                && e["data"]["change"] == "feedback"
        })
    };
    rt.block_on(send_status(
        session_nats,
        &cases_prefix,
        &incident,
        "acknowledged",
        "seen",
    ));
    assert!(
        eventually(Duration::from_secs(60), || has_state("acknowledged")),
        "no acknowledged revision: {}",
        second_log.lock().unwrap()
    );
    rt.block_on(send_status(
        session_nats,
        &cases_prefix,
        &incident,
        "dispatched",
        "crew out",
    ));
    assert!(eventually(Duration::from_secs(60), || has_state(
        "dispatched"
    )));
    // Sent twice (a case system retrying): applied once.
    rt.block_on(send_status(
        session_nats,
        &cases_prefix,
        &incident,
        "dispatched",
        "crew out",
    ));
    rt.block_on(send_status(
        session_nats,
        &cases_prefix,
        &incident,
        "resolved",
        "cleared",
    ));
    assert!(eventually(Duration::from_secs(60), || has_state(
        "resolved"
    )));
    // Not a case-status event at all: refused, and nothing else stops.
    let client = rt.block_on(async_nats::connect(session_nats)).unwrap();
    rt.block_on(async {
        let js = jetstream::new(client);
        js.publish(format!("{cases_prefix}.{incident}"), "{not json".into())
            .await
            .unwrap()
            .await
            .unwrap();
    });

    let status = second.wait().unwrap();
    let log = second_log.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    assert!(log.contains("case status event refused"), "{log}");

    let events = stored(dir.path());
    let revisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["id"] == incident.as_str() && e["data"]["change"] == "feedback")
        .collect();
    let states: Vec<&str> = revisions
        .iter()
        .map(|e| e["data"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["acknowledged", "dispatched", "resolved"],
        "applied once each, in order"
    );
    let resolved = revisions[2];
    assert_eq!(resolved["data"]["department"], "city-management-bureau");
    assert_eq!(resolved["data"]["assignee"], "crew 7");
    assert_eq!(resolved["data"]["note"], "cleared");

    // The incident's rule has one decided incident and no false alarm in the history.
    let out = Command::new(common::skynet_bin())
        .args(["outbox", "false-alarms", "--json", "--config"])
        .arg(&config)
        .env("TEST_NATS_URL", session_nats)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rates: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rule = &resolved["data"]["rule"]["name"];
    let rate = rates
        .iter()
        .find(|r| r["rule"] == *rule)
        .expect("the incident's rule");
    assert!(rate["decided"].as_u64().unwrap() >= 1, "{rates:?}");
    assert_eq!(rate["rejected"], 0);

    // Feedback revisions and all: what skynet wrote matches its published schemas.
    let (incident_schema, grid_risk_schema) = (
        published_schema("incident.schema.json"),
        published_schema("grid_risk.schema.json"),
    );
    for event in &events {
        let schema = match event["type"].as_str() {
            Some("skynet.incident.v1") => &incident_schema,
            _ => &grid_risk_schema,
        };
        let errors = schema_errors(schema, event);
        assert!(errors.is_empty(), "{event}: {errors:?}");
    }

    // Every revision in the outbox reached JetStream; after dedup the sets are equal.
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let messages = rt.block_on(read_stream(session_nats, &stream));
    let delivered: BTreeSet<String> = messages.iter().map(|(id, ..)| id.clone()).collect();
    assert_eq!(delivered, ids);
    for (_, subject, _, body) in &messages {
        let expected = match body["type"].as_str().unwrap() {
            "skynet.incident.v1" => format!(
                "{prefix}.incidents.{}.{}",
                body["data"]["grid"].as_str().unwrap(),
                body["data"]["category"].as_str().unwrap()
            ),
            _ => format!(
                "{prefix}.grid_risk.{}",
                body["data"]["grid"].as_str().unwrap()
            ),
        };
        assert_eq!(subject, &expected);
    }
    // The webhook got every revision too, each signed, after its failures.
    let hook = receiver.lock().unwrap();
    assert!(hook.failed > 0, "the receiver answered 500 for a while");
    assert_eq!(hook.bad_signatures, 0);
    assert_eq!(hook.taken.iter().cloned().collect::<BTreeSet<_>>(), ids);
    // And so did the file.
    let file: BTreeSet<String> = std::fs::read_to_string(dir.path().join("incidents.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(file, ids);
    rt.shutdown_timeout(Duration::from_secs(1));
}

const HOOK_SECRET: &str = "conservation-secret";

/// A webhook receiver: 500 to its first `failures` requests, then 200 for every correctly
/// signed event.
#[derive(Default)]
struct Hook {
    taken: Vec<String>,
    failed: usize,
    bad_signatures: usize,
}

async fn serve_hook(state: Arc<Mutex<Hook>>, failures: usize) -> std::net::SocketAddr {
    let requests = Arc::new(AtomicUsize::new(0));
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = Arc::clone(&state);
            let requests = Arc::clone(&requests);
            async move {
                let mut hook = state.lock().unwrap();
                if requests.fetch_add(1, Ordering::SeqCst) < failures {
                    hook.failed += 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let signed = headers.get("x-skynet-signature").is_some_and(|v| {
                    v.as_bytes() == webhook_signature(HOOK_SECRET, &body).as_bytes()
                });
                if !signed {
                    hook.bad_signatures += 1;
                    return StatusCode::UNAUTHORIZED;
                }
                let event: Value = serde_json::from_str(&body).unwrap();
                hook.taken.push(event["id"].as_str().unwrap().to_string());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
