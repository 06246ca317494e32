//! The case-status loop cannot be forged or replayed. `skynet run` (sensors only: a gas
//! reading opens the incident) takes status events from a private nats-server with
//! `[cases] sources = ["case-system"]` and a secret. Each of a forged source, an unsigned
//! event, a wrong department and a replay (the same event id delivered again after a restart)
//! is refused: counted in `skynet_case_status_refused_total{reason}`, kept in the dead letters
//! (sink `cases`) with its reason, and the incident is left as it was. Correctly signed
//! events are applied and audited with the case system as actor.
//!
//! Every wait is for a condition: a metric, an outbox row.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::json;
use skynet_core::IncidentState;

use crate::common::mosquitto::{Broker, Mqtt};
use crate::common::*;

const SECRET: &str = "case-secret-2121";

fn config(dir: &Path, listen: SocketAddr, broker: &Broker, nats: &str, prefix: &str) -> PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "case-status"
[metrics]
listen = "{listen}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[risk]
default_department = "command_center"
  [risk.categories.gas_leak]
  department = "fire"
[outbox]
path = "{out}/outbox.sqlite"
[mqtt]
url = "{url}"
client_id = "{prefix}-skynet"
  [[mqtt.topics]]
  pattern = "{prefix}/+"
[[sensors]]
id = "gas-1"
kind = "gas_co"
grid = "G-0201"
owner = "safety_production"
expected_interval_s = 0
  [[sensors.rules]]
  kind = "threshold"
  above = 50.0
  category = "gas_leak"
[cases]
url = "{nats}"
sources = ["case-system"]
secret = "{SECRET}"
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
        url = broker.url(),
    );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The sum of a metric over the label sets that contain `labels` (0 when absent).
fn metric_sum(listen: SocketAddr, name: &str, labels: &str) -> f64 {
    http_get(listen, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn outbox(dir: &Path) -> skynet_emit::Outbox {
    skynet_emit::Outbox::open(&dir.join("outbox.sqlite")).unwrap()
}

fn incident_state(dir: &Path, id: &str) -> Option<IncidentState> {
    outbox(dir)
        .incidents()
        .ok()?
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.state)
}

/// The dead letters of sink `cases`, as (seq, id, reason).
fn dead_letters(dir: &Path) -> Vec<(i64, String, String)> {
    outbox(dir)
        .dead_letters(Some("cases"))
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.seq, l.id, l.reason))
        .collect()
}

fn event(id: &str, source: &str, incident: &str, status: &str, department: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": source,
        "type": "skynet.case_status.v1", "datacontenttype": "application/json",
        "data": {"incident": incident, "status": status, "department": department,
                 "assignee": "crew 7", "note": format!("{status} by the test"),
                 "at": chrono::Utc::now()}
    }))
    .unwrap()
}

