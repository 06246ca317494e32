//! A city of many processes (issue 23): `skynet run --role edge|scorer` processes on a
//! private nats-server (JetStream) on a spare port, each figure against a baseline measured
//! in the same run.
//!
//! - `throughput`: observations/s through the bus with 1, 2 and 4 scorer processes, as a
//!   ratio of 1 scorer. The scorers run and share the cells first, then are paused
//!   (SIGSTOP) while the bench publishes low-weight observations (they open no incident)
//!   round-robin over every cell straight into SKYNET_OBSERVATIONS, as fast as JetStream's
//!   acks allow (1,024 in flight), and then one gas leak per scorer in a cell it owns (a
//!   marker); then they go on (SIGCONT). Paused, because a scorer running beside the
//!   publisher keeps up with it, and the figure would be the publisher's. A scorer reads
//!   the stream in order with one consumer, so once its marker's incident is in its JSONL
//!   sink it has applied everything before it: the time is from SIGCONT to the last
//!   marker's incident. Each scorer reads the whole stream (NATS 2.9: one filter subject
//!   per consumer) and applies its own cells and their neighbours, so scaling is sublinear
//!   by design; the scorers' CPU per 1,000 observations is printed beside it, and the
//!   sum of the scorers' `skynet_bus_applied_total{kind="observation"}` (each applies its
//!   own cells' observations) against what was published, as a check.
//! - `cost`: an edge (`--role edge`) against a single node (`--role all`) running the same
//!   file cameras (vtest.avi, paced as live cameras, looped, 5 frames/s analysed, the real
//!   YOLOX-Nano, one zone rule each): the process's CPU seconds per camera-second (user +
//!   system, /proc) over a window after the cameras run, and its resident memory.
//! - `failover`: two edges sharing one camera, and two scorers sharing the cells, with
//!   `[cluster] failover_s` small (default 3): SIGKILL of the edge holding the camera's
//!   lease until the other holds it; SIGKILL of a scorer, then a gas leak published in a
//!   cell it owned, until the other scorer's sink has that cell's incident. A fresh process
//!   takes the killed one's place before the next kill. p50 and max over the kills, against
//!   failover_s.
//! - `latency`: a gas sensor reading above its threshold published on MQTT (a private
//!   Mosquitto) until its `gas_leak` incident arrives on `skynet.incidents.>` (the NATS
//!   sink, a core subscription), one reading at a time in a fresh cell each: through an
//!   edge (MQTT, validation, publish on the bus) and a scorer (sensor rules, risk, commit,
//!   sink), against one `--role all` process doing the same. p50/p99/max, and the p99 ratio.
//!   Then, with the same scorer, a gas observation published on the bus by the bench itself
//!   (what an edge's publisher sends) until its incident arrives, in other fresh cells.
//!
//! `cargo bench -p skynet-tests --bench cluster` (release; it runs target/release/skynet,
//! built with `cargo build --release -p skynet` first, or `SKYNET_BIN`). A word picks parts
//! (`cargo bench -p skynet-tests --bench cluster -- failover latency`). Sizes:
//! `SKYNET_BENCH_OBSERVATIONS` (default 300000), `SKYNET_BENCH_SCORERS` (default `1,2,4`),
//! `SKYNET_BENCH_GRID` (cells on a side of the square grid, default 16: 256 cells),
//! `SKYNET_BENCH_CAMERAS` (default 4), `SKYNET_BENCH_CPU_SECONDS` (default 20),
//! `SKYNET_BENCH_KILLS` (default 10), `SKYNET_BENCH_FAILOVER_S` (default 3),
//! `SKYNET_BENCH_SAMPLES` (readings, and bus observations, for the latency: default 120 each).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{PrivateNats, free_port, http_get, repo, spawn_logged};
use futures_util::StreamExt;
use skynet_cluster::ClusterConfig;
use skynet_core::{DeviceId, GridId, Observation, SourceRef};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn esc(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// Polls `check` every few milliseconds (timing figures need a finer step than the tests'
/// `eventually`) until it holds or `within` has passed.
fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// A square grid of `side` x `side` cells (GeoJSON, adjacent squares: each cell has up to 8
/// neighbours, as in a real city), written in `dir`.
fn write_grid(dir: &Path, side: usize) -> (PathBuf, Vec<String>) {
    let (mut features, mut ids) = (Vec::new(), Vec::new());
    let size = 0.002;
    for r in 0..side {
        for c in 0..side {
            let id = format!("B-{r:02}{c:02}");
            let (x, y) = (114.0 + c as f64 * size, 22.5 + r as f64 * size);
            features.push(serde_json::json!({
                "type": "Feature",
                "properties": {"id": id, "name": format!("bench cell {r},{c}"),
                               "kind": "commercial", "department": "bench-office"},
                "geometry": {"type": "Polygon", "coordinates": [[
                    [x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]},
            }));
            ids.push(id);
        }
    }
    let path = dir.join("bench-grids.geojson");
    std::fs::write(
        &path,
        serde_json::json!({"type": "FeatureCollection", "features": features}).to_string(),
    )
    .unwrap();
    (path, ids)
}

/// One config for a process: `cluster` is (url, failover_s), none for a single node.
fn config_text(
    dir: &Path,
    node: &str,
    metrics: SocketAddr,
    cluster: Option<(&str, usize)>,
    grids: &Path,
    extra: &str,
) -> String {
    let cluster = cluster
        .map(|(url, failover)| {
            format!("[cluster]\nurl = \"{url}\"\nname = \"city\"\nfailover_s = {failover}\n")
        })
        .unwrap_or_default();
    format!(
        r#"
[node]
name = "{node}"

{cluster}
[metrics]
listen = "{metrics}"

[grids]
file = "{grids}"

[detect]
model = "{model}"
workers = 1
intra_threads = 1

[risk]
half_life_s = 600
close_after_s = 600

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/incidents.jsonl"
{extra}
"#,
        grids = esc(grids),
        model = esc(&repo().join("models/yolox_nano.toml")),
        dir = esc(dir),
    )
}

/// A camera that a scorer never runs (the config's cameras are the edges').
fn no_camera(grid: &str) -> String {
    format!(
        "\n[[cameras]]\nid = \"cam-elsewhere\"\nowner = \"police\"\nuri = \"rtsp://127.0.0.1:9/cam\"\ngrid = \"{grid}\"\n"
    )
}

/// vtest.avi paced as a live camera and looped, with a zone rule on the walkway.
fn file_camera(id: &str, grid: &str, fps: u32) -> String {
    format!(
        r#"
[[cameras]]
id = "{id}"
owner = "city_management"
uri = "{media}"
grid = "{grid}"
realtime = true
loop = true
fps = {fps}

  [[cameras.zones]]
  name = "walkway"
  polygon = {zone}

  [[cameras.rules]]
  name = "walkway-rule"
  kind = "zone_intrusion"
  zone = "walkway"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0
"#,
        media = esc(&common::media("vtest.avi")),
        zone = common::WALKWAY,
    )
}

/// One `skynet run --role ROLE` process.
struct Node {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    metrics: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn start(
        role: &str,
        name: &str,
        root: &Path,
        text: impl FnOnce(&Path, SocketAddr) -> String,
    ) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = free_port();
        let config = dir.join("skynet.toml");
        std::fs::write(&config, text(&dir, metrics)).unwrap();
        let (child, log) = spawn_logged(&config, &["--role", role]);
        Self {
            name: name.to_string(),
            child,
            log,
            metrics,
            dir,
        }
    }

    /// Panics with its log when it has ended by itself.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} ended by itself ({status}); its log:\n{}",
                self.name,
                self.log.lock().unwrap()
            );
        }
    }

    fn metric(&mut self, prefix: &str) -> f64 {
        self.check_alive();
        common::metric(
            &http_get(self.metrics, "/metrics").unwrap_or_default(),
            prefix,
        )
    }

    /// User + system CPU seconds of the process so far (/proc/<pid>/stat).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command's closing parenthesis start at field 3 (state).
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }

    /// Resident memory now and at its peak, MiB (/proc/<pid>/status).
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to a child of ours, by its id (not reaped while it is held).
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "signal {signal} to {}", self.name);
    }

    /// SIGKILL, as a crash; returns when the signal was sent.
    fn kill_9(&mut self) -> Instant {
        self.child.kill().unwrap();
        let at = Instant::now();
        let _ = self.child.wait();
        at
    }

    /// The incidents its JSONL sink delivered: (grid, category).
    fn incidents(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir.join("incidents.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"].as_str().is_some_and(|t| t.contains("incident")))
            .map(|e| {
                (
                    e["data"]["grid"].as_str().unwrap_or_default().to_string(),
                    e["data"]["category"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn has_incident_in(&self, grid: &str) -> bool {
        self.incidents().iter().any(|(g, _)| g == grid)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("==== {}\n{}", n.name, n.log()))
        .collect()
}

/// A private nats-server with SKYNET_OBSERVATIONS made, and the bench's JetStream context.
struct Bus {
    _dir: tempfile::TempDir,
    nats: PrivateNats,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Bus {
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = PrivateNats::start(&dir.path().join("nats"));
        let cluster = ClusterConfig::for_url(nats.url());
        let mut client = None;
        // Listening; on a loaded machine its first connection may still be refused.
        assert!(
            wait_until(Duration::from_secs(30), || {
                client = rt.block_on(skynet_cluster::connect(&cluster)).ok();
                client.is_some()
            }),
            "the private nats-server takes connections"
        );
        let client = client.unwrap();
        rt.block_on(skynet_cluster::bus::observation_stream(&client, &cluster))
            .unwrap();
        let js = {
            let _in = rt.enter();
            jetstream::new(client.clone())
        };
        Self {
            _dir: dir,
            nats,
            client,
            js,
        }
    }

    fn url(&self) -> String {
        self.nats.url()
    }

    /// The node holding `camera`'s lease.
    fn holder(&self, rt: &tokio::runtime::Runtime, camera: &str) -> Option<String> {
        rt.block_on(async {
            let kv = self.js.get_key_value("skynet_leases").await.ok()?;
            let value = kv.get(format!("camera.{camera}")).await.ok()??;
            let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
            v["node"].as_str().map(str::to_string)
        })
    }

    /// Publishes every body, `window` in flight, every ack awaited.
    fn publish_all(&self, rt: &tokio::runtime::Runtime, bodies: &[(String, Vec<u8>)]) {
        rt.block_on(async {
            for chunk in bodies.chunks(1024) {
                let mut acks = Vec::with_capacity(chunk.len());
                for (subject, body) in chunk {
                    acks.push(
                        self.js
                            .publish(subject.clone(), body.clone().into())
                            .await
                            .unwrap(),
                    );
                }
                for ack in acks {
                    ack.await.unwrap();
                }
            }
        });
    }
}

fn observation(
    grid: &str,
    source: SourceRef,
    category: &str,
    weight: f32,
    at: chrono::DateTime<chrono::Utc>,
) -> (String, Vec<u8>) {
    let o = Observation {
        at,
        source,
        grid: GridId::new(grid),
        category: category.into(),
        weight,
        confidence: 0.9,
        evidence: Default::default(),
    };
    (
        skynet_cluster::bus::observation_subject(grid),
        serde_json::to_vec(&o).unwrap(),
    )
}

fn gas(grid: &str, sensor: &str) -> (String, Vec<u8>) {
    observation(
        grid,
        SourceRef::sensor(&DeviceId::new(sensor)),
        "gas_leak",
        0.9,
        chrono::Utc::now(),
    )
}

/// Each scorer's expected share of `cells` among `names` (rendezvous).
fn shares(cells: &[String], names: &[String]) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for cell in cells {
        if let Some(owner) = skynet_cluster::owner(cell, names) {
            *counts.get_mut(owner).unwrap() += 1;
        }
    }
    counts
}

/// Every scorer sees the others and owns its share of the cells.
fn scorers_settled(nodes: &mut [Node], cells: &[String]) -> bool {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let want = shares(cells, &names);
    nodes.iter_mut().all(|n| {
        let prefix = format!(
            "skynet_cluster_assignments{{node=\"{}\",role=\"scorer\"}}",
            n.name
        );
        n.metric(&prefix) as usize == want[&n.name]
    })
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    root: tempfile::TempDir,
    grids: PathBuf,
    cells: Vec<String>,
}

fn throughput(ctx: &Ctx) {
    let n = env_usize("SKYNET_BENCH_OBSERVATIONS", 300_000);
    let counts: Vec<usize> = std::env::var("SKYNET_BENCH_SCORERS")
        .unwrap_or_else(|_| "1,2,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "throughput: {n} observations over {} cells (+1 marker per scorer), 1,024 publishes in flight",
        ctx.cells.len()
    );
    let mut base = None;
    for (run, k) in counts.into_iter().enumerate() {
        let bus = Bus::start(&ctx.rt);
        let url = bus.url();
        let names: Vec<String> = (0..k).map(|i| format!("scorer-r{run}-{i}")).collect();
        let root = ctx.root.path().join(format!("throughput-{run}"));
        // failover_s 60: paused while the stream fills and loaded after, no scorer may take
        // another for gone (heartbeats every 20 s, gone after 40 s without one).
        let mut nodes: Vec<Node> = names
            .iter()
            .map(|name| {
                Node::start("scorer", name, &root, |dir, metrics| {
                    config_text(
                        dir,
                        name,
                        metrics,
                        Some((&url, 60)),
                        &ctx.grids,
                        &no_camera(&ctx.cells[0]),
                    )
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(120), || scorers_settled(
                &mut nodes, &ctx.cells
            )),
            "the {k} scorers share the cells; logs:\n{}",
            logs(&nodes)
        );
        let start = chrono::Utc::now();
        let bodies: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let cell = &ctx.cells[i % ctx.cells.len()];
                observation(
                    cell,
                    SourceRef::camera(&DeviceId::new(format!("cam-{cell}"))),
                    "person_present",
                    0.05,
                    start + chrono::Duration::microseconds(i as i64),
                )
            })
            .collect();
        let markers: Vec<(String, String)> = names
            .iter()
            .map(|name| {
                let cell = ctx
                    .cells
                    .iter()
                    .find(|c| skynet_cluster::owner(c, &names) == Some(name.as_str()))
                    .expect("each scorer owns a cell");
                (name.clone(), cell.clone())
            })
            .collect();
        let marker_bodies: Vec<(String, Vec<u8>)> = markers
            .iter()
            .map(|(name, cell)| gas(cell, &format!("marker-{name}")))
            .collect();
        // The scorers paused while the stream fills, so the figure is theirs, not the
        // publisher's (a scorer running beside the publisher keeps up with it here).
        for node in &nodes {
            node.signal(libc::SIGSTOP);
        }
        let p0 = Instant::now();
        bus.publish_all(&ctx.rt, &bodies);
        let published = p0.elapsed();
        bus.publish_all(&ctx.rt, &marker_bodies);
        let cpu0: f64 = nodes.iter().map(Node::cpu_seconds).sum();
        let t0 = Instant::now();
        for node in &nodes {
            node.signal(libc::SIGCONT);
        }
        let done = wait_until(Duration::from_secs(600), || {
            nodes
                .iter()
                .zip(&markers)
                .all(|(node, (_, cell))| node.has_incident_in(cell))
        });
        let elapsed = t0.elapsed();
        let cpu: f64 = nodes.iter().map(Node::cpu_seconds).sum::<f64>() - cpu0;
        assert!(
            done,
            "every scorer applied its marker; logs:\n{}",
            logs(&nodes)
        );
        for node in &mut nodes {
            node.check_alive();
        }
        let others: usize = nodes
            .iter()
            .map(|node| {
                node.incidents()
                    .iter()
                    .filter(|(_, c)| c != "gas_leak")
                    .count()
            })
            .sum();
        // What the scorers applied of their own cells (each message once: no handover).
        let applied: f64 = nodes
            .iter_mut()
            .map(|node| node.metric("skynet_bus_applied_total{kind=\"observation\"}"))
            .sum();
        // Observations the engines refused (too late for their clocks, say): none expected.
        let refused: f64 = nodes
            .iter_mut()
            .map(|node| node.metric("skynet_observations_rejected_total"))
            .sum();
        let total = (n + k) as f64;
        let rate = total / elapsed.as_secs_f64();
        let base_rate = *base.get_or_insert(rate);
        println!(
            "  {k} scorer(s): {rate:.0} observations/s applied in {:.2} s; ratio to 1 scorer {:.2} (linear: {k}); scorers' CPU {:.3} s per 1,000 observations; publisher alone {:.0}/s; other incidents {others}; refused {refused}; applied {applied} of {total}",
            elapsed.as_secs_f64(),
            rate / base_rate,
            cpu / total * 1000.0,
            n as f64 / published.as_secs_f64(),
        );
        if std::env::var_os("SKYNET_BENCH_LOGS").is_some() {
            println!("{}", logs(&nodes));
        } else if elapsed > Duration::from_secs(20) {
            // An outlier: what the scorers said about it (warnings, consumers restarted).
            for line in logs(&nodes).lines().filter(|l| {
                l.starts_with("====")
                    || l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("observation stream")
            }) {
                println!("    {line}");
            }
        }
        drop(nodes);
        drop(bus);
    }
}

/// CPU seconds per camera-second, resident memory (MiB, now and peak) and analysed
/// frames/s per camera of `node` over `seconds`, once every camera has analysed frames.
fn camera_cost(node: &mut Node, cameras: &[String], seconds: u64) -> (f64, f64, f64, f64) {
    let analysed = |node: &mut Node| -> f64 {
        cameras
            .iter()
            .map(|c| node.metric(&format!("skynet_frames_analysed_total{{camera=\"{c}\"}}")))
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(180), || cameras.iter().all(|c| node
            .metric(&format!(
                "skynet_frames_analysed_total{{camera=\"{c}\"}}"
            ))
            > 0.0)),
        "{}: every camera analyses frames; log:\n{}",
        node.name,
        node.log()
    );
    // Settle (the model loaded, the first frames' costs past).
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, frames0, t0) = (node.cpu_seconds(), analysed(node), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, frames1) = (node.cpu_seconds(), analysed(node));
    let span = t0.elapsed().as_secs_f64();
    let (rss, peak) = node.rss_mib();
    let per_camera = cameras.len() as f64 * span;
    (
        (cpu1 - cpu0) / per_camera,
        rss,
        peak,
        (frames1 - frames0) / per_camera,
    )
}

