//! configs/city.toml as a city of many processes on loopback: one NATS (JetStream), one
//! Mosquitto, two edges and two scorers (`skynet run --role edge|scorer`), each with its
//! own state directory, all on the one config.
//!
//! - gas-07's leak in G-0201 with people on cam-safety-03 gives exactly one `gas_leak` and
//!   one level-I `person_exposed_to_gas` in SKYNET_INCIDENTS, as on a single node;
//! - `kill -9` of the edge running cam-safety-03: the other edge runs it within
//!   `failover_s`;
//! - `kill -9` of the scorer owning G-0201 mid-leak: the incident goes on under its id on
//!   the other scorer, and no event id is in SKYNET_INCIDENTS twice with different content;
//! - a rolling restart (SIGTERM each process in turn, start it again, wait until it is a
//!   live member of its role) while cam-safety-03's observations flow loses none: what the
//!   edges published over every incarnation (each logs it as it stops) is the stream's
//!   observations, once each, and the scorers' logs of what they applied for the cells they
//!   owned (`skynet_bus_applied_total`, each logged at debug with its stream sequence) cover
//!   every one, a replay after a handover counted once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
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
        let config = repo().join("configs/city.toml");
        Self::start_with(&config, role, name, state, broker, nats, "info,ort=warn")
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

impl Node {
    /// As [`Node::start`], on `config` and with `RUST_LOG` set for the process.
    fn start_with(
        config: &Path,
        role: &str,
        name: &str,
        state: &Path,
        broker: &Broker,
        nats: &str,
        filter: &str,
    ) -> Self {
        let metrics = free_port();
        let api = free_port();
        let dir = state.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (child, log) = spawn_logged_with_env(
            config,
            &["--role", role],
            &[
                ("SKYNET_MQTT_URL", broker.url()),
                ("SKYNET_NATS_URL", nats.to_string()),
                ("SKYNET_CLUSTER_URL", nats.to_string()),
                ("SKYNET_NODE_NAME", name.to_string()),
                ("SKYNET_STATE_DIR", dir.display().to_string()),
                ("SKYNET_METRICS_LISTEN", metrics.to_string()),
                ("SKYNET_API_LISTEN", api.to_string()),
                ("RUST_LOG", filter.to_string()),
            ],
        );
        Self {
            name: name.to_string(),
            child,
            log,
            metrics,
        }
    }

