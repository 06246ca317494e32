//! The scorer role (issue 23): two scorers share the grid cells by rendezvous hashing over
//! the live scorers, each emits the incidents of its own cells only, and when one stops the
//! other takes its cells from KV `skynet_cells` and goes on under the same incident ids.
//! Observations are published into SKYNET_OBSERVATIONS directly (no edge needed).

mod common;

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{PrivateNats, eventually, repo, tokio_runtime};
use skynet::{RunOptions, pipeline};
use skynet_cluster::{ClusterConfig, Role};
use skynet_core::{DeviceId, GridId, Observation, Shutdown, SourceRef};

/// Generous for a loaded 2-core machine; every wait is on a condition.
const WAIT: Duration = Duration::from_secs(45);

fn config_text(dir: &Path, node: &str, url: &str) -> String {
    config_with(dir, node, url, "")
}

/// [`config_text`] with `extra` TOML at the end.
fn config_with(dir: &Path, node: &str, url: &str, extra: &str) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    format!(
        r#"
[node]
name = "{node}"

[cluster]
url = "{url}"
name = "city"
failover_s = 3

[grids]
file = "{grids}"

[detect]
model = "{model}"

[risk]
half_life_s = 600
close_after_s = 600

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/incidents.jsonl"

# The edges' camera: a scorer runs none (never connected here).
[[cameras]]
id = "cam-1"
owner = "police"
uri = "rtsp://127.0.0.1:9/cam"
grid = "G-0101"
{extra}
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&repo().join("models/yolox_nano.toml")),
        dir = esc(dir),
    )
}

/// A scorer running as `skynet run --role scorer` does, until its `Shutdown`.
struct Scorer {
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<skynet::RunSummary, String>>>,
    dir: std::path::PathBuf,
}

impl Scorer {
    fn start(dir: &Path, node: &str, url: &str) -> Self {
        Self::start_with(dir, node, url, "")
    }

    fn start_with(dir: &Path, node: &str, url: &str, extra: &str) -> Self {
        Self::start_text(dir, &config_with(dir, node, url, extra))
    }

