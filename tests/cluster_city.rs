//! configs/city.toml as a city of many processes on loopback: one NATS (JetStream), one
//! Mosquitto, two edges and two scorers (`skynet run --role edge|scorer`), each with its
//! own state directory, all on the one config.
//!
//! - gas-07's leak in G-0201 with people on cam-safety-03 gives exactly one `gas_leak` and
//!   one level-I `person_exposed_to_gas` in SKYNET_INCIDENTS, as on a single node;
//! - `kill -9` of the edge running cam-safety-03: the other edge runs it within
//!   `failover_s`;
//! - `kill -9` of the scorer owning G-0201 mid-leak: the incident goes on under its id on
//!   the other scorer, and no event id is in SKYNET_INCIDENTS twice with different content.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mosquitto::Broker;
use common::*;

/// One `skynet run --role ROLE` process of the city.
struct Node {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    metrics: SocketAddr,
}

impl Node {
    fn start(role: &str, name: &str, state: &Path, broker: &Broker, nats: &str) -> Self {
        let metrics = free_port();
        let api = free_port();
        let dir = state.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (child, log) = spawn_logged_with_env(
            &repo().join("configs/city.toml"),
            &["--role", role],
            &[
                ("SKYNET_MQTT_URL", broker.url()),
                ("SKYNET_NATS_URL", nats.to_string()),
                ("SKYNET_CLUSTER_URL", nats.to_string()),
                ("SKYNET_NODE_NAME", name.to_string()),
                ("SKYNET_STATE_DIR", dir.display().to_string()),
                ("SKYNET_METRICS_LISTEN", metrics.to_string()),
                ("SKYNET_API_LISTEN", api.to_string()),
            ],
        );
        Self {
            name: name.to_string(),
            child,
            log,
            metrics,
        }
    }

    fn metrics(&self) -> String {
        http_get(self.metrics, "/metrics").unwrap_or_default()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill_9(&mut self) {
        Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("==== {}\n{}", n.name, n.log()))
        .collect()
}

fn simulate(url: &str, scenario: &str, seconds: u32) {
    let status = Command::new(skynet_bin())
        .args([
            "simulate",
            "sensors",
            "--url",
            url,
            "--rate",
            "10",
            "--duration",
            &seconds.to_string(),
            "--scenario",
            scenario,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "skynet simulate sensors --scenario {scenario}");
}

/// Every incident CloudEvent in SKYNET_INCIDENTS: (event id, body).
fn incidents(rt: &tokio::runtime::Runtime, url: &str) -> Vec<(String, serde_json::Value)> {
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        if js.get_stream("SKYNET_INCIDENTS").await.is_err() {
            return Vec::new();
        }
        read_stream_in(&js, "SKYNET_INCIDENTS", Duration::from_secs(10)).await
    })
    .into_iter()
    .filter(|(_, _, headers, _)| headers.get("ce-type").map(String::as_str) == Some("skynet.incident.v1"))
    .map(|(id, _, _, body)| (id, body))
    .collect()
}