fn cost(ctx: &Ctx) {
    let count = env_usize("SKYNET_BENCH_CAMERAS", 4);
    let seconds = env_usize("SKYNET_BENCH_CPU_SECONDS", 20) as u64;
    let cameras: Vec<String> = (0..count).map(|i| format!("cam-cost-{i}")).collect();
    let camera_text: String = cameras
        .iter()
        .enumerate()
        .map(|(i, id)| file_camera(id, &ctx.cells[i % ctx.cells.len()], 5))
        .collect();
    println!(
        "cost: {count} file cameras (vtest.avi paced and looped, 5 frames/s analysed, YOLOX-Nano, 1 worker x 1 thread), {seconds} s after they run"
    );
    let root = ctx.root.path().join("cost");
    let mut single = Node::start("all", "single", &root, |dir, metrics| {
        config_text(dir, "single", metrics, None, &ctx.grids, &camera_text)
    });
    let (s_cpu, s_rss, s_peak, s_fps) = camera_cost(&mut single, &cameras, seconds);
    drop(single);
    println!(
        "  single node (--role all): {:.3} CPU s per camera-second ({:.1} % of a core per camera), RSS {s_rss:.0} MiB (peak {s_peak:.0}), {s_fps:.2} analysed frames/s per camera",
        s_cpu,
        s_cpu * 100.0
    );
    let bus = Bus::start(&ctx.rt);
    let url = bus.url();
    let mut edge = Node::start("edge", "edge-cost", &root, |dir, metrics| {
        config_text(
            dir,
            "edge-cost",
            metrics,
            Some((&url, 15)),
            &ctx.grids,
            &camera_text,
        )
    });
    let (e_cpu, e_rss, e_peak, e_fps) = camera_cost(&mut edge, &cameras, seconds);
    let published = edge.metric("skynet_bus_published_total{kind=\"observation\"}");
    drop(edge);
    println!(
        "  edge (--role edge): {:.3} CPU s per camera-second ({:.1} % of a core per camera), RSS {e_rss:.0} MiB (peak {e_peak:.0}), {e_fps:.2} analysed frames/s per camera, {published:.0} observations published",
        e_cpu,
        e_cpu * 100.0
    );
    println!(
        "  edge / single node: CPU {:.2}, RSS {:.2}",
        e_cpu / s_cpu,
        e_rss / s_rss
    );
}