/// Publishes `body` on `skynet.cases.<incident>`, signed with `secret` when given, and
/// waits for JetStream's ack (the stream is skynet's: it may not exist yet at first).
fn publish(nats: &str, incident: &str, body: &[u8], secret: Option<&str>) {
    let rt = tokio_runtime();
    rt.block_on(async {
        let client = async_nats::connect(nats).await.unwrap();
        let js = jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(secret) = secret {
            let signature = webhook_signature(secret, std::str::from_utf8(body).unwrap());
            headers.insert("Skynet-Signature", signature.as_str());
        }
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = js
                .publish_with_headers(
                    format!("skynet.cases.{incident}"),
                    headers.clone(),
                    body.to_vec().into(),
                )
                .await;
            if let Ok(ack) = sent
                && ack.await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < until, "could not publish a case status");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Waits until `reason` was counted `n` times and has `n` dead letters; the incident is
/// still `state`.
fn assert_refused(
    dir: &Path,
    listen: SocketAddr,
    reason: &str,
    n: usize,
    incident: &str,
    state: IncidentState,
    log: &std::sync::Mutex<String>,
) {
    let label = format!("reason=\"{reason}\"");
    assert!(
        eventually(Duration::from_secs(60), || {
            metric_sum(listen, "skynet_case_status_refused_total", &label) >= n as f64
                && dead_letters(dir)
                    .iter()
                    .filter(|(_, _, r)| r.starts_with(&format!("{reason}:")))
                    .count()
                    >= n
        }),
        "{reason}: not refused, counted and dead-lettered {n} time(s); dead letters {:?}; log:\n{}",
        dead_letters(dir),
        log.lock().unwrap()
    );
    assert_eq!(
        incident_state(dir, incident),
        Some(state),
        "{reason}: the incident is left as it was"
    );
}

fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn forged_unsigned_wrong_department_and_replayed_statuses_are_refused_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let listen = free_port();
    let prefix = format!("cases-{}", std::process::id());
    let config = config(dir.path(), listen, &broker, &nats.url(), &prefix);
    let (mut child, log) = spawn_logged(&config, &[]);
    assert!(
        eventually(Duration::from_secs(60), || {
            metric_sum(listen, "skynet_mqtt_connected", "") >= 1.0
        }),
        "skynet connects to the broker: {}",
        log.lock().unwrap()
    );
    broker.wait_subscribed(&format!("{prefix}-skynet"), &format!("{prefix}/+"), 1);

    // A gas leak: the incident that the forged events try to close.
    let publisher = Mqtt::connect(&broker.url(), &format!("{prefix}-pub"));
    let now = chrono::Utc::now().timestamp() as f64;
    publisher.publish(
        &format!("{prefix}/gas-1"),
        format!(r#"[{{"bn":"gas-1/","bt":{now},"n":"co","u":"ppm","v":80}}]"#),
    );
    assert!(
        eventually(Duration::from_secs(60), || outbox(dir.path())
            .incidents()
            .is_ok_and(|i| i.iter().any(|i| i.category == "gas_leak"))),
        "no gas_leak incident: {}",
        log.lock().unwrap()
    );
    let incident = outbox(dir.path())
        .incidents()
        .unwrap()
        .into_iter()
        .find(|i| i.category == "gas_leak")
        .unwrap()
        .id;
    let open = IncidentState::Open;

    // The issue's forgery: anyone, rejected, a department that does not exist. Signed with
    // the right key (an insider), but from a source that is not the case system.
    let forged = event("forged-1", "anyone", &incident, "rejected", "fire");
    publish(&nats.url(), &incident, &forged, Some(SECRET));
    assert_refused(dir.path(), listen, "source", 1, &incident, open, &log);

    // The case system's source, but unsigned, and then signed with another key.
    let unsigned = event("unsigned-1", "case-system", &incident, "rejected", "fire");
    publish(&nats.url(), &incident, &unsigned, None);
    assert_refused(dir.path(), listen, "signature", 1, &incident, open, &log);
    let wrong_key = event("unsigned-2", "case-system", &incident, "rejected", "fire");
    publish(&nats.url(), &incident, &wrong_key, Some("not-the-secret"));
    assert_refused(dir.path(), listen, "signature", 2, &incident, open, &log);

    // Signed, from the case system, to a department nobody has.
    let nowhere = event("nowhere-1", "case-system", &incident, "rejected", "nowhere");
    publish(&nats.url(), &incident, &nowhere, Some(SECRET));
    assert_refused(dir.path(), listen, "department", 1, &incident, open, &log);

    // Correctly signed: applied.
    let acknowledged = event("ack-1", "case-system", &incident, "acknowledged", "fire");
    publish(&nats.url(), &incident, &acknowledged, Some(SECRET));
    assert!(
        eventually(Duration::from_secs(60), || incident_state(
            dir.path(),
            &incident
        ) == Some(
            IncidentState::Acknowledged
        )),
        "the signed event is applied: {}",
        log.lock().unwrap()
    );
    let dispatched = event("dispatch-1", "case-system", &incident, "dispatched", "fire");
    publish(&nats.url(), &incident, &dispatched, Some(SECRET));
    assert!(
        eventually(Duration::from_secs(60), || incident_state(
            dir.path(),
            &incident
        ) == Some(
            IncidentState::Dispatched
        )),
        "the second signed event is applied: {}",
        log.lock().unwrap()
    );

    // A restart (the process killed), then the first applied event delivered again (a lost
    // ack, a failover, a new durable): the same id is not applied twice.
    kill_9(&mut child);
    let (mut child, log) = spawn_logged(&config, &[]);
    publish(&nats.url(), &incident, &acknowledged, Some(SECRET));
    assert_refused(
        dir.path(),
        listen,
        "duplicate",
        1,
        &incident,
        IncidentState::Dispatched,
        &log,
    );

    // The refused events are in the dead letters with their ids and the stream's sequence.
    let letters = dead_letters(dir.path());
    let ids: Vec<&str> = letters.iter().map(|(_, id, _)| id.as_str()).collect();
    for id in ["forged-1", "unsigned-1", "unsigned-2", "nowhere-1", "ack-1"] {
        assert!(ids.contains(&id), "{id} in the dead letters: {letters:?}");
    }
    let seqs: std::collections::BTreeSet<i64> = letters.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs.len(), letters.len(), "one stream sequence each");
    // Refusals are counted and never applied: two applied, in order.
    let events = stored_events(dir.path());
    let feedback: Vec<IncidentState> = events
        .iter()
        .filter(|e| e.data.id == incident && e.data.change == skynet_core::IncidentChange::Feedback)
        .map(|e| e.data.state)
        .collect();
    assert_eq!(
        feedback,
        [IncidentState::Acknowledged, IncidentState::Dispatched]
    );

    // Applied events are in the console's audit log, the case system as actor.
    let db = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    let audited: Vec<(String, String, String)> = db
        .prepare("SELECT actor, action, after FROM console_audit WHERE target = ?1 ORDER BY id")
        .unwrap()
        .query_map([&incident], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(
        audited
            .iter()
            .all(|(actor, action, _)| actor == "case-system" && action == "incident.status")
    );
    assert!(audited[0].2.contains("ack-1") && audited[1].2.contains("dispatch-1"));

    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{text}");
}

/// deploy/nats/nats-server.conf: skynet publishes incidents and may not publish a status
/// event; only the case-system user publishes on `skynet.cases.>`; no user, no access.
#[test]
fn the_deploy_nats_config_lets_only_the_case_system_publish_status_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let bin = if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    // The deploy config as it is, with the store in the test's directory (`-sd` may not
    // repeat a store_dir the file sets).
    let conf = std::fs::read_to_string(repo().join("deploy/nats/nats-server.conf"))
        .unwrap()
        .replace(
            "store_dir: \"/data\"",
            &format!("store_dir: \"{}\"", dir.path().join("js").display()),
        );
    let conf_path = dir.path().join("nats-server.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut server = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &free_port().port().to_string()])
        .env("SKYNET_NATS_PASSWORD", "skynet-pw")
        .env("CASE_SYSTEM_NATS_PASSWORD", "cases-pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nats-server starts with the deploy config"
    );
    let address = format!("nats://127.0.0.1:{port}");
    let as_user = |user: &str, pw: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), pw.into())
            .connect(address.clone())
    };
    let rt = tokio_runtime();
    rt.block_on(async {
        // No user: refused at connect.
        assert!(
            async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .is_err()
        );
        let skynet = jetstream::new(as_user("skynet", "skynet-pw").await.unwrap());
        let cases = jetstream::new(as_user("case-system", "cases-pw").await.unwrap());
        // skynet creates both streams, as it does at start.
        for (name, subjects) in [
            ("SKYNET_INCIDENTS", "skynet.incidents.>"),
            ("SKYNET_CASES", "skynet.cases.>"),
        ] {
            skynet
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.into(),
                    subjects: vec![subjects.into()],
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("skynet creates {name}: {e}"));
        }
        let published = |js: &jetstream::Context, subject: &'static str| {
            let js = js.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(3), js.publish(subject, "{}".into()))
                    .await
                {
                    Ok(Ok(ack)) => tokio::time::timeout(Duration::from_secs(3), ack)
                        .await
                        .is_ok_and(|a| a.is_ok()),
                    _ => false,
                }
            }
        };
        assert!(published(&skynet, "skynet.incidents.G-0201.gas_leak").await);
        assert!(
            !published(&skynet, "skynet.cases.inc-1").await,
            "skynet may not forge a status event"
        );
        assert!(published(&cases, "skynet.cases.inc-1").await);
        assert!(
            !published(&cases, "skynet.incidents.G-0201.gas_leak").await,
            "the case system may not publish incidents"
        );
        let mut stream = skynet.get_stream("SKYNET_CASES").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
        let mut stream = skynet.get_stream("SKYNET_INCIDENTS").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
    });
    let _ = server.kill();
    let _ = server.wait();
}
