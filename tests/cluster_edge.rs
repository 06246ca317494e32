//! The edge role's cameras (issue 23), in process: two edges (`pipeline::run` with
//! `Role::Edge`) on one config and a private nats-server. Each camera runs on exactly one
//! edge, the one holding its lease; its observations arrive on `skynet.observations.<grid>`
//! in SKYNET_OBSERVATIONS, each with a `Nats-Msg-Id` made from its content and none lost;
//! when an edge stops, the other takes its cameras.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream;
use sha2::{Digest, Sha256};
use skynet::{PipelineError, RunOptions, RunSummary, Services, pipeline};
use skynet_cluster::Role;
use skynet_core::{BBox, ComponentState, Detection, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};

const EDGES: [&str; 2] = ["edge-a", "edge-b"];
/// The cameras' cells, one each (so each camera has a subject of its own).
const GRIDS: [&str; 2] = ["G-0102", "G-0101"];

/// Two cameras, the first owned by edge-a and the second by edge-b when both are live
/// (rendezvous hashing of their lease keys), so each edge runs one.
fn cameras() -> Vec<(String, &'static str)> {
    let members: Vec<String> = EDGES.iter().map(|e| e.to_string()).collect();
    EDGES
        .iter()
        .zip(GRIDS)
        .map(|(edge, grid)| {
            let id = (1..100)
                .map(|n| format!("cam-edge-{n}"))
                .find(|id| {
                    skynet_cluster::owner(&skynet_cluster::Leases::camera_key(id), &members)
                        == Some(*edge)
                })
                .expect("a camera name for each edge");
            (id, grid)
        })
        .collect()
}

/// The edge owning `camera` among the live `edges`.
fn owner_among(camera: &str, edges: &[&Edge]) -> String {
    let members: Vec<String> = edges.iter().map(|e| e.name.clone()).collect();
    skynet_cluster::owner(&skynet_cluster::Leases::camera_key(camera), &members)
        .unwrap()
        .to_string()
}

/// A person walking along the walkway: a box that moves every frame (a standing one is
/// reported once only), so the zone rule keeps making observations.
struct Walker(u32);

impl Detector for Walker {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        self.0 = (self.0 + 1) % 16;
        let x = 0.42 + 0.01 * self.0 as f32;
        let (w, h) = (image.width as f32, image.height as f32);
        Ok(vec![Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(x * w, 0.3 * h, (x + 0.06) * w, 0.47 * h),
            track: None,
        }])
    }
}

/// The config of edge `node`: both cameras (vtest.avi paced and looped, as live cameras),
/// its own outbox in `dir`, the cluster on `url` with `failover_s`.
fn config(dir: &Path, node: &str, url: &str, failover_s: u32) -> skynet::PipelineConfig {
    let cameras = cameras();
    let (first, grid) = (cameras[0].0.as_str(), cameras[0].1);
    let base = common::vtest_config(dir, first, common::WALKWAY, 1)
        .replace("name = \"test-node\"", &format!("name = \"{node}\""))
        // Offline after 3 s without frames: a camera this edge does not run must never be.
        .replace(
            "max_frames = 1",
            "realtime = true\nloop = true\noffline_after_s = 3",
        )
        .replace("grid = \"G-0102\"", &format!("grid = \"{grid}\""))
        .replace("cooldown_s = 2.0", "cooldown_s = 1.0");
    let camera = &base[base.find("[[cameras]]").unwrap()..];
    let mut text = base.clone();
    for (id, other) in &cameras[1..] {
        text.push_str(&camera.replace(first, id).replace(
            &format!("grid = \"{grid}\""),
            &format!("grid = \"{other}\""),
        ));
    }
    text.push_str(&format!(
        "\n[cluster]\nurl = \"{url}\"\nfailover_s = {failover_s}\n"
    ));
    common::pipeline_config(dir, &text)
}

/// The tests read the process's metrics (one recorder for all): one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Edge {
    name: String,
    services: Arc<Services>,
    shutdown: Shutdown,
    thread: std::sync::Mutex<Option<JoinHandle<Result<RunSummary, PipelineError>>>>,
}

