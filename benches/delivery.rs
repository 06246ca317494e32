//! Delivery to NATS JetStream, against a plain pipelined publisher of the same messages to
//! the same server, measured in the same run.
//!
//! - `throughput`: N incident revisions of about 1 KB are committed to an outbox first; then
//!   the NATS sink delivers them (read from the outbox, published with `Nats-Msg-Id` and the
//!   `ce-*` headers, every ack awaited, the cursor committed per batch). The baseline
//!   publishes the same bodies with the same headers to another stream on the same server,
//!   pipelined with the same window, awaiting every ack. Goal: 0.5 of the baseline or more.
//! - `latency`: revisions committed at a steady rate (default 2,000/s for 10 s) while the
//!   sink runs; the time from each commit's return to the JetStream ack of its event,
//!   p50/p99/max.
//!
//! `cargo bench --bench delivery`; `SKYNET_BENCH_EVENTS` (default 100000) and
//! `SKYNET_BENCH_RATE` (default 2000) change the sizes. A private nats-server (Debian's
//! package) runs on a spare port with its store in a temporary directory.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use serde_json::json;
use skynet_core::{ComponentHealth, RiskEvent};
use skynet_emit::{
    Committer, EmitError, IncidentSink, NatsSink, NatsSinkConfig, Outbox, StoredEvent,
};

struct Server {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "nats-server listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn incident(n: usize) -> RiskEvent {
    RiskEvent::Incident(
        serde_json::from_value(json!({
            "id": format!("inc-{n}"), "revision": 1, "status": "opened", "state": "open",
            "change": "opened", "category": "gas_leak", "level": "II", "level_colour": "orange",
            "risk_score": 0.7, "confidence": 1.0, "grid": format!("G-{:04}", n % 1000),
            "department": "fire", "deadlines": {}, "sensor": "gas-07", "owner": "safety_production",
            "first_seen": "2026-11-27T08:00:00Z", "last_seen": "2026-11-27T08:00:00Z",
            "observations": 1, "detections": [], "rule": {"name": "co-leak", "kind": "threshold"},
            "note": "x".repeat(480),
        }))
        .unwrap(),
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes `bodies` as a plain client would: pipelined, `window` in flight, every ack
/// awaited. Returns messages/s.
async fn plain_publisher(url: &str, bodies: &[(String, String, String)], window: usize) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: "PLAIN".into(),
        subjects: vec!["plain.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    for chunk in bodies.chunks(window) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (id, subject, body) in chunk {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert("ce-id", id.as_str());
            headers.insert("ce-type", "skynet.incident.v1");
            acks.push(
                js.publish_with_headers(format!("plain.{subject}"), headers, body.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

/// The NATS sink, noting when each event's batch was acked.
struct Timed {
    inner: NatsSink,
    acked: Arc<Mutex<HashMap<String, Instant>>>,
}

#[async_trait::async_trait]
impl IncidentSink for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        self.inner.deliver(batch).await?;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap();
        for event in batch {
            acked.entry(event.id.clone()).or_insert(now);
        }
        Ok(())
    }
}

fn wait_delivered(outbox: &Path, sink: &str) {
    let outbox = Outbox::open(outbox).unwrap();
    let until = Instant::now() + Duration::from_secs(600);
    while outbox.pending_count(sink).unwrap() > 0 {
        assert!(Instant::now() < until, "the sink did not catch up");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks one part.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let events = env_usize("SKYNET_BENCH_EVENTS", 100_000);
    let rate = env_usize("SKYNET_BENCH_RATE", 2000);
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = NatsSinkConfig::for_url(server.url());
    let window = config.max_in_flight;

    if wants("throughput") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut committer = Committer::new("bench", Outbox::open(&path).unwrap());
        let changes: Vec<RiskEvent> = (0..events).map(incident).collect();
        for chunk in changes.chunks(1000) {
            committer.commit(chunk, None).unwrap();
        }
        let stored = committer.outbox().pending("nobody", events).unwrap();
        let size = stored.iter().map(|e| e.body.len()).sum::<usize>() / stored.len();
        let bodies: Vec<(String, String, String)> = stored
            .iter()
            .enumerate()
            .map(|(n, e)| {
                (
                    e.id.clone(),
                    format!("G-{:04}.gas_leak", n % 1000),
                    e.body.clone(),
                )
            })
            .collect();
        let plain = rt.block_on(plain_publisher(&server.url(), &bodies, window));

        let started = Instant::now();
        let deliveries = skynet_emit::spawn_deliveries(
            rt.handle(),
            &path,
            vec![(
                Box::new(NatsSink::new("nats", config.clone())),
                ComponentHealth::detached("nats", "sink"),
            )],
            committer.wake_handle(),
        );
        wait_delivered(&path, "nats");
        let skynet = events as f64 / started.elapsed().as_secs_f64();
        assert!(deliveries.shutdown(Duration::from_secs(10)).is_empty());
        println!(
            "throughput: {events} events of {size} B; plain pipelined publisher {plain:.0}/s; skynet outbox -> JetStream {skynet:.0}/s; ratio {:.2} (goal 0.5)",
            skynet / plain
        );
    }

    if wants("latency") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut committer = Committer::new("bench", Outbox::open(&path).unwrap());
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let mut latency_config = config.clone();
        latency_config.stream = "LATENCY".into();
        latency_config.subject_prefix = "latency".into();
        let deliveries = skynet_emit::spawn_deliveries(
            rt.handle(),
            &path,
            vec![(
                Box::new(Timed {
                    inner: NatsSink::new("nats", latency_config),
                    acked: Arc::clone(&acked),
                }),
                ComponentHealth::detached("nats", "sink"),
            )],
            committer.wake_handle(),
        );
        let seconds = 10;
        let total = rate * seconds;
        let mut committed = HashMap::with_capacity(total);
        let started = Instant::now();
        for n in 0..total {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let event = incident(events + n);
            let out = committer
                .commit(std::slice::from_ref(&event), None)
                .unwrap();
            committed.insert(out[0].id().to_string(), Instant::now());
        }
        wait_delivered(&path, "nats");
        assert!(deliveries.shutdown(Duration::from_secs(10)).is_empty());
        let acked = acked.lock().unwrap();
        let mut latencies: Vec<Duration> = committed
            .iter()
            .map(|(id, at)| acked[id].saturating_duration_since(*at))
            .collect();
        latencies.sort();
        println!(
            "latency: {total} events at {rate}/s, one commit each; commit -> JetStream ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}