    /// SIGTERM, as a supervisor's rolling restart stops it; waits for it to exit and
    /// returns its whole log.
    fn terminate(&mut self) -> String {
        let (status, log) = terminate(&mut self.child, &self.log);
        assert!(
            status.success(),
            "{} stops cleanly on SIGTERM: {status}\n{log}",
            self.name
        );
        log
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
    .filter(|(_, _, headers, _)| {
        headers.get("ce-type").map(String::as_str) == Some("skynet.incident.v1")
    })
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

    common::simulate_sensors(&broker.url(), "leak", 25);
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
    let (dead, alive) = if holder == edges[0].name {
        (0, 1)
    } else {
        (1, 0)
    };
    edges[dead].kill_9();
    let survivor = edges[alive].name.clone();
    assert!(
        eventually(Duration::from_secs(60), || camera_holder(
            &rt,
            &url,
            "cam-safety-03"
        )
        .as_deref()
            == Some(survivor.as_str())),
        "{survivor} runs cam-safety-03 after {holder} was killed\n{}",
        all(&edges, &scorers)
    );
    // Its supervisor (a StatefulSet, systemd) starts it again under its name: its MQTT
    // session, which the broker kept and went on queueing its share of the shared
    // subscription to, drains (a node that never comes back must be replaced under the
    // same name; README "The edge role: sensor readings").
    edges[dead] = Node::start("edge", &holder, state.path(), &broker, &url);
    assert!(
        eventually(Duration::from_secs(60), || metric(
            &edges[dead].metrics(),
            "skynet_mqtt_connected"
        ) == 1.0),
        "{holder} reconnects to the broker\n{}",
        edges[dead].log()
    );

    // kill -9 the scorer owning G-0201 mid-leak: the incident goes on under its id.
    let scorer_names: Vec<String> = scorers.iter().map(|s| s.name.clone()).collect();
    let owner = skynet_cluster::owner("G-0201", &scorer_names)
        .unwrap()
        .to_string();
    let (dead, alive) = if owner == scorers[0].name {
        (0, 1)
    } else {
        (1, 0)
    };
    let revisions_before = events
        .iter()
        .filter(|(_, e)| e["data"]["id"] == leak.as_str())
        .count();
    scorers[dead].kill_9();
    let rest = std::thread::spawn({
        let url = broker.url();
        move || common::simulate_sensors(&url, "leak", 30)
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

/// configs/city.toml in `dir`, its paths made absolute, with its camera rules' cooldowns cut
/// to half a second: cam-safety-03's people then give observations several times a second,
/// so some are always in flight while a process stops.
fn busy_city(dir: &Path) -> std::path::PathBuf {
    let configs = repo().join("configs");
    let text = std::fs::read_to_string(configs.join("city.toml")).unwrap();
    let mut text = text
        .replace(
            "file = \"city-grids.geojson\"",
            &format!(
                "file = {:?}",
                configs.join("city-grids.geojson").display().to_string()
            ),
        )
        .replace(
            "model = \"../models/yolox_nano.toml\"",
            &format!(
                "model = {:?}",
                repo().join("models/yolox_nano.toml").display().to_string()
            ),
        );
    for cooldown in ["cooldown_s = 10.0", "cooldown_s = 5.0"] {
        assert_eq!(
            text.matches(cooldown).count(),
            1,
            "configs/city.toml: {cooldown}"
        );
        text = text.replace(cooldown, "cooldown_s = 0.5");
    }
    let path = dir.join("busy-city.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The stream sequence and cell of every observation in SKYNET_OBSERVATIONS (readings left
/// out).
fn observations_in_stream(rt: &tokio::runtime::Runtime, url: &str) -> BTreeMap<u64, String> {
    rt.block_on(async {
        let Ok(client) = async_nats::connect(url).await else {
            return BTreeMap::new();
        };
        let js = async_nats::jetstream::new(client);
        let Ok(mut stream) = js.get_stream("SKYNET_OBSERVATIONS").await else {
            return BTreeMap::new();
        };
        let Ok(info) = stream.info().await else {
            return BTreeMap::new();
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut out = BTreeMap::new();
        for seq in first.max(1)..=last {
            let message = stream
                .get_raw_message(seq)
                .await
                .unwrap_or_else(|e| panic!("message {seq} of SKYNET_OBSERVATIONS: {e}"));
            if let Some(grid) = message
                .subject
                .as_str()
                .strip_prefix("skynet.observations.")
            {
                out.insert(seq, grid.to_string());
            }
        }
        out
    })
}

/// Every `key=<number>` field on the log lines holding `message`.
fn logged_numbers(log: &str, message: &str, key: &str) -> Vec<u64> {
    let field = format!("{key}=");
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix(field.as_str()))
                .find_map(|n| n.parse().ok())
        })
        .collect()
}

/// What a stopped edge's publisher got acknowledged over its life (logged as it stops).
fn published_at_stop(name: &str, log: &str) -> u64 {
    let counts = logged_numbers(log, "observation publisher stopped", "published");
    assert_eq!(
        counts.len(),
        1,
        "{name} says once what it published as it stops\n{log}"
    );
    counts[0]
}

/// The stream sequences a scorer's log says it applied for the cells it owned.
fn applied_in(log: &str) -> Vec<u64> {
    logged_numbers(log, "bus observation applied", "seq")
}

#[test]
fn a_rolling_restart_of_every_process_loses_no_observation() {
    // Generous for a loaded 2-core machine: every wait is on a condition.
    const WAIT: Duration = Duration::from_secs(120);
    // Each applied observation logged with its stream sequence (debug, the scorer's module).
    const FILTER: &str = "info,ort=warn,skynet::pipeline::scorer=debug";
    let state = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let nats = PrivateNats::start(&state.path().join("nats"));
    let url = nats.url();
    let rt = tokio_runtime();
    let roles = [
        ("edge", "edge-a"),
        ("edge", "edge-b"),
        ("scorer", "scorer-a"),
        ("scorer", "scorer-b"),
    ];
    let config = busy_city(state.path());
    let start = |(role, name): (&str, &str)| {
        Node::start_with(&config, role, name, state.path(), &broker, &url, FILTER)
    };
    let mut nodes: Vec<Node> = roles.iter().map(|&r| start(r)).collect();
    let all_logs = |nodes: &[Node]| logs(&nodes.iter().collect::<Vec<_>>());
    let everyone_live = |nodes: &[Node]| {
        nodes.iter().all(|n| {
            let m = n.metrics();
            metric(&m, "skynet_cluster_members{role=\"edge\"}") == 2.0
                && metric(&m, "skynet_cluster_members{role=\"scorer\"}") == 2.0
        })
    };
    assert!(
        eventually(WAIT, || everyone_live(&nodes)
            && camera_holder(&rt, &url, "cam-safety-03").is_some()),
        "two edges and two scorers see each other\n{}",
        all_logs(&nodes)
    );
    // The camera's rules publish observations (people on cam-safety-03, several a second).
    assert!(
        eventually(WAIT, || !observations_in_stream(&rt, &url).is_empty()),
        "observations flow\n{}",
        all_logs(&nodes)
    );

    // Each process in turn: SIGTERM, started again on its state, a live member of its role
    // again, and observations still flowing, before the next.
    let mut published = 0u64;
    let mut scorer_logs: Vec<String> = Vec::new();
    let stop = |node: &mut Node, role: &str, published: &mut u64, scorer_logs: &mut Vec<String>| {
        let counted = metric(
            &node.metrics(),
            "skynet_bus_published_total{kind=\"observation\"}",
        ) as u64;
        let log = node.terminate();
        if role == "edge" {
            let at_stop = published_at_stop(&node.name, &log);
            assert!(
                at_stop >= counted,
                "{}: {at_stop} at its stop, {counted} in its metrics before",
                node.name
            );
            *published += at_stop;
        } else {
            scorer_logs.push(log);
        }
    };
    for (i, &(role, name)) in roles.iter().enumerate() {
        stop(&mut nodes[i], role, &mut published, &mut scorer_logs);
        // While it is down the others go on: its camera or its cells move, and what comes
        // meanwhile is theirs.
        let down = observations_in_stream(&rt, &url).len();
        let others: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n)
            .collect();
        assert!(
            eventually(WAIT, || observations_in_stream(&rt, &url).len() >= down + 3),
            "observations flow while {name} is down\n{}",
            logs(&others)
        );
        nodes[i] = start((role, name));
        assert!(
            eventually(WAIT, || everyone_live(&nodes)),
            "{name} is a live {role} again after its restart\n{}",
            all_logs(&nodes)
        );
        let back = observations_in_stream(&rt, &url).len();
        assert!(
            eventually(WAIT, || observations_in_stream(&rt, &url).len() >= back + 5),
            "observations flow on after {name}'s restart\n{}",
            all_logs(&nodes)
        );
    }

    // The end: the edges stop (what they published is then final), the scorers apply the
    // rest of the stream, then stop.
    for (i, &(role, _)) in roles.iter().enumerate().take(2) {
        stop(&mut nodes[i], role, &mut published, &mut scorer_logs);
    }
    let stream = observations_in_stream(&rt, &url);
    let stream_seqs: BTreeSet<u64> = stream.keys().copied().collect();
    let applied_now = |nodes: &[Node], earlier: &[String]| -> BTreeSet<u64> {
        let running: Vec<String> = nodes[2..].iter().map(Node::log).collect();
        earlier
            .iter()
            .chain(&running)
            .flat_map(|l| applied_in(l))
            .collect()
    };
    assert!(
        eventually(WAIT, || applied_now(&nodes, &scorer_logs)
            .is_superset(&stream_seqs)),
        "the scorers apply every observation of the stream: missing {:?}\n{}",
        stream_seqs
            .difference(&applied_now(&nodes, &scorer_logs))
            .collect::<Vec<_>>(),
        all_logs(&nodes)
    );
    // The counter agrees with the log of each scorer still running.
    for node in &nodes[2..] {
        assert_eq!(
            metric(
                &node.metrics(),
                "skynet_bus_applied_total{kind=\"observation\"}"
            ) as usize,
            applied_in(&node.log()).len(),
            "{}: skynet_bus_applied_total counts what it logged as applied",
            node.name
        );
    }
    for (i, &(role, _)) in roles.iter().enumerate().skip(2) {
        stop(&mut nodes[i], role, &mut published, &mut scorer_logs);
    }

    // Nothing lost: every observation an edge got acknowledged is in the stream, once (no
    // acknowledged duplicate), and was applied by the scorer owning its cell then (a
    // replay after a handover counted once).
    let applied_all: Vec<u64> = scorer_logs.iter().flat_map(|l| applied_in(l)).collect();
    let applied: BTreeSet<u64> = applied_all.iter().copied().collect();
    assert_eq!(
        stream.len() as u64,
        published,
        "the stream holds what the edges published, over every incarnation"
    );
    assert_eq!(
        applied, stream_seqs,
        "the scorers applied exactly the stream's observations"
    );
    assert!(applied_all.len() as u64 >= published);
    let per_incarnation: Vec<usize> = scorer_logs.iter().map(|l| applied_in(l).len()).collect();
    eprintln!(
        "rolling restart: {published} observations published, {} in the stream, {} applied ({} replayed after a handover); applied per scorer incarnation (a, b, a, b): {per_incarnation:?}",
        stream.len(),
        applied.len(),
        applied_all.len() - applied.len()
    );
}
