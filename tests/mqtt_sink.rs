//! Delivery to MQTT at QoS 1 against a real broker: a private Mosquitto on a spare port
//! (persistence on, `max_queued_messages 0` so it queues every QoS 1 message for the
//! subscriber), stopped for 10 s while events keep being committed, then started again.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::mosquitto::{Broker, Mqtt};
use common::{incident, outbox_ids, tokio_runtime};
use serde_json::Value;
use skynet_core::Component;
use skynet_core::{ComponentHealth, ConfigContext};
use skynet_emit::{BuildSink, Committer, IncidentSink, MqttSinkConfig, Outbox, SinkBuildContext};

#[test]
fn every_event_reaches_a_qos1_subscriber_after_dedup_while_the_broker_is_stopped_for_10_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start();
    // Topics and client ids of this run only: the broker is private, but the ids and topics
    // also name the test in its logs.
    let tag = format!(
        "{}x{}",
        std::process::id(),
        broker.url().rsplit(':').next().unwrap()
    );
    let prefix = format!("skynet-it/{tag}");

    // The subscriber keeps its session (and what the broker queues for it) across the restart.
    let subscriber = Mqtt::connect_with(&broker.url(), &format!("sink-it-sub-{tag}"), false);
    subscriber.subscribe_acked(&format!("{prefix}/#"), rumqttc::QoS::AtLeastOnce);

    let config: MqttSinkConfig = toml::from_str(&format!(
        "url = \"{}\"\ntopic_prefix = \"{prefix}\"\nack_timeout_s = 2\nmax_in_flight = 50",
        broker.url()
    ))
    .unwrap();
    let cx = ConfigContext::new(&dir.path().join("skynet.toml")).with_node(format!("it{tag}"));
    let config = config.validate(&cx).unwrap();
    let sink = config.build(&SinkBuildContext { name: "mqtt" }).unwrap();
    let health = ComponentHealth::detached("mqtt", "sink");
    let sinks: Vec<(Box<dyn IncidentSink>, ComponentHealth)> = vec![(sink, health.clone())];

    let outbox_path = dir.path().join("outbox.sqlite");
    let rt = tokio_runtime();
    let mut committer = Committer::new("n1", Outbox::open(&outbox_path).unwrap());
    let deliveries =
        skynet_emit::spawn_deliveries(rt.handle(), &outbox_path, sinks, committer.wake_handle());

    // 25 events a second for 20 s; the broker stops at 4 s for 10 s. The pacing is the
    // simulated workload: no assertion depends on how fast anything runs.
    let started = Instant::now();
    let mut stopped_at = None;
    let mut restarted = false;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(20) {
        committer.commit(&[incident(n)], None).unwrap();
        n += 1;
        let t = started.elapsed();
        if stopped_at.is_none() && t >= Duration::from_secs(4) {
            broker.stop();
            stopped_at = Some(t);
        }
        if !restarted && stopped_at.is_some_and(|s| t >= s + Duration::from_secs(10)) {
            assert!(
                common::eventually(Duration::from_secs(60), || health.status().unwrap().state
                    != skynet_core::ComponentState::Up),
                "the sink shows that the broker is down"
            );
            broker.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(
        deliveries.shutdown(Duration::from_secs(60)).is_empty(),
        "the sink caught up"
    );

    let stored = outbox_ids(&committer);
    assert_eq!(stored.len(), n as usize);
    // Every acknowledged publish was queued for the subscriber: wait for it to drain.
    let ids = || -> BTreeSet<String> {
        subscriber
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                let event: Value = serde_json::from_slice(body).unwrap();
                event["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    common::eventually(Duration::from_secs(60), || ids().len() >= stored.len());
    assert_eq!(
        ids(),
        stored,
        "after dedup by id, the subscriber got exactly the outbox"
    );

    let received = subscriber.received.lock().unwrap();
    let duplicates = received.len() - stored.len();
    eprintln!(
        "{} events, {} messages received ({duplicates} duplicates)",
        stored.len(),
        received.len()
    );
    for (topic, body) in received.iter() {
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            topic,
            &format!(
                "{prefix}/incidents/{}/gas_leak",
                event["data"]["grid"].as_str().unwrap()
            ),
        );
        assert_eq!(event["type"], "skynet.incident.v1");
        assert_eq!(event["source"], "skynet/n1");
    }
    drop(received);
    rt.shutdown_timeout(Duration::from_secs(1));
}