    fn start_text(dir: &Path, text: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = common::pipeline_config(dir, text);
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            pipeline::run(
                &config,
                RunOptions {
                    shutdown: stop,
                    wait_for_shutdown: true,
                    role: Role::Scorer,
                    ..RunOptions::default()
                },
            )
            .map_err(|e| e.to_string())
        });
        Self {
            shutdown,
            thread: Some(thread),
            dir: dir.to_path_buf(),
        }
    }

    /// The incident revisions its JSONL sink delivered: (incident id, grid, revision).
    fn delivered(&self) -> Vec<(String, String, u64)> {
        self.delivered_with_category()
            .into_iter()
            .map(|(id, grid, revision, _)| (id, grid, revision))
            .collect()
    }

    /// The incident revisions of `category` it delivered: (incident id, grid).
    fn of_category(&self, category: &str) -> Vec<(String, String)> {
        self.delivered_with_category()
            .into_iter()
            .filter(|(_, _, _, c)| c == category)
            .map(|(id, grid, _, _)| (id, grid))
            .collect()
    }

    fn delivered_with_category(&self) -> Vec<(String, String, u64, String)> {
        let text = std::fs::read_to_string(self.dir.join("incidents.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"].as_str().is_some_and(|t| t.contains("incident")))
            .map(|e| {
                (
                    e["data"]["id"].as_str().unwrap_or_default().to_string(),
                    e["data"]["grid"].as_str().unwrap_or_default().to_string(),
                    e["data"]["revision"].as_u64().unwrap_or_default(),
                    e["data"]["category"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The CloudEvent ids of `incident`'s revision `revision` it delivered.
    fn event_ids(&self, incident: &str, revision: u64) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("incidents.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["data"]["id"].as_str() == Some(incident)
                    && e["data"]["revision"].as_u64() == Some(revision)
            })
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    }

    fn incidents_in(&self, grid: &str) -> Vec<(String, u64)> {
        self.delivered()
            .into_iter()
            .filter(|(_, g, _)| g == grid)
            .map(|(id, _, revision)| (id, revision))
            .collect()
    }

    fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
    }
}

impl Drop for Scorer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn gas(grid: &str, sensor: &str, weight: f32) -> Observation {
    Observation {
        at: chrono::Utc::now(),
        source: SourceRef::sensor(&DeviceId::new(sensor)),
        grid: GridId::new(grid),
        category: "gas_leak".into(),
        weight,
        confidence: 1.0,
        evidence: Default::default(),
    }
}

/// Two node names (ending in `tag`: each test has its own, as the metrics are the
/// process's) and a cell owned by each of them (rendezvous over the two), from the demo
/// grid's cells.
fn split(tag: &str) -> (String, String, String, String) {
    split_of(tag, &["G-0101", "G-0102", "G-0201"])
}

/// [`split`] among `cells`.
fn split_of(tag: &str, cells: &[&str]) -> (String, String, String, String) {
    for n in 0..100 {
        let (a, b) = (format!("scorer-a{n}{tag}"), format!("scorer-b{n}{tag}"));
        let members = vec![a.clone(), b.clone()];
        let of = |me: &str| {
            cells
                .iter()
                .find(|c| skynet_cluster::owner(c, &members) == Some(me))
                .map(|c| c.to_string())
        };
        if let (Some(cell_a), Some(cell_b)) = (of(&a), of(&b)) {
            return (a, b, cell_a, cell_b);
        }
    }
    panic!("no split of the cells over two scorers");
}

/// The test's NATS, its client and JetStream context, and the runtime they run on.
struct Bus {
    _nats: PrivateNats,
    url: String,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    cluster: ClusterConfig,
}

impl Bus {
    fn start(dir: &Path) -> Self {
        let nats = PrivateNats::start(&dir.join("nats"));
        let url = nats.url();
        let runtime = tokio_runtime();
        let cluster = ClusterConfig::for_url(url.clone());
        // The server is listening; on a loaded machine its first connection may still be
        // refused: tried until it is taken.
        let mut client = None;
        eventually(WAIT, || {
            client = runtime.block_on(skynet_cluster::connect(&cluster)).ok();
            client.is_some()
        });
        let client = client.expect("the private nats-server takes connections");
        runtime
            .block_on(skynet_cluster::bus::observation_stream(&client, &cluster))
            .unwrap();
        let js = {
            let _in = runtime.enter();
            async_nats::jetstream::new(client.clone())
        };
        Self {
            _nats: nats,
            url,
            runtime,
            client,
            js,
            cluster,
        }
    }

    /// Publishes on `subject`; returns the stream sequence.
    fn publish_raw(&self, subject: &str, body: Vec<u8>) -> u64 {
        self.runtime
            .block_on(async {
                self.js
                    .publish(subject.to_string(), body.into())
                    .await
                    .unwrap()
                    .await
            })
            .unwrap()
            .sequence
    }

    /// Publishes sensor `sensor`'s CO reading of `ppm` measured at `at` (SenML, its own
    /// time) as an edge does, on `skynet.readings.<grid>.<sensor>`; returns the sequence.
    fn publish_reading(
        &self,
        grid: &str,
        sensor: &str,
        ppm: f64,
        at: chrono::DateTime<chrono::Utc>,
    ) -> u64 {
        let payload = format!(
            r#"[{{"n":"{sensor}/co","u":"ppm","v":{ppm},"t":{}}}]"#,
            at.timestamp_micros() as f64 / 1e6
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Skynet-Mqtt-Topic",
            format!("skynet/sensors/{sensor}").as_str(),
        );
        headers.insert(
            "Skynet-Received-At",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_str(),
        );
        self.runtime
            .block_on(async {
                self.js
                    .publish_with_headers(
                        skynet_cluster::bus::reading_subject(grid, sensor),
                        headers,
                        payload.into(),
                    )
                    .await
                    .unwrap()
                    .await
            })
            .unwrap()
            .sequence
    }

    fn publish(&self, observation: &Observation) -> u64 {
        self.publish_raw(
            &skynet_cluster::bus::observation_subject(observation.grid.as_str()),
            serde_json::to_vec(observation).unwrap(),
        )
    }

    /// The saved state of `grid` in KV `skynet_cells`, as JSON.
    fn saved_cell(&self, grid: &str) -> Option<serde_json::Value> {
        self.runtime.block_on(async {
            let kv = skynet_cluster::bus::cells_bucket(&self.client, &self.cluster)
                .await
                .ok()?;
            let bytes = kv.get(skynet_cluster::bus::cell_key(grid)).await.ok()??;
            serde_json::from_slice(&bytes).ok()
        })
    }

    /// A scorer's floor (`scorer.<node>`): the stream sequence its cells are saved at.
    fn floor(&self, node: &str) -> Option<serde_json::Value> {
        self.runtime.block_on(async {
            let kv = skynet_cluster::bus::cells_bucket(&self.client, &self.cluster)
                .await
                .ok()?;
            let bytes = kv.get(format!("scorer.{node}")).await.ok()??;
            serde_json::from_slice(&bytes).ok()
        })
    }

    /// Whether `grid`'s saved state holds what the stream had up to `seq` and incident `id`.
    fn saved_at(&self, grid: &str, seq: u64, id: &str) -> bool {
        self.saved_cell(grid).is_some_and(|cell| {
            cell["seq"].as_u64().is_some_and(|s| s >= seq)
                && cell["cell"].as_str().is_some_and(|c| c.contains(id))
        })
    }
}

/// This process's metrics (every in-process scorer records into them).
fn metrics() -> String {
    skynet_serve::install_metrics().unwrap().render()
}

fn assigned(node: &str) -> f64 {
    common::metric(
        &metrics(),
        &format!("skynet_cluster_assignments{{node=\"{node}\",role=\"scorer\"}}"),
    )
}

/// Both scorers see each other and share the three cells.
/// A killable scorer b: a `skynet run --role scorer` process with config `text` in `dir`,
/// and a view of its JSONL sink; returns once scorer `a` sees b (owns at least one cell and
/// fewer than `below`), so a test can then route work to b's cells.
fn spawn_scorer_b(
    dir: &Path,
    text: &str,
    a: &str,
    below: f64,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
    Scorer,
) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("scorer.toml");
    std::fs::write(&config, text).unwrap();
    let (b, log) = common::spawn_logged(&config, &["--role", "scorer"]);
    let delivered = Scorer {
        shutdown: Shutdown::new(),
        thread: None,
        dir: dir.to_path_buf(),
    };
    assert!(
        eventually(WAIT, || assigned(a) >= 1.0 && assigned(a) < below),
        "a sees b and owns part of the cells: {}; b's log: {}",
        assigned(a),
        log.lock().unwrap()
    );
    (b, log, delivered)
}