fn report_failover(what: &str, times: Vec<f64>, failover_s: usize) {
    let times = sorted(times);
    println!(
        "  {what}: {} kills, p50 {:.2} s, max {:.2} s (failover_s {failover_s}: p50 {:.2}, max {:.2} of it)",
        times.len(),
        percentile(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN),
        percentile(&times, 0.5) / failover_s as f64,
        times.last().copied().unwrap_or(f64::NAN) / failover_s as f64,
    );
}

fn failover(ctx: &Ctx) {
    let kills = env_usize("SKYNET_BENCH_KILLS", 10);
    let failover_s = env_usize("SKYNET_BENCH_FAILOVER_S", 3);
    println!("failover: {kills} kills (SIGKILL) each, [cluster] failover_s = {failover_s}");

    // Edges: one camera, its lease held by one of two edges.
    let bus = Bus::start(&ctx.rt);
    let url = bus.url();
    let root = ctx.root.path().join("failover-edges");
    let camera = "cam-failover";
    let camera_text = file_camera(camera, &ctx.cells[0], 2);
    let mut made = 0;
    let start_edge = |made: &mut usize| {
        let name = format!("edge-f{made}");
        *made += 1;
        Node::start("edge", &name, &root, |dir, metrics| {
            config_text(
                dir,
                &name,
                metrics,
                Some((&url, failover_s)),
                &ctx.grids,
                &camera_text,
            )
        })
    };
    let mut live = vec![start_edge(&mut made), start_edge(&mut made)];
    let mut times = Vec::new();
    for _ in 0..kills {
        let names: Vec<String> = live.iter().map(|n| n.name.clone()).collect();
        let owner = skynet_cluster::owner(&skynet_cluster::Leases::camera_key(camera), &names)
            .unwrap()
            .to_string();
        assert!(
            wait_until(Duration::from_secs(120), || {
                live.iter_mut()
                    .all(|n| n.metric("skynet_cluster_members{role=\"edge\"}") == 2.0)
                    && bus.holder(&ctx.rt, camera).as_deref() == Some(owner.as_str())
            }),
            "both edges live, {camera} held by {owner}: {:?}; logs:\n{}",
            bus.holder(&ctx.rt, camera),
            logs(&live)
        );
        let at = live.iter().position(|n| n.name == owner).unwrap();
        let mut victim = live.remove(at);
        let killed = victim.kill_9();
        let survivor = live[0].name.clone();
        assert!(
            wait_until(Duration::from_secs(120), || bus
                .holder(&ctx.rt, camera)
                .as_deref()
                == Some(survivor.as_str())),
            "{survivor} takes {camera}; logs:\n{}",
            logs(&live)
        );
        times.push(killed.elapsed().as_secs_f64());
        drop(victim);
        live.push(start_edge(&mut made));
    }
    report_failover(
        "edge (kill -9 to the survivor holding the lease)",
        times,
        failover_s,
    );
    drop(live);
    drop(bus);

    // Scorers: a cell the victim owned, untouched before, gets a gas leak after the kill.
    let bus = Bus::start(&ctx.rt);
    let url = bus.url();
    let root = ctx.root.path().join("failover-scorers");
    let mut made = 0;
    let start_scorer = |made: &mut usize| {
        let name = format!("scorer-f{made}");
        *made += 1;
        Node::start("scorer", &name, &root, |dir, metrics| {
            config_text(
                dir,
                &name,
                metrics,
                Some((&url, failover_s)),
                &ctx.grids,
                &no_camera(&ctx.cells[0]),
            )
        })
    };
    let mut live = vec![start_scorer(&mut made), start_scorer(&mut made)];
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut times = Vec::new();
    for i in 0..kills {
        assert!(
            wait_until(Duration::from_secs(120), || scorers_settled(
                &mut live, &ctx.cells
            )),
            "both scorers share the cells; logs:\n{}",
            logs(&live)
        );
        let names: Vec<String> = live.iter().map(|n| n.name.clone()).collect();
        // The older one: the two take turns.
        let mut victim = live.remove(0);
        let Some(cell) = ctx
            .cells
            .iter()
            .find(|c| {
                !used.contains(*c) && skynet_cluster::owner(c, &names) == Some(victim.name.as_str())
            })
            .cloned()
        else {
            println!(
                "  (no fresh cell of {} left: stopped after {i} kills)",
                victim.name
            );
            break;
        };
        used.insert(cell.clone());
        let killed = victim.kill_9();
        bus.publish_all(&ctx.rt, &[gas(&cell, &format!("gas-f{i}"))]);
        let survivor = &live[0];
        assert!(
            wait_until(Duration::from_secs(120), || survivor.has_incident_in(&cell)),
            "{} takes {cell} and opens its incident; logs:\n{}",
            survivor.name,
            logs(&live)
        );
        times.push(killed.elapsed().as_secs_f64());
        drop(victim);
        live.push(start_scorer(&mut made));
    }
    report_failover(
        "scorer (kill -9 to the survivor's incident in a cell it took)",
        times,
        failover_s,
    );
    drop(live);
    drop(bus);
}

