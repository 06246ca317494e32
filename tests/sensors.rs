//! Sensor ingest end to end: `skynet run` against real Mosquitto brokers, each test with
//! its own private broker on a spare port (tests/common/mosquitto.rs), never the machine's.
//! Before publishing, a test waits for skynet's subscription in the broker's log: a
//! reading published earlier would be lost, whatever the test's timing.
//!
//! - Round trip: every payload form (SenML pack, single record, base fields, a unit to
//!   convert, vendor JSON) goes from publish to observation and incident.
//! - Broker restart: a private broker (persistence on, `max_queued_messages 0`) is stopped
//!   and started mid-stream; the session resumes and QoS 1 messages published while skynet
//!   was disconnected still arrive.
//! - Malformed payloads: a generated corpus of over 1,000, each refused with its reason and
//!   dead-lettered, while valid readings keep flowing.
//! - configs/city.toml: gas-07's leak gives exactly one `gas_leak` incident in G-0201 and,
//!   with cam-safety-03 seeing people there, a level I `person_exposed_to_gas` incident, and
//!   normal noise gives none.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mosquitto::{Broker, Mqtt};
use common::*;
use rumqttc::QoS;

/// A sensors-only config (no camera, no model) in `dir`.
fn sensor_config(dir: &Path, listen: SocketAddr, mqtt: &str, sensors: &str) -> PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "sensor-test"
[metrics]
listen = "{listen}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
{mqtt}
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

fn metrics(listen: SocketAddr) -> String {
    http_get(listen, "/metrics").unwrap_or_default()
}

fn wait_connected(listen: SocketAddr) {
    assert!(
        eventually(Duration::from_secs(60), || metric(
            &metrics(listen),
            "skynet_mqtt_connected"
        ) == 1.0),
        "skynet connects to the broker"
    );
}

fn unique(name: &str) -> String {
    format!("skynet-test/{}-{name}", std::process::id())
}

fn now_s() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

const GAS_RULE: &str = r#"
  [[sensors.rules]]
  kind = "threshold"
  above = 50.0
  for_s = 0
  category = "gas_leak"
  weight = 0.6
"#;