fn wait_settled(a: &str, b: &str) {
    wait_shared(a, b, 3.0);
}

/// Both scorers see each other and share the `cells` cells.
fn wait_shared(a: &str, b: &str, cells: f64) {
    assert!(
        eventually(WAIT, || assigned(a) >= 1.0
            && assigned(b) >= 1.0
            && assigned(a) + assigned(b) == cells),
        "the scorers share the {cells} cells: {} and {}",
        assigned(a),
        assigned(b)
    );
}

#[test]
fn two_scorers_share_the_cells_and_one_takes_over_the_others_under_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    let (name_a, name_b, cell_a, cell_b) = split("-h");
    let a = Scorer::start(&tmp.path().join("a"), &name_a, &bus.url);
    let b = Scorer::start(&tmp.path().join("b"), &name_b, &bus.url);
    wait_settled(&name_a, &name_b);

    // A malformed message is refused (counted) and the rest goes on.
    let refused = || common::metric(&metrics(), "skynet_bus_refused_total{kind=\"observation\"}");
    let refused_before = refused();
    bus.publish_raw(
        &skynet_cluster::bus::observation_subject(&cell_a),
        b"{not an observation".to_vec(),
    );
    bus.publish(&gas(&cell_a, "gas-a", 0.6));
    let seq_b = bus.publish(&gas(&cell_b, "gas-b", 0.6));

    // Each cell's incident is emitted by its owner only.
    assert!(
        eventually(WAIT, || !a.incidents_in(&cell_a).is_empty()
            && !b.incidents_in(&cell_b).is_empty()),
        "each owner emits its cell's incident: a {:?}, b {:?}",
        a.delivered(),
        b.delivered()
    );
    assert!(
        refused() > refused_before,
        "the malformed message is counted"
    );
    let id_b = b.incidents_in(&cell_b)[0].0.clone();
    assert!(
        b.incidents_in(&cell_a).is_empty(),
        "{cell_a} is emitted by a only: {:?}",
        b.delivered()
    );
    assert!(
        a.incidents_in(&cell_b).is_empty(),
        "{cell_b} is emitted by b only: {:?}",
        a.delivered()
    );
    // b saves its cell (once delivered) with the sequence it applied.
    assert!(
        eventually(WAIT, || bus.saved_at(&cell_b, seq_b, &id_b)),
        "{cell_b} saved at {seq_b}: {:?}",
        bus.saved_cell(&cell_b)
    );

    // b stops: a takes its cell (from KV, not replaying what b applied) and the incident
    // goes on under the same id.
    let last_b = b
        .incidents_in(&cell_b)
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap();
    b.stop();
    bus.publish(&gas(&cell_b, "gas-b2", 0.9));
    assert!(
        eventually(WAIT, || a
            .incidents_in(&cell_b)
            .iter()
            .any(|(id, r)| *id == id_b && *r > last_b)),
        "a goes on with {id_b} after revision {last_b}: {:?}",
        a.delivered()
    );
    assert!(
        a.incidents_in(&cell_b)
            .iter()
            .all(|(id, r)| *id == id_b && *r > last_b),
        "{cell_b}: the same incident, no revision emitted twice: {:?}",
        a.delivered()
    );
    a.stop();
}