fn incident_ids(events: &[(String, serde_json::Value)], grid: &str, category: &str) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .filter(|(_, e)| e["data"]["grid"] == grid && e["data"]["category"] == category)
        .filter_map(|(_, e)| e["data"]["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The node holding `camera.<id>` in the lease bucket.
fn camera_holder(rt: &tokio::runtime::Runtime, url: &str, camera: &str) -> Option<String> {
    rt.block_on(async {
        let client = async_nats::connect(url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value("skynet_leases").await.ok()?;
        let value = kv.get(format!("camera.{camera}")).await.ok()??;
        let value: serde_json::Value = serde_json::from_slice(&value).ok()?;
        value["node"].as_str().map(str::to_string)
    })
}

#[test]
fn two_edges_and_two_scorers_give_the_single_nodes_incidents_and_survive_kill_9() {
    let state = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let nats = PrivateNats::start(&state.path().join("nats"));
    let url = nats.url();
    let rt = tokio_runtime();

    let mut edges = [
        Node::start("edge", "edge-a", state.path(), &broker, &url),
        Node::start("edge", "edge-b", state.path(), &broker, &url),
    ];
    let mut scorers = [
        Node::start("scorer", "scorer-a", state.path(), &broker, &url),
        Node::start("scorer", "scorer-b", state.path(), &broker, &url),
    ];
    // Every process sees the whole membership, and the camera runs somewhere.
    let all = |edges: &[Node], scorers: &[Node]| {
        logs(&edges.iter().chain(scorers.iter()).collect::<Vec<_>>())
    };
    assert!(
        eventually(Duration::from_secs(90), || {
            scorers.iter().chain(edges.iter()).all(|n| {
                let m = n.metrics();
                metric(&m, "skynet_cluster_members{role=\"edge\"}") == 2.0
                    && metric(&m, "skynet_cluster_members{role=\"scorer\"}") == 2.0
            }) && camera_holder(&rt, &url, "cam-safety-03").is_some()
        }),
        "two edges and two scorers see each other\n{}",
        all(&edges, &scorers)
    );
    for edge in &edges {
        assert!(
            eventually(Duration::from_secs(60), || metric(
                &edge.metrics(),
                "skynet_mqtt_connected"
            ) == 1.0),
            "{} connects to the broker\n{}",
            edge.name,
            edge.log()
        );
    }

    simulate(&broker.url(), "leak", 25);
    let fused = |events: &[(String, serde_json::Value)]| {
        incident_ids(events, "G-0201", "person_exposed_to_gas")
    };
    assert!(
        eventually(Duration::from_secs(60), || {
            let events = incidents(&rt, &url);
            incident_ids(&events, "G-0201", "gas_leak").len() == 1 && fused(&events).len() == 1
        }),
        "one gas_leak and one person_exposed_to_gas in G-0201: {:?}\n{}",
        incidents(&rt, &url),
        all(&edges, &scorers)
    );
    let events = incidents(&rt, &url);
    let leak = incident_ids(&events, "G-0201", "gas_leak")[0].clone();
    let exposed = events
        .iter()
        .rev()
        .find(|(_, e)| e["data"]["category"] == "person_exposed_to_gas")
        .unwrap();
    assert_eq!(exposed.1["data"]["level"], "I", "{:?}", exposed.1);

    // kill -9 the edge running the camera: the other runs it within failover_s.
    let holder = camera_holder(&rt, &url, "cam-safety-03").unwrap();
    let (dead, alive) = if holder == edges[0].name { (0, 1) } else { (1, 0) };
    edges[dead].kill_9();
    let survivor = edges[alive].name.clone();
    assert!(
        eventually(Duration::from_secs(60), || camera_holder(&rt, &url, "cam-safety-03")
            .as_deref()
            == Some(survivor.as_str())),
        "{survivor} runs cam-safety-03 after {holder} was killed\n{}",
        all(&edges, &scorers)
    );

    // kill -9 the scorer owning G-0201 mid-leak: the incident goes on under its id.
    let scorer_names: Vec<String> = scorers.iter().map(|s| s.name.clone()).collect();
    let owner = skynet_cluster::owner("G-0201", &scorer_names)
        .unwrap()
        .to_string();
    let (dead, alive) = if owner == scorers[0].name { (0, 1) } else { (1, 0) };
    let revisions_before = events
        .iter()
        .filter(|(_, e)| e["data"]["id"] == leak.as_str())
        .count();
    scorers[dead].kill_9();
    let rest = std::thread::spawn({
        let url = broker.url();
        move || simulate(&url, "leak", 30)
    });
    assert!(
        eventually(Duration::from_secs(90), || {
            let events = incidents(&rt, &url);
            let revisions = events
                .iter()
                .filter(|(_, e)| e["data"]["id"] == leak.as_str())
                .count();
            revisions > revisions_before
                && incident_ids(&events, "G-0201", "gas_leak") == vec![leak.clone()]
        }),
        "{} goes on with {leak} after {owner} was killed: {:?}\n{}",
        scorers[alive].name,
        incidents(&rt, &url),
        all(&edges, &scorers)
    );
    rest.join().unwrap();
    // No event id twice with different content (the stream keeps one per id).
    let mut seen: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (id, body) in incidents(&rt, &url) {
        if let Some(earlier) = seen.insert(id.clone(), body.clone()) {
            assert_eq!(earlier, body, "event {id} twice with different content");
        }
    }
    assert_eq!(
        incident_ids(&incidents(&rt, &url), "G-0201", "gas_leak"),
        vec![leak]
    );
}