#[test]
fn every_payload_form_goes_from_publish_to_observation() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let prefix = unique("forms");
    let broker = Broker::start();
    let mqtt = format!(
        r#"
[mqtt]
url = "{url}"
client_id = "{id}"
clean_session = true
deadletter_topic = "{prefix}-deadletter"
  [[mqtt.topics]]
  pattern = "{prefix}/senml/+"
  [[mqtt.topics]]
  pattern = "{prefix}/vendor"
  format = "json"
  sensor_pointer = "/device"
  value_pointer = "/data/level"
  unit_pointer = "/data/unit"
  time_pointer = "/ts"
"#,
        url = broker.url(),
        id = prefix.replace('/', "-"),
    );
    let mut sensors = String::new();
    for id in ["gas-a", "gas-b", "gas-c", "gas-d"] {
        sensors += &format!(
            "[[sensors]]\nid = \"{id}\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\n{GAS_RULE}"
        );
    }
    sensors += "[[sensors]]\nid = \"river-1\"\nkind = \"water_level\"\ngrid = \"G-0301\"\nowner = \"city_management\"\n  [[sensors.rules]]\n  kind = \"threshold\"\n  above = 3.0\n  category = \"water_level_high\"\n";
    let config = sensor_config(dir.path(), listen, &mqtt, &sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    let id = prefix.replace('/', "-");
    broker.wait_subscribed(&id, &format!("{prefix}/senml/+"), 1);
    broker.wait_subscribed(&id, &format!("{prefix}/vendor"), 1);
    let publisher = Mqtt::connect(&broker.url(), &format!("{id}-pub"));
    let t = now_s();
    // A pack with base fields; a single record without the array; a unit to convert; a
    // name with the sensor's prefix; vendor JSON with quoted numbers and milliseconds.
    publisher.publish(
        &format!("{prefix}/senml/gas-a"),
        format!(
            r#"[{{"bn":"gas-a/","bt":{t},"bu":"ppm","n":"co","v":61}},{{"n":"co","t":0.5,"v":62}}]"#
        ),
    );
    publisher.publish(
        &format!("{prefix}/senml/gas-b"),
        r#"{"n":"co","u":"ppm","v":75}"#,
    );
    publisher.publish(
        &format!("{prefix}/senml/gas-c"),
        r#"[{"n":"co","u":"ppb","v":80000}]"#,
    );
    publisher.publish(
        &format!("{prefix}/senml/gas-d"),
        r#"[{"n":"gas-d/co","v":99.5}]"#,
    );
    publisher.publish(
        &format!("{prefix}/vendor"),
        format!(
            r#"{{"device":"river-1","ts":{},"data":{{"level":"350","unit":"cm"}}}}"#,
            (t * 1000.0) as i64
        ),
    );
    let expected = [
        ("gas-a", 2.0),
        ("gas-b", 1.0),
        ("gas-c", 1.0),
        ("gas-d", 1.0),
        ("river-1", 1.0),
    ];
    let arrived = eventually(Duration::from_secs(20), || {
        let m = metrics(listen);
        expected.iter().all(|(s, n)| {
            metric(
                &m,
                &format!("skynet_sensor_readings_total{{sensor=\"{s}\"}}"),
            ) == *n
        })
    });
    let m = metrics(listen);
    assert!(arrived, "every form arrived: {m}\n{}", log.lock().unwrap());
    assert_eq!(
        metric(&m, "skynet_sensor_value{sensor=\"gas-c\"}"),
        80.0,
        "ppb converted to ppm"
    );
    assert_eq!(
        metric(&m, "skynet_sensor_value{sensor=\"river-1\"}"),
        3.5,
        "cm converted to m"
    );
    // Each is evidence: the leak in G-0201 is one incident (one cell, one category) that
    // lists every gas sensor, and the river has its own. Merged evidence shows in the
    // revision the shutdown flushes.
    let contributed = |s: &str| {
        stored_events(dir.path()).iter().any(|e| {
            e.data
                .contributions
                .iter()
                .any(|c| c.source.id.as_str() == s)
        })
    };
    let opened = eventually(Duration::from_secs(30), || {
        contributed("gas-a") && contributed("river-1")
    });
    // No pause before the stop: the shutdown flushes the revision that merges the rest.
    let (status, text) = terminate(&mut child, &log);
    assert!(opened, "{:?}\n{text}", stored_events(dir.path()));
    for sensor in ["gas-a", "gas-b", "gas-c", "gas-d", "river-1"] {
        assert!(
            contributed(sensor),
            "{sensor} is in an incident: {:?}\n{text}",
            stored_events(dir.path())
        );
    }
    let events = stored_events(dir.path());
    let river = events
        .iter()
        .find(|e| e.data.category == "water_level_high")
        .unwrap();
    let json = serde_json::to_value(&river.data).unwrap();
    assert_eq!(json["sensor"], "river-1");
    assert!(
        json.get("camera").is_none(),
        "a sensor's incident names no camera: {json}"
    );
    assert_eq!(json["grid"], "G-0301");
    assert!(status.success(), "{text}");
}

