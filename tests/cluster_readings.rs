//! Sensor readings across the bus (issue 23), at the edge: `pipeline::run` in the edge role
//! with a private Mosquitto and a private NATS, no cameras.
//!
//! - A valid QoS 1 reading is published as it came on `skynet.readings.<grid>.<sensor>` in
//!   SKYNET_OBSERVATIONS, with its MQTT topic, receipt time and a Nats-Msg-Id.
//! - A malformed payload is refused at the edge (dead-lettered, as on a single node) and
//!   never reaches the bus; the readings after it still do.
//! - A reading is acknowledged to the broker only once JetStream has it: with the NATS
//!   server down, the edge retries and acknowledges nothing; once it is back, the reading
//!   is stored once and acknowledged.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::mosquitto::{Broker, Mqtt};
use common::*;
use rumqttc::QoS;
use skynet::{RunOptions, Services, pipeline};

const PUBLISHED: &str = "skynet_bus_published_total{kind=\"reading\"}";
const RETRIES: &str = "skynet_bus_publish_retries_total{kind=\"reading\"}";
const ACKED: &str = "skynet_sensor_acked_total";

/// How many messages the observation stream holds (0 while it does not exist).
async fn stored(js: &jetstream::Context) -> u64 {
    match js.get_stream("SKYNET_OBSERVATIONS").await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|i| i.state.messages)
            .unwrap_or_default(),
        Err(_) => 0,
    }
}

/// One test at a time: the metrics recorder is the process's.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An edge's config: node `node`, MQTT client `client_id`, sensor gas-a in G-0201 on
/// `<prefix>/+`, no cameras.
fn edge_config(
    dir: &Path,
    node: &str,
    client_id: &str,
    nats: &str,
    mqtt: &str,
    prefix: &str,
) -> skynet::PipelineConfig {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "{node}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
[cluster]
url = "{nats}"
name = "testcity"
[mqtt]
url = "{mqtt}"
client_id = "{client_id}"
clean_session = true
deadletter_topic = "{prefix}-deadletter"
  [[mqtt.topics]]
  pattern = "{prefix}/+"
[[sensors]]
id = "gas-a"
kind = "gas_co"
grid = "G-0201"
owner = "safety_production"
  [[sensors.rules]]
  kind = "threshold"
  above = 50.0
  category = "gas_leak"
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
    );
    pipeline_config(dir, &text)
}

/// `pipeline::run` in the edge role on a thread, until `shutdown`.
fn run_edge(
    config: skynet::PipelineConfig,
    services: Arc<Services>,
    shutdown: &skynet_core::Shutdown,
) -> std::thread::JoinHandle<Result<skynet::RunSummary, skynet::PipelineError>> {
    let shutdown = shutdown.clone();
    std::thread::spawn(move || {
        pipeline::run(
            &config,
            RunOptions {
                shutdown,
                services: Some(services),
                wait_for_shutdown: true,
                role: skynet_cluster::Role::Edge,
                ..RunOptions::default()
            },
        )
    })
}