#[test]
fn a_killed_scorers_cells_fail_over_within_failover_s() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    let (name_a, name_b, _, cell_b) = split("-k");
    let failovers = || common::metric(&metrics(), "skynet_failovers_total{role=\"scorer\"}");
    let failovers_before = failovers();
    let a = Scorer::start(&tmp.path().join("a"), &name_a, &bus.url);
    // b: a `skynet run --role scorer` process, killed with SIGKILL.
    let dir_b = tmp.path().join("b");
    let (mut b, log_b, b_delivered) = spawn_scorer_b(
        &dir_b,
        &config_text(&dir_b, &name_b, &bus.url),
        &name_a,
        3.0,
    );
    let seq_b = bus.publish(&gas(&cell_b, "gas-b", 0.6));
    assert!(
        eventually(WAIT, || !b_delivered.incidents_in(&cell_b).is_empty()),
        "b emits {cell_b}'s incident; b's log: {}",
        log_b.lock().unwrap()
    );
    let id_b = b_delivered.incidents_in(&cell_b)[0].0.clone();
    assert!(
        eventually(WAIT, || bus.saved_at(&cell_b, seq_b, &id_b)),
        "{cell_b} saved at {seq_b}: {:?}",
        bus.saved_cell(&cell_b)
    );
    // Quiet: b's floor covers its cells up to there (a successor starts after it).
    assert!(
        eventually(WAIT, || bus.floor(&name_b).is_some_and(|f| f["seq"]
            .as_u64()
            .is_some_and(|s| s >= seq_b)
            && f["cells"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c.as_str() == Some(&cell_b))))),
        "b's floor: {:?}",
        bus.floor(&name_b)
    );
    let last_b = b_delivered
        .incidents_in(&cell_b)
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = std::time::Instant::now();
    // Its heartbeat lapses (two thirds of failover_s), a takes the cell and counts it.
    bus.publish(&gas(&cell_b, "gas-b2", 0.9));
    assert!(
        eventually(WAIT, || a
            .incidents_in(&cell_b)
            .iter()
            .any(|(id, r)| *id == id_b && *r > last_b)),
        "a goes on with {id_b} after revision {last_b}: {:?}",
        a.delivered()
    );
    // For the README's figure (not asserted: the machine's load decides it).
    eprintln!(
        "kill -9 to the next revision from the other scorer: {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        a.incidents_in(&cell_b)
            .iter()
            .all(|(id, r)| *id == id_b && *r > last_b),
        "{cell_b}: the same incident, nothing b delivered emitted again: {:?}",
        a.delivered()
    );
    assert!(
        failovers() > failovers_before,
        "the takeover is counted in skynet_failovers_total"
    );
    a.stop();
}