impl Edge {
    fn start(root: &Path, name: &str, url: &str, failover_s: u32) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = config(&dir, name, url, failover_s);
        let services = Arc::new(Services::start(None).unwrap());
        let shutdown = Shutdown::new();
        let options = RunOptions {
            shutdown: shutdown.clone(),
            services: Some(Arc::clone(&services)),
            detectors: Some(vec![Box::new(Walker(0)) as Box<dyn Detector>]),
            wait_for_shutdown: true,
            role: Role::Edge,
            reload: None,
        };
        let thread = std::thread::spawn(move || pipeline::run(&config, options));
        Self {
            name: name.to_string(),
            services,
            shutdown,
            thread: std::sync::Mutex::new(Some(thread)),
        }
    }

    /// Whether frames of `camera` flow here now.
    fn runs(&self, camera: &str) -> bool {
        let mut thread = self.thread.lock().unwrap();
        if thread.as_ref().is_some_and(|t| t.is_finished()) {
            let ended = thread.take().unwrap().join();
            panic!("edge {} ended by itself: {ended:?}", self.name);
        }
        drop(thread);
        self.services
            .health
            .state(camera, "source")
            .is_some_and(|s| s.state == ComponentState::Up)
    }

    /// The value of a metric line starting with `prefix` (this process's recorder).
    fn metric(&self, prefix: &str) -> f64 {
        common::metric(&self.services.metrics.render(), prefix)
    }

    fn stop(&mut self) -> RunSummary {
        self.shutdown.trigger();
        let summary = self
            .thread
            .lock()
            .unwrap()
            .take()
            .unwrap()
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("edge {} failed: {e}", self.name));
        self.services.stop();
        summary
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// What the bus shows: the node holding each camera's lease, and the last observation of
/// each camera's cell (stream sequence, the camera it names).
struct Bus {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
}

impl Bus {
    fn new(url: &str) -> Self {
        let rt = common::tokio_runtime();
        let js = rt.block_on(async { jetstream::new(async_nats::connect(url).await.unwrap()) });
        Self { rt, js }
    }

    fn holder(&self, camera: &str) -> Option<String> {
        self.rt.block_on(async {
            let kv = self.js.get_key_value("skynet_leases").await.ok()?;
            let value = kv.get(format!("camera.{camera}")).await.ok()??;
            let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
            v["node"].as_str().map(str::to_string)
        })
    }

    /// The last observation on `grid`'s subject: its sequence, after checking its
    /// `Nats-Msg-Id` is its content's and it names `camera`.
    fn last_observation(&self, grid: &str, camera: &str) -> Option<u64> {
        self.rt.block_on(async {
            let stream = self.js.get_stream("SKYNET_OBSERVATIONS").await.ok()?;
            let message = stream
                .get_last_raw_message_by_subject(&format!("skynet.observations.{grid}"))
                .await
                .ok()?;
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(body["source"]["id"], camera, "{body}");
            assert_eq!(body["grid"], grid, "{body}");
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .expect("a Nats-Msg-Id")
                .to_string();
            let digest = Sha256::digest(&message.payload);
            let want: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(id, want, "the id is made from the content");
            Some(message.sequence)
        })
    }

    /// The event time of the last observation on `grid`'s subject.
    fn last_time(&self, grid: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.rt.block_on(async {
            let stream = self.js.get_stream("SKYNET_OBSERVATIONS").await.ok()?;
            let message = stream
                .get_last_raw_message_by_subject(&format!("skynet.observations.{grid}"))
                .await
                .ok()?;
            let body: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
            body["at"].as_str()?.parse().ok()
        })
    }

    /// Every observation in the stream.
    fn observations(&self) -> Vec<serde_json::Value> {
        self.rt.block_on(async {
            common::read_stream_in(&self.js, "SKYNET_OBSERVATIONS", Duration::from_secs(10))
                .await
                .into_iter()
                .map(|(_, _, _, body)| body)
                .collect()
        })
    }

    /// Every observation in the stream that is evidence (not a camera fault or recovery).
    fn evidence(&self) -> Vec<serde_json::Value> {
        self.observations()
            .into_iter()
            .filter(|b| b["evidence"]["fault"].is_null())
            .collect()
    }
}

/// Which edge runs each camera, once each runs on exactly one of the live `edges`: its
/// owner among them, holding its lease; with its last observation's stream sequence.
fn settled(edges: &[&Edge], bus: &Bus) -> Option<Vec<(String, u64)>> {
    let mut placed = Vec::new();
    for (camera, grid) in cameras() {
        let running: Vec<&&Edge> = edges.iter().filter(|e| e.runs(&camera)).collect();
        let [edge] = running.as_slice() else {
            return None;
        };
        if edge.name != owner_among(&camera, edges)
            || bus.holder(&camera).as_deref() != Some(edge.name.as_str())
        {
            return None;
        }
        placed.push((edge.name.clone(), bus.last_observation(grid, &camera)?));
    }
    Some(placed)
}