#[test]
fn the_session_survives_a_broker_restart_and_keeps_what_was_queued() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let mqtt = format!(
        r#"
[mqtt]
url = "{url}"
client_id = "restart-test"
initial_backoff_s = 8.0
max_backoff_s = 8.0
  [[mqtt.topics]]
  pattern = "plant/+/senml"
"#,
        url = broker.url()
    );
    let sensors = "[[sensors]]\nid = \"gas-r\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n";
    let config = sensor_config(dir.path(), listen, &mqtt, sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    broker.wait_subscribed("restart-test", "plant/+/senml", 1);
    // Distinct times: two readings of one sensor at one time are a duplicate.
    let t0 = now_s();
    let reading = |i: usize| {
        format!(
            r#"[{{"n":"co","u":"ppm","v":{}.0,"bt":{}}}]"#,
            i % 40,
            t0 + i as f64 * 0.01
        )
    };
    {
        let publisher = Mqtt::connect(&broker.url(), "restart-pub-1");
        for i in 0..50 {
            publisher.publish("plant/gas-r/senml", reading(i));
        }
        assert!(eventually(Duration::from_secs(30), || metric(
            &metrics(listen),
            "skynet_sensor_readings_total{sensor=\"gas-r\"}"
        ) == 50.0));
    }
    broker.stop();
    broker.restart();
    // skynet waits its backoff before it reconnects: these are published while it is
    // away. Whether they were is read from the broker's log (skynet subscribes again on
    // every connection), not assumed from timing; the check names the test's premise.
    let publisher = Mqtt::connect(&broker.url(), "restart-pub-2");
    for i in 50..250 {
        publisher.publish("plant/gas-r/senml", reading(i));
    }
    // The DISCONNECT goes out after the publishes, on the same connection: once the broker
    // logs it, it has queued all 200 for skynet's session.
    publisher.client.disconnect().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || broker
            .log()
            .contains("Client restart-pub-2 disconnected")),
        "{}",
        broker.log()
    );
    let all = eventually(Duration::from_secs(60), || {
        metric(
            &metrics(listen),
            "skynet_sensor_readings_total{sensor=\"gas-r\"}",
        ) == 250.0
    });
    let m = metrics(listen);
    let (_, text) = terminate(&mut child, &log);
    assert!(
        all,
        "all 250 readings arrived after the restart: {}\n{text}",
        metric(&m, "skynet_sensor_readings_total{sensor=\"gas-r\"}")
    );
    // The premise, read from the broker's log rather than assumed from the backoff: the
    // 200 were queued before skynet came back and subscribed again.
    let broker_log = broker.log();
    let lines: Vec<&str> = broker_log.lines().collect();
    let gone = lines
        .iter()
        .position(|l| l.contains("Client restart-pub-2 disconnected"));
    let back = lines.iter().rposition(|l| {
        l.starts_with(|c: char| c.is_ascii_digit())
            && l.ends_with(" plant/+/senml")
            && l.contains(": restart-test ")
    });
    assert!(
        gone.is_some() && back.is_some() && gone < back,
        "published while skynet was disconnected:\n{broker_log}"
    );
    assert!(metric(&m, "skynet_mqtt_reconnects_total") >= 1.0);
    assert!(text.contains("MQTT connection lost"), "{text}");
}