fn person(grid: &str, camera: &str) -> Observation {
    Observation {
        at: chrono::Utc::now(),
        source: SourceRef::camera(&DeviceId::new(camera)),
        grid: GridId::new(grid),
        category: "person_present".into(),
        weight: 0.5,
        confidence: 0.9,
        evidence: Default::default(),
    }
}

#[test]
fn a_fusion_rule_over_neighbours_works_across_scorer_borders_and_fires_once() {
    const EXPOSED: &str = r#"
[[risk.fusion]]
kind = "all"
name = "person-exposed-to-gas"
when = [{ category = "gas_leak", source = "sensor" }, { category = "person_present", source = "camera" }]
within_s = 300
scope = "neighbours"
category = "person_exposed_to_gas"
level = "I"
"#;
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    // The two halves of the square (neighbours), one owned by each scorer.
    let (name_a, name_b, gas_cell, person_cell) = split_of("-f", &["G-0101", "G-0102"]);
    let a = Scorer::start_with(&tmp.path().join("a"), &name_a, &bus.url, EXPOSED);
    let b = Scorer::start_with(&tmp.path().join("b"), &name_b, &bus.url, EXPOSED);
    wait_settled(&name_a, &name_b);

    bus.publish(&gas(&gas_cell, "gas-f", 0.6));
    assert!(
        eventually(WAIT, || !a.of_category("gas_leak").is_empty()),
        "a emits the gas leak in {gas_cell}: {:?}",
        a.delivered()
    );
    bus.publish(&person(&person_cell, "cam-f"));
    // The person completes the rule in b's cell: b fuses it with a's cell's gas.
    assert!(
        eventually(WAIT, || !b.of_category("person_exposed_to_gas").is_empty()),
        "b fuses {person_cell}'s person with the gas next door: b {:?}",
        b.delivered()
    );
    let fused = b.of_category("person_exposed_to_gas");
    assert!(
        fused
            .iter()
            .all(|(id, grid)| *grid == person_cell && *id == fused[0].0),
        "one incident, in {person_cell}: {fused:?}"
    );
    // a saw both observations too (the person as a neighbour's): it emits neither the
    // fused incident nor anything in b's cell.
    assert!(
        a.of_category("person_exposed_to_gas").is_empty()
            && a.delivered().iter().all(|(_, g, _)| *g == gas_cell),
        "a emits only for {gas_cell}: {:?}",
        a.delivered()
    );
    assert!(
        b.delivered().iter().all(|(_, g, _)| *g == person_cell),
        "b emits only for {person_cell}: {:?}",
        b.delivered()
    );
    a.stop();
    b.stop();
}