#[test]
fn each_camera_runs_on_one_edge_publishes_its_observations_and_moves_when_its_edge_stops() {
    let root = tempfile::tempdir().unwrap();
    let nats = common::PrivateNats::start(&root.path().join("nats"));
    let url = nats.url();
    let bus = Bus::new(&url);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = chrono::Utc::now();
    let mut a = Edge::start(root.path(), EDGES[0], &url, 3);
    let mut b = Edge::start(root.path(), EDGES[1], &url, 3);

    let mut placed = None;
    assert!(
        common::eventually(Duration::from_secs(40), || {
            placed = settled(&[&a, &b], &bus);
            placed.is_some()
        }),
        "each camera runs on exactly one edge holding its lease, and its observations arrive"
    );
    let placed = placed.unwrap();
    // Both have run longer than `offline_after_s` (the files are paced: their event time is
    // the wall clock's), so a camera an edge watched without running it would be offline.
    assert!(
        common::eventually(Duration::from_secs(30), || GRIDS.iter().all(|grid| bus
            .last_time(grid)
            .is_some_and(|t| t > started + chrono::Duration::seconds(5)))),
        "the cameras run on"
    );
    assert_eq!(
        placed
            .iter()
            .map(|(edge, _)| edge.as_str())
            .collect::<Vec<_>>(),
        EDGES,
        "each edge runs its share"
    );

    // edge-a stops (releasing its leases): edge-b takes its camera too, and the
    // observations of both go on.
    let (leaving, stays) = (&mut a, &mut b);
    let left = leaving.stop();
    assert!(left.observations > 0, "{left:?}");
    assert!(
        common::eventually(Duration::from_secs(30), || {
            settled(&[&*stays], &bus).is_some_and(|now| {
                now.iter()
                    .zip(&placed)
                    .all(|((node, seq), (_, before))| *node == stays.name && seq > before)
            })
        }),
        "{} runs every camera once {} has stopped",
        stays.name,
        leaving.name
    );
    let stayed = stays.stop();

    // No camera was offline: each edge watched only the cameras it ran.
    let offline: Vec<_> = bus
        .observations()
        .into_iter()
        .filter(|b| b["evidence"]["fault"]["state"] == "offline")
        .collect();
    assert!(offline.is_empty(), "{offline:#?}");
    // Nothing lost: every observation the edges' rules made is in the stream once.
    let evidence = bus.evidence();
    assert_eq!(
        evidence.len() as u64,
        left.observations + stayed.observations,
        "{left:?} {stayed:?}"
    );
}

#[test]
fn observations_made_while_the_stream_is_down_are_published_once_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let mut nats = common::PrivateNats::start(&root.path().join("nats"));
    let url = nats.url();
    let bus = Bus::new(&url);
    // A long failover: the cameras stay claimed through a short outage.
    let mut edge = Edge::start(root.path(), EDGES[0], &url, 20);
    let cameras = cameras();
    let (camera, grid) = (&cameras[0].0, cameras[0].1);
    assert!(
        common::eventually(Duration::from_secs(40), || edge.runs(camera)
            && bus.last_observation(grid, camera).is_some()),
        "the edge runs its camera and publishes"
    );
    let depth = "skynet_bus_publish_queue_depth{kind=\"observation\"}";
    let retries = "skynet_bus_publish_retries_total{kind=\"observation\"}";
    let retried_before = edge.metric(retries);

    nats.stop();
    // The rules go on: what they make waits, unacknowledged, and is retried.
    assert!(
        common::eventually(Duration::from_secs(30), || edge.metric(depth) > 0.0
            && edge.metric(retries) > retried_before),
        "observations wait for the stream, retried"
    );
    nats.resume();
    assert!(
        common::eventually(Duration::from_secs(40), || edge.metric(depth) == 0.0),
        "everything that waited is published once the stream is back"
    );
    let stopped = edge.stop();

    // Each observation is in the stream exactly once: none lost, none stored twice.
    let evidence = bus.evidence();
    assert_eq!(evidence.len() as u64, stopped.observations, "{stopped:?}");
    let ids: std::collections::BTreeSet<String> = evidence.iter().map(|b| b.to_string()).collect();
    assert_eq!(ids.len(), evidence.len(), "no observation twice");

    // Restarted on its state (the camera clocks its commits saved, an empty engine part): it
    // goes on publishing.
    let before = bus.last_observation(grid, camera).unwrap();
    let mut again = Edge::start(root.path(), EDGES[0], &url, 20);
    assert!(
        common::eventually(Duration::from_secs(40), || again.runs(camera)
            && bus
                .last_observation(grid, camera)
                .is_some_and(|seq| seq > before)),
        "the restarted edge runs its camera and publishes"
    );
    again.stop();
}
