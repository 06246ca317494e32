//! Sensor readings are acknowledged to the broker only once what they led to is committed,
//! and the sensor rules' memory is part of what is committed. Each test runs `skynet run`
//! against a private Mosquitto (`max_queued_messages 0`, persistence, a fixed client id and
//! a persistent session: the `[mqtt]` defaults) and kills it with SIGKILL:
//!
//! - readings received but not committed (the outbox held locked by the test) are not
//!   acknowledged: after a restart the broker delivers them again, and readings counted
//!   plus refused equal what was published;
//! - a `for_s` streak that began before the kill fires after the restart at the time it
//!   would have without the restart, not `for_s` later.
//!
//! Every wait is for a condition: a metric, the broker's subscription log, an outbox row.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::mosquitto::{Broker, Mqtt};
use crate::common::*;

/// A sensors-only config (no camera) for one CO sensor on `prefix/+`, with `rule`.
fn config(
    dir: &Path,
    listen: SocketAddr,
    broker: &Broker,
    client_id: &str,
    prefix: &str,
    rule: &str,
) -> PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "sensor-acks"
[metrics]
listen = "{listen}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
[mqtt]
url = "{url}"
client_id = "{client_id}"
deadletter_topic = "{prefix}-deadletter"
  [[mqtt.topics]]
  pattern = "{prefix}/+"
[[sensors]]
id = "gas-1"
kind = "gas_co"
grid = "G-0201"
owner = "safety_production"
expected_interval_s = 0
{rule}
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

fn scrape(listen: SocketAddr) -> String {
    http_get(listen, "/metrics").unwrap_or_default()
}