#[test]
fn what_a_killed_scorer_had_not_delivered_is_emitted_again_by_its_successor() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    let (name_a, name_b, _, cell_b) = split("-u");
    let a = Scorer::start(&tmp.path().join("a"), &name_a, &bus.url);
    // b: a process whose second sink never delivers (nothing listens there), so it saves
    // nothing of its cells: a cell is saved only once every sink has its revisions.
    let dir_b = tmp.path().join("b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let undelivered = format!(
        "[[sinks]]\nkind = \"nats\"\nname = \"down\"\nurl = \"nats://127.0.0.1:{nothing}\"\nstream = \"SKYNET_INCIDENTS\"\n"
    );
    let (mut b, log_b, b_delivered) = spawn_scorer_b(
        &dir_b,
        &config_with(&dir_b, &name_b, &bus.url, &undelivered),
        &name_a,
        3.0,
    );
    bus.publish(&gas(&cell_b, "gas-u", 0.6));
    assert!(
        eventually(WAIT, || !b_delivered.incidents_in(&cell_b).is_empty()),
        "b's JSONL sink has {cell_b}'s incident; b's log: {}",
        log_b.lock().unwrap()
    );
    let (id_b, first) = b_delivered.incidents_in(&cell_b)[0].clone();
    assert!(
        bus.saved_cell(&cell_b).is_none(),
        "not saved while a sink lacks it: {:?}",
        bus.saved_cell(&cell_b)
    );
    b.kill().unwrap();
    b.wait().unwrap();
    // a replays the cell from the stream and emits the same incident, the same revision,
    // again: the NATS sink's Nats-Msg-Id (the CloudEvent id) drops the repeat downstream.
    assert!(
        eventually(WAIT, || a
            .incidents_in(&cell_b)
            .iter()
            .any(|(id, r)| *id == id_b && *r == first)),
        "a emits {id_b} revision {first} again: {:?}",
        a.delivered()
    );
    assert_eq!(
        a.event_ids(&id_b, first),
        b_delivered.event_ids(&id_b, first),
        "the same CloudEvent id, which Nats-Msg-Id carries"
    );
    a.stop();
}

/// A scorer's config over the city grid (cells that are not neighbours exist there) that
/// takes case-status events from `url`.
fn cases_text(dir: &Path, node: &str, url: &str) -> String {
    let cases = format!("[cases]\nurl = \"{url}\"\nsources = [\"case-system\"]\n");
    config_with(dir, node, url, &cases).replace("demo-grids.geojson", "city-grids.geojson")
}

#[test]
fn each_scorer_applies_the_case_status_of_its_own_incidents_and_ignores_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    // Cells that are not neighbours (the city grid's): neither scorer's engine holds the
    // other's incident, so only the filter keeps a status event from being refused there.
    let (name_a, name_b, cell_a, cell_b) = split_of("-c", &["G-0101", "G-0301"]);
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Scorer::start_text(&dir_a, &cases_text(&dir_a, &name_a, &bus.url));
    let b = Scorer::start_text(&dir_b, &cases_text(&dir_b, &name_b, &bus.url));
    wait_shared(&name_a, &name_b, 4.0);
    bus.publish(&gas(&cell_a, "gas-ca", 0.6));
    bus.publish(&gas(&cell_b, "gas-cb", 0.6));
    assert!(
        eventually(WAIT, || !a.incidents_in(&cell_a).is_empty()
            && !b.incidents_in(&cell_b).is_empty()),
        "a {:?}, b {:?}",
        a.delivered(),
        b.delivered()
    );
    let id_a = a.incidents_in(&cell_a)[0].0.clone();
    let id_b = b.incidents_in(&cell_b)[0].0.clone();
    let status = |n: u32, incident: &str| {
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": format!("case-{n}"),
            "source": "case-system",
            "type": "skynet.case_status.v1",
            "data": {
                "incident": incident,
                "status": "acknowledged",
                "at": chrono::Utc::now(),
            }
        });
        bus.publish_raw(
            &format!("skynet.cases.{incident}"),
            serde_json::to_vec(&event).unwrap(),
        )
    };
    status(1, &id_b);
    let last = status(2, &id_a);
    let acknowledged = |scorer: &Scorer, id: &str| {
        scorer
            .delivered_with_category()
            .iter()
            .any(|(i, _, r, _)| i == id && *r > 1)
    };
    assert!(
        eventually(WAIT, || acknowledged(&a, &id_a) && acknowledged(&b, &id_b)),
        "each owner applies its incident's status: a {:?}, b {:?}",
        a.delivered(),
        b.delivered()
    );
    // Each applied only its own, and refused (dead-lettered) neither of the others.
    assert!(!acknowledged(&a, &id_b) && !acknowledged(&b, &id_a));
    let refused = |dir: &Path| {
        skynet_emit::Outbox::open(&dir.join("outbox.sqlite"))
            .unwrap()
            .dead_letters(Some(skynet_emit::CASES_DEAD_LETTER_SINK))
            .unwrap()
    };
    // Every scorer has a consumer of its own, and has answered both events (the other's
    // deferred while its cell might still move here, then acknowledged and ignored once
    // older than three times failover_s).
    let answered = |node: &str| {
        bus.runtime.block_on(async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = bus
                .js
                .get_stream("SKYNET_CASES")
                .await
                .ok()?
                .get_consumer(&format!("skynet-{node}"))
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            Some(info.ack_floor.stream_sequence)
        })
    };
    assert!(
        eventually(WAIT, || answered(&name_a) >= Some(last)
            && answered(&name_b) >= Some(last)),
        "both consumers answered both events: a {:?}, b {:?}",
        answered(&name_a),
        answered(&name_b)
    );
    a.stop();
    b.stop();
    for dir in [dir_a, dir_b] {
        let letters = refused(&dir);
        assert!(letters.is_empty(), "{}: {letters:?}", dir.display());
    }
}