#[test]
fn an_edge_publishes_valid_readings_on_the_bus_refuses_malformed_ones_and_acks_only_what_jetstream_has()
 {
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::start(nats_dir.path());
    let _serial = serial();
    let services = Arc::new(Services::start(None).unwrap());
    // The recorder is the process's: counted from what the other test left.
    let base = |name: &str| metric(&services.metrics.render(), name);
    let before = [PUBLISHED, RETRIES, ACKED].map(base);
    let metrics = {
        let services = Arc::clone(&services);
        move |name: &str| {
            let i = [PUBLISHED, RETRIES, ACKED]
                .iter()
                .position(|n| *n == name)
                .unwrap();
            metric(&services.metrics.render(), name) - before[i]
        }
    };
    let broker = Broker::start();
    let prefix = format!("skynet-test/{}-readings", std::process::id());
    let client_id = format!("edge-readings-{}", std::process::id());
    let config = edge_config(
        dir.path(),
        "edge-1",
        &client_id,
        &nats.url(),
        &broker.url(),
        &prefix,
    );
    let shutdown = skynet_core::Shutdown::new();
    let run = run_edge(config, services, &shutdown);
    // The edge is a member of its cluster's shared subscription: each message goes to one
    // edge.
    broker.wait_subscribed(&client_id, &format!("$share/testcity-edges/{prefix}/+"), 1);
    let watcher = Mqtt::connect(&broker.url(), &format!("{client_id}-watch"));
    watcher.subscribe_acked(&format!("{prefix}-deadletter"), QoS::AtLeastOnce);

    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let first = format!(r#"[{{"n":"gas-a/co","u":"ppm","v":12,"t":{now}}}]"#);
    let second = format!(r#"[{{"n":"gas-a/co","u":"ppm","v":13,"t":{}}}]"#, now + 1.0);
    let malformed = "{not json";
    watcher.publish(&format!("{prefix}/gas-a"), first.clone());
    watcher.publish(&format!("{prefix}/gas-a"), malformed);
    watcher.publish(&format!("{prefix}/gas-a"), second.clone());

    let rt = tokio_runtime();
    let js = rt.block_on(async { jetstream::new(async_nats::connect(nats.url()).await.unwrap()) });
    assert!(
        eventually(Duration::from_secs(30), || rt.block_on(stored(&js)) >= 2),
        "both valid readings reach SKYNET_OBSERVATIONS"
    );
    // The malformed one was refused at the edge, as on a single node.
    assert!(
        eventually(Duration::from_secs(30), || watcher
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p == malformed.as_bytes())),
        "the malformed payload is dead-lettered"
    );
    // Every message was handled in order (the second valid one came after the refused
    // one): the stream holds the two readings and nothing else.
    assert_eq!(rt.block_on(stored(&js)), 2);
    let messages = rt.block_on(async {
        let stream = js.get_stream("SKYNET_OBSERVATIONS").await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=2 {
            out.push(stream.get_raw_message(seq).await.unwrap());
        }
        out
    });
    for (message, payload) in messages.iter().zip([&first, &second]) {
        assert_eq!(message.subject.as_str(), "skynet.readings.G-0201.gas-a");
        // Published as it came: the edge ran no rules and changed nothing.
        assert_eq!(message.payload.as_ref(), payload.as_bytes());
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("header {name} on {}", message.subject))
        };
        assert_eq!(header("Skynet-Mqtt-Topic"), format!("{prefix}/gas-a"));
        let at = chrono::DateTime::parse_from_rfc3339(&header("Skynet-Received-At"))
            .expect("an RFC 3339 receipt time");
        assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds() < 600);
        assert_eq!(header("Nats-Msg-Id").len(), 64);
    }

    assert_eq!(metrics(PUBLISHED), 2.0);
    // Acknowledged in receipt order, the refused one too.
    assert!(
        eventually(Duration::from_secs(30), || metrics(ACKED) >= 3.0),
        "the three messages are acknowledged to the broker"
    );

    // The bus goes away: a reading waits, unacknowledged, and the edge retries.
    nats.stop();
    let third = format!(r#"[{{"n":"gas-a/co","u":"ppm","v":14,"t":{}}}]"#, now + 2.0);
    watcher.publish(&format!("{prefix}/gas-a"), third.clone());
    assert!(
        eventually(Duration::from_secs(60), || metrics(RETRIES) >= 1.0),
        "the edge retries the publish while NATS is down"
    );
    assert_eq!(
        metrics(ACKED),
        3.0,
        "nothing acknowledged before JetStream's ack"
    );
    // Back: stored once (the retry has the same Nats-Msg-Id), then acknowledged.
    nats.resume();
    assert!(
        eventually(Duration::from_secs(60), || metrics(ACKED) >= 4.0),
        "the reading is acknowledged once JetStream has it"
    );
    let js = rt.block_on(async { jetstream::new(async_nats::connect(nats.url()).await.unwrap()) });
    assert_eq!(rt.block_on(stored(&js)), 3);
    let last = rt.block_on(async {
        let stream = js.get_stream("SKYNET_OBSERVATIONS").await.unwrap();
        stream.get_raw_message(3).await.unwrap()
    });
    assert_eq!(last.payload.as_ref(), third.as_bytes());

    shutdown.trigger();
    run.join().unwrap().unwrap();
}

#[test]
fn two_edges_share_the_sensor_messages_each_published_once() {
    let _serial = serial();
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(nats_dir.path());
    let broker = Broker::start();
    let services = Arc::new(Services::start(None).unwrap());
    let prefix = format!("skynet-test/{}-shared", std::process::id());
    let shutdown = skynet_core::Shutdown::new();
    let mut dirs = Vec::new();
    let mut runs = Vec::new();
    for node in ["edge-a", "edge-b"] {
        let dir = tempfile::tempdir().unwrap();
        let client_id = format!("{node}-{}", std::process::id());
        let config = edge_config(
            dir.path(),
            node,
            &client_id,
            &nats.url(),
            &broker.url(),
            &prefix,
        );
        runs.push(run_edge(config, Arc::clone(&services), &shutdown));
        broker.wait_subscribed(&client_id, &format!("$share/testcity-edges/{prefix}/+"), 1);
        dirs.push(dir);
    }
    // Readings with no time of their own: were a message given to both edges, each would
    // publish it with its own receipt time, and the stream would hold it twice.
    let publisher = Mqtt::connect(&broker.url(), &format!("{prefix}-pub").replace('/', "-"));
    let sent = 40;
    for v in 0..sent {
        publisher.publish(
            &format!("{prefix}/gas-a"),
            format!(r#"[{{"n":"gas-a/co","u":"ppm","v":{v}}}]"#),
        );
    }
    let rt = tokio_runtime();
    let js = rt.block_on(async { jetstream::new(async_nats::connect(nats.url()).await.unwrap()) });
    assert!(
        eventually(Duration::from_secs(30), || rt.block_on(stored(&js)) >= sent),
        "every reading reaches SKYNET_OBSERVATIONS"
    );
    let messages = rt.block_on(async {
        let stream = js.get_stream("SKYNET_OBSERVATIONS").await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=sent {
            out.push(stream.get_raw_message(seq).await.unwrap());
        }
        out
    });
    let mut values: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len() as u64, sent, "each message published once");
    shutdown.trigger();
    for run in runs {
        run.join().unwrap().unwrap();
    }
    // Nothing more came after the last one.
    assert_eq!(rt.block_on(stored(&js)), sent);
}