/// Malformed payloads of every kind, each with the reason skynet must give.
fn malformed_corpus(n: usize, now: f64) -> Vec<(String, &'static str)> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..n)
        .map(|i| match i % 12 {
            0 => {
                // Valid JSON cut short at a random point.
                let full = format!(
                    r#"[{{"bn":"gas-m/","n":"co","v":{},"bt":{now}}}]"#,
                    rng.u32(0..100)
                );
                let cut = rng.usize(1..full.len() - 1);
                (full[..cut].to_string(), "malformed_json")
            }
            1 => {
                let garbage: String = (0..rng.usize(1..64))
                    .map(|_| rng.char('\u{0}'..'\u{7f}'))
                    .collect();
                (format!("x{garbage}"), "malformed_json")
            }
            2 => (
                format!(r#"[{{"n":"co","v":"{}"}}]"#, rng.u32(..)),
                "wrong_type",
            ),
            3 => (format!(r#"[{{"n":{},"v":1}}]"#, rng.u32(..)), "wrong_type"),
            4 => (r#"[{"n":"co"}]"#.to_string(), "missing_value"),
            5 => (
                format!(r#"[{{"n":"co","v":{}}}]"#, -1.0 - rng.f64() * 1e3),
                "out_of_range",
            ),
            6 => (
                format!(r#"[{{"n":"co","v":{}}}]"#, 1e5 + rng.f64() * 1e9),
                "out_of_range",
            ),
            7 => (
                format!(r#"[{{"bv":1e308,"n":"co","v":1e308,"bt":{now}}}]"#),
                "not_finite",
            ),
            8 => (
                format!(
                    r#"[{{"n":"co","v":5,"bt":{}}}]"#,
                    now + 3600.0 + rng.f64() * 1e6
                ),
                "future_time",
            ),
            9 => (
                format!(
                    r#"[{{"n":"co","v":5,"bt":{}}}]"#,
                    now - 200_000.0 - rng.f64() * 1e6
                ),
                "too_old",
            ),
            10 => (
                format!(r#"[{{"n":"co","u":"unit{}","v":5}}]"#, rng.u32(..)),
                "unknown_unit",
            ),
            _ => (
                r#"[{"n":"gas-m/temperature","v":5}]"#.to_string(),
                "unknown_quantity",
            ),
        })
        .collect()
}

#[test]
fn a_malformed_corpus_is_refused_with_reasons_while_valid_readings_flow() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let mqtt = format!(
        r#"
[mqtt]
url = "{url}"
client_id = "corpus-test"
deadletter_topic = "deadletter/corpus"
max_age_s = 86400
  [[mqtt.topics]]
  pattern = "corpus/+"
"#,
        url = broker.url()
    );
    let sensors = format!(
        "[[sensors]]\nid = \"gas-m\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\n{GAS_RULE}"
    );
    let config = sensor_config(dir.path(), listen, &mqtt, &sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    broker.wait_subscribed("corpus-test", "corpus/+", 1);
    let watcher = Mqtt::connect(&broker.url(), "corpus-watcher");
    watcher.subscribe_acked("deadletter/corpus", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(&broker.url(), "corpus-pub");
    let start = now_s() - 100.0;
    let corpus = malformed_corpus(1200, now_s());
    let mut valid = 0;
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (i, (payload, reason)) in corpus.iter().enumerate() {
        publisher.publish("corpus/gas-m", payload.as_bytes());
        *expected.entry(reason).or_default() += 1.0;
        if i % 10 == 0 {
            // A valid reading between them, times rising.
            publisher.publish(
                "corpus/gas-m",
                format!(
                    r#"[{{"n":"co","u":"ppm","v":60,"bt":{}}}]"#,
                    start + valid as f64 * 0.05
                ),
            );
            valid += 1;
        }
    }
    let done = eventually(Duration::from_secs(60), || {
        let m = metrics(listen);
        metric(&m, "skynet_sensor_readings_total{sensor=\"gas-m\"}") == valid as f64
            && expected.iter().all(|(r, n)| {
                metric(
                    &m,
                    &format!("skynet_sensor_rejected_total{{reason=\"{r}\"}}"),
                ) == *n
            })
    });
    let m = metrics(listen);
    let dead = eventually(Duration::from_secs(20), || {
        watcher.received.lock().unwrap().len() == corpus.len()
    });
    let (status, text) = terminate(&mut child, &log);
    assert!(
        done,
        "valid {valid}, refused by reason {expected:?}:\n{}",
        m.lines()
            .filter(|l| l.starts_with("skynet_sensor"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        dead,
        "each refused payload reached the dead-letter topic: {} of {}",
        watcher.received.lock().unwrap().len(),
        corpus.len()
    );
    // Dead letters are the payloads as they came.
    let received = watcher.received.lock().unwrap();
    assert!(
        received
            .iter()
            .all(|(topic, _)| topic == "deadletter/corpus")
    );
    assert_eq!(received[5].1, corpus[5].0.as_bytes());
    assert!(
        stored_events(dir.path())
            .iter()
            .any(|e| e.data.category == "gas_leak"),
        "valid readings still made evidence"
    );
    assert!(status.success(), "{text}");
}

fn gas_leak_incidents(state: &Path) -> Vec<String> {
    let mut ids: Vec<String> = stored_events(state)
        .into_iter()
        .filter(|e| e.data.category == "gas_leak" && e.data.grid.as_str() == "G-0201")
        .map(|e| e.data.id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn city_gas_07_leak_gives_one_gas_leak_incident_and_noise_none() {
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    // The city delivers to NATS JetStream (stream SKYNET_INCIDENTS): a private server, so the
    // session's keeps no stream of this test.
    let nats = PrivateNats::start(&state.path().join("nats"));
    let listen = free_port();
    let config = repo().join("configs/city.toml");
    let (mut child, log) = spawn_logged_with_env(
        &config,
        &[],
        &[
            ("SKYNET_MQTT_URL", broker.url()),
            ("SKYNET_NATS_URL", nats.url()),
            ("SKYNET_STATE_DIR", state.path().display().to_string()),
            ("SKYNET_METRICS_LISTEN", listen.to_string()),
        ],
    );
    wait_connected(listen);
    broker.wait_subscribed("skynet-city-node", "skynet/sensors/+", 1);
    common::simulate_sensors(&broker.url(), "normal", 20);
    let mut m = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            m = metrics(listen);
            metric(&m, "skynet_sensor_readings_total{sensor=\"gas-07\"}") >= 30.0
        }),
        "{m}\n{}",
        log.lock().unwrap()
    );
    assert!(
        gas_leak_incidents(state.path()).is_empty(),
        "normal noise is no leak"
    );
    common::simulate_sensors(&broker.url(), "leak", 25);
    let one = eventually(Duration::from_secs(30), || {
        gas_leak_incidents(state.path()).len() == 1
    });
    // cam-safety-03 sees people in the same cell: the fusion rule's level I incident.
    let fused = |events: &[skynet_emit::CloudEvent]| {
        events
            .iter()
            .find(|e| e.data.category == "person_exposed_to_gas")
            .cloned()
    };
    let exposed = eventually(Duration::from_secs(30), || {
        fused(&stored_events(state.path())).is_some()
    });
    let (_, text) = terminate(&mut child, &log);
    let leaks = gas_leak_incidents(state.path());
    assert!(one && leaks.len() == 1, "{leaks:?}\n{text}");
    let events = stored_events(state.path());
    assert!(
        exposed,
        "a person_exposed_to_gas incident: {events:?}\n{text}"
    );
    let exposed = fused(&events).unwrap().data;
    assert_eq!(exposed.level, skynet_core::RiskLevel::I);
    assert_eq!(exposed.grid.as_str(), "G-0201");
    assert_eq!(exposed.department, "emergency-management");
    assert_eq!(
        exposed.deadlines.dispatch_by,
        Some(exposed.first_seen + chrono::Duration::seconds(300))
    );
    let parts: Vec<&str> = exposed
        .contributions
        .iter()
        .map(|c| c.source.id.as_str())
        .collect();
    assert!(
        parts.contains(&"gas-07") && parts.contains(&"cam-safety-03"),
        "{parts:?}"
    );
    let leak = events
        .iter()
        .find(|e| e.data.category == "gas_leak")
        .unwrap();
    assert_eq!(leak.data.sensor.as_ref().unwrap().as_str(), "gas-07");
    assert_eq!(leak.data.owner.as_str(), "safety_production");
    // The evidence an inspector reads first: the value that made it.
    let reading = leak
        .data
        .reading
        .as_ref()
        .expect("a sensor incident carries its reading");
    assert_eq!(
        (reading.quantity.as_str(), reading.unit.as_str()),
        ("co", "ppm")
    );
    assert!(reading.value > 50.0, "{reading:?}");
    // The JSON Lines file has it too, and so does JetStream, on the documented subject.
    let jsonl = std::fs::read_to_string(state.path().join("incidents.jsonl")).unwrap();
    assert!(jsonl.contains("gas_leak"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queued = rt.block_on(read_stream(&nats.url(), "SKYNET_INCIDENTS"));
    assert!(
        queued.iter().any(
            |(id, subject, ..)| *id == leak.id && subject == "skynet.incidents.G-0201.gas_leak"
        ),
        "{queued:?}"
    );

    // `[risk] record` kept every observation; replayed, they make the same two incidents.
    let recorded = state.path().join("observations.jsonl");
    let out = Command::new(common::skynet_bin())
        .args(["replay", "--config"])
        .arg(&config)
        .arg(&recorded)
        .env("SKYNET_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = String::from_utf8_lossy(&out.stdout);
    let categories: std::collections::BTreeSet<String> = replayed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "skynet.incident.v1")
        .filter_map(|e| e["data"]["category"].as_str().map(str::to_string))
        .collect();
    assert!(
        categories.contains("gas_leak") && categories.contains("person_exposed_to_gas"),
        "{categories:?}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=skynet test CA",
        ],
    );
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=skynet-{name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A child process killed (by its pid) and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mqtts_with_a_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let (tls_port, plain_port) = (free_port().port(), free_port().port());
    let c = certs.path().display();
    // Mosquitto started as root writes its log as its own user: a folder it may write in.
    let logs = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(
        certs.path().join("mosquitto.conf"),
        format!(
            "allow_anonymous true\n\
             listener {plain_port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\nrequire_certificate true\n\
             log_dest file {}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type subscribe\n",
            logs.path().display()
        ),
    )
    .unwrap();
    // Killed by its pid when the test ends, even by a failed assertion.
    let _broker = KillOnDrop(
        Command::new("/usr/sbin/mosquitto")
            .args(["-c", certs.path().join("mosquitto.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let plain = format!("mqtt://127.0.0.1:{plain_port}");
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    }));
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let mqtt = format!(
        r#"
[mqtt]
url = "mqtts://127.0.0.1:{tls_port}"
client_id = "tls-test"
ca_file = "{c}/ca.pem"
cert_file = "{c}/client.pem"
key_file = "{c}/client.key"
  [[mqtt.topics]]
  pattern = "tls/+"
"#
    );
    let sensors = "[[sensors]]\nid = \"gas-t\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\n";
    let config = sensor_config(dir.path(), listen, &mqtt, sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    let connected = eventually(Duration::from_secs(20), || {
        metric(&metrics(listen), "skynet_mqtt_connected") == 1.0
    });
    assert!(
        connected,
        "skynet connects over TLS with its client certificate:\n{}",
        log.lock().unwrap()
    );
    // Mosquitto logs the subscription once it is in place (`log_type subscribe`).
    let broker_log =
        || std::fs::read_to_string(logs.path().join("mosquitto.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(30), || broker_log()
            .lines()
            .any(|l| l.ends_with(": tls-test 1 tls/+"))),
        "skynet subscribed over TLS: {}",
        broker_log()
    );
    let publisher = Mqtt::connect(&plain, "tls-pub");
    publisher.publish("tls/gas-t", r#"[{"n":"co","u":"ppm","v":7}]"#);
    let arrived = eventually(Duration::from_secs(10), || {
        metric(
            &metrics(listen),
            "skynet_sensor_readings_total{sensor=\"gas-t\"}",
        ) == 1.0
    });
    let (_, text) = terminate(&mut child, &log);
    assert!(arrived, "{text}");
}

#[test]
fn a_silent_sensor_opens_sensor_offline_and_closes_it_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let prefix = unique("offline");
    let broker = Broker::start();
    let id = prefix.replace('/', "-");
    let mqtt = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"{id}\"\nclean_session = true\n  [[mqtt.topics]]\n  pattern = \"{prefix}/+\"\n",
        broker.url()
    );
    let sensors = "[[sensors]]\nid = \"water-x\"\nkind = \"water_level\"\ngrid = \"G-0301\"\nowner = \"city_management\"\nexpected_interval_s = 2\n";
    let config = sensor_config(dir.path(), listen, &mqtt, sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    broker.wait_subscribed(&id, &format!("{prefix}/+"), 1);
    let publisher = Mqtt::connect(&broker.url(), &format!("{id}-pub"));
    let topic = format!("{prefix}/water-x");
    publisher.publish(&topic, r#"[{"n":"level","u":"m","v":1.2}]"#);
    let offline = |status: &str| {
        stored_events(dir.path()).iter().any(|e| {
            e.data.category == "sensor_offline"
                && e.data
                    .sensor
                    .as_ref()
                    .is_some_and(|s| s.as_str() == "water-x")
                && serde_json::to_value(e.data.status).unwrap() == status
        })
    };
    let opened = eventually(Duration::from_secs(30), || offline("opened"));
    publisher.publish(&topic, r#"[{"n":"level","u":"m","v":1.3}]"#);
    let closed = eventually(Duration::from_secs(30), || offline("closed"));
    let (_, text) = terminate(&mut child, &log);
    assert!(
        opened && closed,
        "opened {opened}, closed {closed}: {:?}\n{text}",
        stored_events(dir.path())
    );
    let events = stored_events(dir.path());
    let fault = events
        .iter()
        .find(|e| e.data.category == "sensor_offline")
        .unwrap();
    assert_eq!(fault.data.rule.kind, "device_fault");
    assert_eq!(fault.data.level.as_str(), "IV");
}

#[test]
fn a_broker_down_at_start_is_waited_for_and_shown_in_readyz() {
    let mut broker = Broker::start();
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let mqtt = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"late-broker\"\nmax_backoff_s = 1.0\n  [[mqtt.topics]]\n  pattern = \"late/+\"\n",
        broker.url()
    );
    let sensors = "[[sensors]]\nid = \"gas-l\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n";
    let config = sensor_config(dir.path(), listen, &mqtt, sensors);
    let (mut child, log) = spawn_logged(&config, &[]);
    // Up and serving, not ready: the mqtt component says why.
    let waiting = eventually(Duration::from_secs(60), || {
        http_get(listen, "/readyz").is_some_and(|r| {
            r.starts_with("HTTP/1.1 503") && r.contains("\"mqtt\"") && r.contains("retrying")
        })
    });
    assert!(child.try_wait().unwrap().is_none(), "skynet keeps running");
    broker.restart();
    wait_connected(listen);
    broker.wait_subscribed("late-broker", "late/+", 1);
    let publisher = Mqtt::connect(&broker.url(), "late-pub");
    publisher.publish("late/gas-l", r#"[{"n":"co","u":"ppm","v":3}]"#);
    let arrived = eventually(Duration::from_secs(10), || {
        metric(
            &metrics(listen),
            "skynet_sensor_readings_total{sensor=\"gas-l\"}",
        ) == 1.0
    });
    let (status, text) = terminate(&mut child, &log);
    assert!(waiting, "/readyz showed the broker retrying:\n{text}");
    assert!(arrived, "{text}");
    assert!(status.success(), "{text}");
}

#[test]
fn kill_9_then_restart_goes_on_with_the_same_sensor_incident() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let mqtt = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"kill-test\"\n  [[mqtt.topics]]\n  pattern = \"kill/+\"\n",
        broker.url()
    );
    let sensors = format!(
        "[[sensors]]\nid = \"gas-k\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n{GAS_RULE}"
    );
    let config = sensor_config(dir.path(), listen, &mqtt, &sensors);
    let publisher = Mqtt::connect(&broker.url(), "kill-pub");
    let t0 = now_s();
    let leak = |s: f64| format!(r#"[{{"n":"co","u":"ppm","v":80,"bt":{}}}]"#, t0 + s);
    let leaks = |state: &Path| -> Vec<(String, u32)> {
        stored_events(state)
            .into_iter()
            .filter(|e| e.data.category == "gas_leak")
            .map(|e| (e.data.id, e.data.revision))
            .collect()
    };
    let (mut child, _log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    broker.wait_subscribed("kill-test", "kill/+", 1);
    publisher.publish("kill/gas-k", leak(-30.0));
    assert!(eventually(Duration::from_secs(30), || !leaks(dir.path()).is_empty()));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Published while skynet is dead: the persistent session keeps it.
    publisher.publish("kill/gas-k", leak(-10.0));
    let (mut child, log) = spawn_logged(&config, &[]);
    wait_connected(listen);
    eventually(Duration::from_secs(30), || leaks(dir.path()).len() >= 2);
    let (_, text) = terminate(&mut child, &log);
    let seen = leaks(dir.path());
    let ids: std::collections::BTreeSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        1,
        "one incident across the kill: {seen:?}\n{text}"
    );
    assert!(
        seen.iter().any(|(_, r)| *r >= 2),
        "it went on with a new revision: {seen:?}\n{text}"
    );
}