#[test]
fn a_status_event_for_a_cell_whose_owner_just_died_is_applied_by_its_successor() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    let (name_a, name_b, _, cell_b) = split_of("-d", &["G-0101", "G-0301"]);
    let dir_a = tmp.path().join("a");
    let a = Scorer::start_text(&dir_a, &cases_text(&dir_a, &name_a, &bus.url));
    // b: a `skynet run --role scorer` process, killed with SIGKILL.
    let dir_b = tmp.path().join("b");
    let (mut b, log_b, b_delivered) =
        spawn_scorer_b(&dir_b, &cases_text(&dir_b, &name_b, &bus.url), &name_a, 4.0);
    let seq_b = bus.publish(&gas(&cell_b, "gas-db", 0.6));
    assert!(
        eventually(WAIT, || !b_delivered.incidents_in(&cell_b).is_empty()),
        "b emits {cell_b}'s incident; b's log: {}",
        log_b.lock().unwrap()
    );
    let id_b = b_delivered.incidents_in(&cell_b)[0].0.clone();
    assert!(
        eventually(WAIT, || bus.saved_at(&cell_b, seq_b, &id_b)),
        "{cell_b} saved at {seq_b}: {:?}",
        bus.saved_cell(&cell_b)
    );
    let deferred = || {
        common::metric(
            &metrics(),
            "skynet_case_status_not_owned_total{outcome=\"deferred\"}",
        )
    };
    let deferred_before = deferred();
    b.kill().unwrap();
    b.wait().unwrap();
    // At once, while b's heartbeat has not lapsed yet (two thirds of failover_s) and the
    // cell is nobody's: an operator acknowledges b's incident. a does not hold it yet.
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": "case-died-1",
        "source": "case-system",
        "type": "skynet.case_status.v1",
        "data": {
            "incident": id_b,
            "status": "acknowledged",
            "at": chrono::Utc::now(),
        }
    });
    bus.publish_raw(
        &format!("skynet.cases.{id_b}"),
        serde_json::to_vec(&event).unwrap(),
    );
    // a takes the cell, and the deferred event comes again: a applies it.
    let acknowledged_by_a = || {
        std::fs::read_to_string(dir_a.join("incidents.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                e["data"]["id"].as_str() == Some(id_b.as_str())
                    && e["data"]["state"] == "acknowledged"
            })
    };
    assert!(
        eventually(WAIT, acknowledged_by_a),
        "a applies the acknowledgement of {id_b} once {cell_b} is its own: {:?}",
        a.delivered()
    );
    assert!(
        deferred() > deferred_before,
        "a deferred the event while {cell_b} was not its own yet"
    );
    a.stop();
    let letters = skynet_emit::Outbox::open(&dir_a.join("outbox.sqlite"))
        .unwrap()
        .dead_letters(Some(skynet_emit::CASES_DEAD_LETTER_SINK))
        .unwrap();
    assert!(letters.is_empty(), "nothing refused: {letters:?}");
}