/// The sum of a metric over all its label sets (0 when absent).
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_metric(listen: SocketAddr, name: &str, at_least: f64, what: &str) {
    assert!(
        eventually(Duration::from_secs(60), || total(&scrape(listen), name)
            >= at_least),
        "{what}: {name} reached {at_least}; metrics:\n{}",
        scrape(listen)
            .lines()
            .filter(|l| l.starts_with("skynet_sensor")
                || l.starts_with("skynet_mqtt")
                || l.starts_with("skynet_outbox"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Starts `skynet run` and waits until its sensor feed is subscribed (for the `n`th time:
/// the broker logs each subscription).
fn start(
    config: &Path,
    listen: SocketAddr,
    broker: &Broker,
    client_id: &str,
    pattern: &str,
    n: usize,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let (child, log) = spawn_logged(config, &[]);
    wait_metric(listen, "skynet_mqtt_connected", 1.0, "skynet connects");
    broker.wait_subscribed(client_id, pattern, n);
    (child, log)
}

fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn now_s() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

#[test]
fn readings_taken_but_not_committed_come_again_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let listen = free_port();
    let prefix = format!("acks-{}", std::process::id());
    let client_id = format!("{prefix}-skynet");
    let pattern = format!("{prefix}/+");
    // Readings stay below the alarm: no evidence, so only a commit of their own acks them.
    let rule =
        "  [[sensors.rules]]\n  kind = \"threshold\"\n  above = 50.0\n  category = \"gas_leak\"\n";
    let config = config(dir.path(), listen, &broker, &client_id, &prefix, rule);
    let (mut child, _log) = start(&config, listen, &broker, &client_id, &pattern, 1);

    // The outbox held by another writer: every commit of this run waits (and is retried).
    let lock = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();

    const VALID: usize = 400;
    const MALFORMED: usize = 40;
    let publisher = Mqtt::connect(&broker.url(), &format!("{prefix}-pub"));
    let t0 = now_s() - 600.0;
    for i in 0..VALID {
        publisher.publish(
            &format!("{prefix}/gas-1"),
            format!(
                r#"[{{"bn":"gas-1/","bt":{},"n":"co","u":"ppm","v":12.5}}]"#,
                t0 + i as f64 * 0.5
            ),
        );
        if i % 10 == 0 {
            publisher.publish(&format!("{prefix}/gas-1"), format!("not senml {i}"));
        }
    }
    let published = (VALID + MALFORMED) as f64;
    // Everything arrived and went through validation; the commit that would hold it waits.
    wait_metric(
        listen,
        "skynet_mqtt_messages_total",
        published,
        "run 1 receives every message",
    );
    assert!(
        eventually(Duration::from_secs(60), || {
            let m = scrape(listen);
            total(&m, "skynet_sensor_readings_total") + total(&m, "skynet_sensor_rejected_total")
                >= published
        }),
        "run 1 validates every message"
    );
    wait_metric(
        listen,
        "skynet_outbox_retries_total",
        1.0,
        "run 1's commit waits on the lock",
    );
    let m = scrape(listen);
    assert_eq!(
        total(&m, "skynet_sensor_acked_total"),
        0.0,
        "nothing acknowledged before it is committed"
    );
    kill_9(&mut child);
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    // The broker still holds every message: the next start gets them all again.
    let (mut child, log) = start(&config, listen, &broker, &client_id, &pattern, 2);
    wait_metric(
        listen,
        "skynet_sensor_acked_total",
        published,
        "run 2 acknowledges every message",
    );
    let m = scrape(listen);
    let counted = total(&m, "skynet_sensor_readings_total");
    let refused = total(&m, "skynet_sensor_rejected_total");
    assert_eq!(
        (counted, refused),
        (VALID as f64, MALFORMED as f64),
        "readings counted plus refused equal what was published"
    );
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_for_s_streak_goes_on_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let listen = free_port();
    let prefix = format!("streak-{}", std::process::id());
    let client_id = format!("{prefix}-skynet");
    let pattern = format!("{prefix}/+");
    let rule = "  [[sensors.rules]]\n  kind = \"threshold\"\n  above = 50.0\n  for_s = 10\n  weight = 1.0\n  category = \"gas_leak\"\n";
    let config = config(dir.path(), listen, &broker, &client_id, &prefix, rule);
    let (mut child, _log) = start(&config, listen, &broker, &client_id, &pattern, 1);
    let publisher = Mqtt::connect(&broker.url(), &format!("{prefix}-pub"));
    let reading =
        |t: f64, v: f64| format!(r#"[{{"bn":"gas-1/","bt":{t:.3},"n":"co","u":"ppm","v":{v}}}]"#);
    // A leak that began 8 s before the kill: above the limit at t0, t0+2, ..., t0+8.
    let t0 = (now_s() - 9.0).floor();
    for k in 0..5 {
        publisher.publish(
            &format!("{prefix}/gas-1"),
            reading(t0 + 2.0 * k as f64, 60.0),
        );
    }
    // Acknowledged: committed with the rule's memory.
    wait_metric(
        listen,
        "skynet_sensor_acked_total",
        5.0,
        "run 1 commits the streak",
    );
    assert!(
        !stored_events(dir.path())
            .iter()
            .any(|e| e.data.category == "gas_leak"),
        "8 s of a 10 s streak is no alarm yet"
    );
    kill_9(&mut child);

    let (mut child, log) = start(&config, listen, &broker, &client_id, &pattern, 2);
    // 10 s after the streak began: the alarm, not 10 s after the restart.
    publisher.publish(&format!("{prefix}/gas-1"), reading(t0 + 10.0, 61.0));
    assert!(
        eventually(Duration::from_secs(60), || stored_events(dir.path())
            .iter()
            .any(|e| e.data.category == "gas_leak")),
        "the streak fires after the restart: {}",
        log.lock().unwrap()
    );
    let events = stored_events(dir.path());
    let leak = events
        .iter()
        .find(|e| e.data.category == "gas_leak")
        .unwrap();
    let expected = chrono::DateTime::from_timestamp(t0 as i64 + 10, 0).unwrap();
    assert_eq!(
        leak.data.first_seen, expected,
        "the alarm comes at the time it would have without the restart"
    );
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{text}");
}