/// Config text for the latency part: a gas sensor in each of `cells`, MQTT on `mqtt`, and
/// the NATS sink on `nats`.
fn sensors_text(node: &str, mqtt: &str, nats: &str, cells: &[String]) -> String {
    let mut text = format!(
        r#"
[[sinks]]
kind = "nats"
name = "nats"
url = "{nats}"
stream = "SKYNET_INCIDENTS"

[mqtt]
url = "{mqtt}"
client_id = "{node}"
qos = 1

  [[mqtt.topics]]
  pattern = "bench/sensors/+"
  format = "senml"
"#
    );
    for cell in cells {
        text += &format!(
            "\n[[sensors]]\nid = \"s-{cell}\"\nkind = \"gas_co\"\ngrid = \"{cell}\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n  [[sensors.rules]]\n  kind = \"threshold\"\n  above = 50.0\n  repeat_s = 0\n  category = \"gas_leak\"\n  weight = 0.9\n"
        );
    }
    text
}

/// Reading to incident, one at a time, a fresh cell each: latencies in ms.
fn sample_latencies(
    mqtt: &common::mosquitto::Mqtt,
    incidents: &std::sync::mpsc::Receiver<(String, Instant)>,
    cells: &[String],
    nodes: &[Node],
) -> Vec<f64> {
    let publish = |cell: &str| {
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let payload =
            format!(r#"[{{"bn":"s-{cell}/","bt":{now:.6},"n":"co","u":"ppm","v":80.0}}]"#);
        mqtt.client
            .publish(
                format!("bench/sensors/s-{cell}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    };
    // Warm-up: the first cell's reading, again every second until its incident comes (the
    // process subscribes, joins, owns its cells).
    let warm = &cells[0];
    let until = Instant::now() + Duration::from_secs(180);
    'warm: loop {
        assert!(
            Instant::now() < until,
            "the warm-up incident came; logs:\n{}",
            logs(nodes)
        );
        publish(warm);
        let second = Instant::now() + Duration::from_secs(1);
        while let Some(left) = second.checked_duration_since(Instant::now()) {
            if let Ok((grid, _)) = incidents.recv_timeout(left)
                && grid == *warm
            {
                break 'warm;
            }
        }
    }
    let mut latencies = Vec::new();
    for cell in &cells[1..] {
        std::thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        publish(cell);
        let until = sent + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match incidents.recv_timeout(left) {
                Ok((grid, at)) if grid == *cell => {
                    latencies.push(at.duration_since(sent).as_secs_f64() * 1e3);
                    break;
                }
                Ok(_) => {}
                Err(_) => panic!("no incident for {cell} within 30 s; logs:\n{}", logs(nodes)),
            }
        }
    }
    latencies
}

/// Subscribes to `skynet.incidents.>` on `bus`: each incident's grid and arrival time.
fn incident_feed(
    ctx: &Ctx,
    client: &async_nats::Client,
) -> std::sync::mpsc::Receiver<(String, Instant)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut sub = ctx
        .rt
        .block_on(client.subscribe("skynet.incidents.>"))
        .unwrap();
    ctx.rt.spawn(async move {
        while let Some(message) = sub.next().await {
            let at = Instant::now();
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                continue;
            };
            let grid = event["data"]["grid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if tx.send((grid, at)).is_err() {
                return;
            }
        }
    });
    rx
}