/// A CO sensor `gas-t` in `grid` whose rule needs 50 ppm or more for 10 s (its time: the
/// readings' own), as the scorers' config has it (nothing connects to the MQTT broker).
fn co_sensor(grid: &str) -> String {
    format!(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:9"
client_id = "scorer-sensors"
  [[mqtt.topics]]
  pattern = "skynet/sensors/+"
  format = "senml"

[[sensors]]
id = "gas-t"
kind = "gas_co"
grid = "{grid}"
owner = "safety_production"

  [[sensors.rules]]
  name = "co-leak"
  kind = "threshold"
  above = 50.0
  clear = 35.0
  for_s = 10
  category = "gas_leak"
  weight = 0.6
"#
    )
}

#[test]
fn a_sensor_rules_streak_begun_at_a_killed_scorer_goes_on_at_its_successor() {
    let tmp = tempfile::tempdir().unwrap();
    let bus = Bus::start(tmp.path());
    let (name_a, name_b, _, cell_b) = split("-s");
    let sensors = co_sensor(&cell_b);
    let a = Scorer::start_with(&tmp.path().join("a"), &name_a, &bus.url, &sensors);
    // b: a `skynet run --role scorer` process owning the sensor's cell, killed with SIGKILL.
    let dir_b = tmp.path().join("b");
    let (mut b, log_b, b_delivered) = spawn_scorer_b(
        &dir_b,
        &config_with(&dir_b, &name_b, &bus.url, &sensors),
        &name_a,
        3.0,
    );
    // 60 ppm for 4 s of the rule's 10, at b.
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(30);
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    bus.publish_reading(&cell_b, "gas-t", 60.0, at(0));
    let seq = bus.publish_reading(&cell_b, "gas-t", 60.0, at(4));
    // b saves the cell with the streak's memory, and its readings as applied up to there
    // (so a successor does not replay them: only the memory can tell it when it began).
    let streak_saved = || {
        bus.saved_cell(&cell_b).is_some_and(|cell| {
            cell["readings"].as_u64().is_some_and(|s| s >= seq)
                && cell["sensors"]["gas-t"]["co-leak"]["condition"]["pending_since"].is_string()
        })
    };
    assert!(
        eventually(WAIT, streak_saved),
        "{cell_b} saved with gas-t's streak and readings up to {seq}: {:?}; b's log: {}",
        bus.saved_cell(&cell_b),
        log_b.lock().unwrap()
    );
    assert!(
        b_delivered.of_category("gas_leak").is_empty(),
        "no leak yet: {:?}",
        b_delivered.delivered()
    );
    b.kill().unwrap();
    b.wait().unwrap();
    // 8 s more at a: a leak only when b's 4 s count (a streak of its own would be 4 s).
    bus.publish_reading(&cell_b, "gas-t", 60.0, at(8));
    let last = bus.publish_reading(&cell_b, "gas-t", 60.0, at(12));
    assert!(
        eventually(WAIT, || a
            .of_category("gas_leak")
            .iter()
            .any(|(_, grid)| *grid == cell_b)),
        "a fires gas-t's leak in {cell_b} counting b's part of the streak: {:?}",
        a.delivered()
    );
    // a's own save of the cell covers its readings too, the alarm in the memory.
    assert!(
        eventually(WAIT, || bus.saved_cell(&cell_b).is_some_and(|cell| {
            cell["readings"].as_u64().is_some_and(|s| s >= last)
                && cell["sensors"]["gas-t"]["co-leak"]["condition"]["active"] == true
        })),
        "{cell_b} saved by a: {:?}",
        bus.saved_cell(&cell_b)
    );
    a.stop();
}