fn latency(ctx: &Ctx) {
    let samples = env_usize("SKYNET_BENCH_SAMPLES", 120).min((ctx.cells.len() - 1) / 2);
    let cells = &ctx.cells[..=samples];
    // Fresh cells for the observations the bench publishes on the bus itself.
    let bus_cells = &ctx.cells[samples + 1..=2 * samples];
    println!(
        "latency: {samples} gas readings over the threshold on MQTT, one at a time, each in a fresh cell, until the gas_leak incident arrives on skynet.incidents.>"
    );
    let broker = common::mosquitto::Broker::start();
    let mqtt = common::mosquitto::Mqtt::connect(&broker.url(), "bench-publisher");

    let bus = Bus::start(&ctx.rt);
    let nats = bus.url();
    let feed = incident_feed(ctx, &bus.client);
    let root = ctx.root.path().join("latency-single");
    let single = vec![Node::start("all", "single-l", &root, |dir, metrics| {
        config_text(
            dir,
            "single-l",
            metrics,
            None,
            &ctx.grids,
            &sensors_text("single-l", &broker.url(), &nats, cells),
        )
    })];
    let one = sorted(sample_latencies(&mqtt, &feed, cells, &single));
    drop(single);
    drop(feed);
    drop(bus);

    let bus = Bus::start(&ctx.rt);
    let nats = bus.url();
    let feed = incident_feed(ctx, &bus.client);
    let root = ctx.root.path().join("latency-cluster");
    let text = |name: &str| {
        let name = name.to_string();
        let (mqtt_url, nats) = (broker.url(), nats.clone());
        move |dir: &Path, metrics: SocketAddr| {
            config_text(
                dir,
                &name,
                metrics,
                Some((&nats, 15)),
                &ctx.grids,
                &sensors_text(&name, &mqtt_url, &nats, cells),
            )
        }
    };
    let nodes = vec![
        Node::start("scorer", "scorer-l", &root, text("scorer-l")),
        Node::start("edge", "edge-l", &root, text("edge-l")),
    ];
    let across = sorted(sample_latencies(&mqtt, &feed, cells, &nodes));
    // The same scorer, the observation published on the bus by the bench (as an edge's
    // publisher does) until its incident arrives.
    let mut direct = Vec::new();
    for (i, cell) in bus_cells.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        bus.publish_all(&ctx.rt, &[gas(cell, &format!("gas-l{i}"))]);
        let until = sent + Duration::from_secs(30);
        loop {
            match feed.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((grid, at)) if grid == *cell => {
                    direct.push(at.duration_since(sent).as_secs_f64() * 1e3);
                    break;
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "no incident for {cell} within 30 s; logs:\n{}",
                    logs(&nodes)
                ),
            }
        }
    }
    let direct = sorted(direct);
    drop(nodes);
    let line = |what: &str, v: &[f64]| {
        println!(
            "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    line("single node (--role all)", &one);
    line("MQTT -> edge -> bus -> scorer", &across);
    line("observation on the bus -> scorer", &direct);
    println!(
        "  MQTT across the bus / single node: p50 {:.2}, p99 {:.2}",
        percentile(&across, 0.5) / percentile(&one, 0.5),
        percentile(&across, 0.99) / percentile(&one, 0.99)
    );
    println!(
        "  observation on the bus / single node (MQTT): p50 {:.2}, p99 {:.2}",
        percentile(&direct, 0.5) / percentile(&one, 0.5),
        percentile(&direct, 0.99) / percentile(&one, 0.99)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; words pick parts.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let root = tempfile::tempdir().unwrap();
    let side = env_usize("SKYNET_BENCH_GRID", 16);
    let (grids, cells) = write_grid(root.path(), side);
    let ctx = Ctx {
        rt: common::tokio_runtime(),
        root,
        grids,
        cells,
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "skynet cluster benchmark: {cores} cores, {} ({}), a {side}x{side} grid, private nats-server",
        common::skynet_bin().display(),
        std::env::var("SKYNET_BIN").map_or("the build's", |_| "SKYNET_BIN"),
    );
    let started = Instant::now();
    if wants("throughput") {
        throughput(&ctx);
    }
    if wants("cost") {
        cost(&ctx);
    }
    if wants("failover") {
        failover(&ctx);
    }
    if wants("latency") {
        latency(&ctx);
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
