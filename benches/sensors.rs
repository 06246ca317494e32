//! The sensor stage's figures, against the broker's own delivery rate in the same run.
//!
//! - `throughput`: single-record SenML messages, queued at a private Mosquitto for a
//!   persistent session while its subscriber is away, then drained: by a plain rumqttc
//!   subscriber that only counts (the broker's delivery rate), and by skynet's sensor stage
//!   (the MQTT client, validation of 1,000 registered sensors, rules, one observation per
//!   reading). Readings/s as a ratio of the plain rate, at QoS 0 and QoS 1. Goal: 0.8.
//! - `latency`: a publisher at a steady rate (default 20,000 messages/s for 10 s); the time
//!   from a reading's time (set at publish) to its observation, p50/p99/max, and the
//!   process's resident memory meanwhile.
//!
//! `cargo bench --bench sensors`; `SKYNET_BENCH_MESSAGES` (default 200000) and
//! `SKYNET_BENCH_RATE` (default 20000) change the sizes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use skynet::PipelineConfig;
use skynet::pipeline::sensors::{self, SensorEvent};
use skynet_core::{Health, Shutdown};

const SENSORS: usize = 1000;

struct Broker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        // No queue limit (Mosquitto's default of 1000 drops QoS 1 messages silently), and QoS 0
        // messages queued for offline persistent sessions too, so both QoS drain the same way.
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nqueue_qos0_messages true\n"),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "mosquitto listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn options(port: u16, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_inflight(1000);
    o
}

fn qos_of(n: u8) -> QoS {
    if n == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Polls a connection until `done`; returns when the connection acknowledged `until`.
async fn drive(mut eventloop: rumqttc::EventLoop, mut until: impl FnMut(&Event) -> bool) {
    loop {
        match eventloop.poll().await {
            Ok(e) => {
                if until(&e) {
                    return;
                }
            }
            Err(e) => panic!("bench connection failed: {e}"),
        }
    }
}

/// Creates the persistent session `id` subscribed to the sensors' topics, then leaves.
async fn make_session(port: u16, id: &str, qos: QoS) {
    let (client, eventloop) = AsyncClient::new(options(port, id, false), 10);
    client.subscribe("bench/sensors/+", qos).await.unwrap();
    drive(eventloop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
}

/// Publishes `n` single-record SenML messages over the sensors, times rising per sensor.
async fn publish(port: u16, n: usize, qos: QoS, start: f64) {
    let (client, eventloop) = AsyncClient::new(options(port, "bench-publisher", true), 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&acked);
    let total = n as u64;
    let driver = tokio::spawn(drive(eventloop, move |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_)))
            || matches!(e, Event::Outgoing(rumqttc::Outgoing::Publish(_))) && qos == QoS::AtMostOnce
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        counter.load(Ordering::Relaxed) >= total
    }));
    for i in 0..n {
        let sensor = i % SENSORS;
        let t = start + (i / SENSORS) as f64 * 0.001;
        let payload =
            format!(r#"[{{"bn":"s-{sensor}/","bt":{t:.3},"n":"co","u":"ppm","v":12.5}}]"#);
        client
            .publish(format!("bench/sensors/s-{sensor}"), qos, false, payload)
            .await
            .unwrap();
    }
    driver.await.unwrap();
    // Let the broker store the last ones before anyone connects.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The broker's delivery rate: a subscriber that only counts.
async fn plain_drain(port: u16, id: &str, n: usize) -> f64 {
    let (_client, eventloop) = AsyncClient::new(options(port, id, false), 10);
    let started = Instant::now();
    let mut got = 0usize;
    drive(eventloop, |e| {
        if matches!(e, Event::Incoming(Packet::Publish(_))) {
            got += 1;
        }
        got >= n
    })
    .await;
    n as f64 / started.elapsed().as_secs_f64()
}

fn config(port: u16, id: &str, qos: u8) -> PipelineConfig {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = format!(
        r#"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "{id}"
qos = {qos}
  [[mqtt.topics]]
  pattern = "bench/sensors/+"
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
    );
    for i in 0..SENSORS {
        // Every reading is evidence: the whole path runs for each message.
        text += &format!(
            "[[sensors]]\nid = \"s-{i}\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n  [[sensors.rules]]\n  kind = \"threshold\"\n  above = 0.0\n  repeat_s = 0\n  category = \"gas_leak\"\n"
        );
    }
    PipelineConfig::parse(&repo.join("configs/bench-sensors.toml"), &text).expect("bench config")
}

/// Runs skynet's sensor stage until `n` observations came out; returns readings/s, and the
/// latencies (reading time to observation) when `latencies` is set.
fn skynet_drain(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    n: usize,
    started_at: Option<&mut dyn FnMut()>,
    latencies: Option<&mut Vec<f64>>,
) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<SensorEvent>(4096);
    let stop = Shutdown::new();
    let health = Health::new();
    let mqtt = config.mqtt.as_ref().unwrap();
    let started = Instant::now();
    let thread =
        sensors::start(runtime.handle(), mqtt, &config.sensors, &health, &stop, tx).unwrap();
    if let Some(f) = started_at {
        f();
    }
    let mut lat = latencies;
    let mut got = 0;
    while got < n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(SensorEvent::Observation(o)) => {
                got += 1;
                if let Some(l) = lat.as_deref_mut() {
                    l.push(
                        (chrono::Utc::now() - o.at).num_microseconds().unwrap_or(0) as f64 / 1e6,
                    );
                }
            }
            Ok(_) => {}
            Err(_) => panic!("only {got} of {n} observations came out"),
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.trigger();
    drop(rx);
    let _ = thread.join();
    rate
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    skynet::memory::limit_malloc_arenas();
    // Real metrics, as in production.
    let _metrics = skynet_serve::install_metrics().expect("metrics recorder");
    let n: usize = std::env::var("SKYNET_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rate: f64 = std::env::var("SKYNET_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000.0);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("skynet sensor benchmark, {cores} cores, {SENSORS} sensors, single-record SenML");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start();
    let port = broker.port;
    for qos in [0u8, 1] {
        let q = qos_of(qos);
        let start = chrono::Utc::now().timestamp() as f64 - 3000.0 + f64::from(qos) * 1000.0;
        // The same queue drained twice: once by the plain subscriber, once by skynet.
        let plain_id = format!("plain-{qos}");
        runtime.block_on(make_session(port, &plain_id, q));
        runtime.block_on(publish(port, n, q, start));
        let plain = runtime.block_on(plain_drain(port, &plain_id, n));
        let skynet_id = format!("skynet-{qos}");
        runtime.block_on(make_session(port, &skynet_id, q));
        runtime.block_on(publish(port, n, q, start));
        let config = config(port, &skynet_id, qos);
        let ours = skynet_drain(&runtime, &config, n, None, None);
        println!(
            "QoS {qos}: broker delivery (plain subscriber) {plain:>9.0} msg/s | skynet sensor stage {ours:>9.0} readings/s | ratio {:.2}",
            ours / plain
        );
    }

    // Latency and memory at a steady rate, QoS 1.
    let config = config(port, "skynet-latency", 1);
    let (rss_before, _) = rss_mib();
    let total = (rate * 10.0) as usize;
    let mut latencies = Vec::with_capacity(total);
    let rt = runtime.handle().clone();
    let mut begin = move || {
        let rt2 = rt.clone();
        std::thread::spawn(move || {
            rt2.block_on(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (client, eventloop) =
                    AsyncClient::new(options(port, "bench-steady", true), 10_000);
                tokio::spawn(drive(eventloop, |_| false));
                let mut ticker = tokio::time::interval(Duration::from_millis(10));
                let per_tick = (rate / 100.0).round().max(1.0) as usize;
                let mut sent = 0usize;
                while sent < total {
                    ticker.tick().await;
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                    for k in 0..per_tick.min(total - sent) {
                        let i = sent + k;
                        let sensor = i % SENSORS;
                        let payload = format!(
                            r#"[{{"bn":"s-{sensor}/","bt":{:.6},"n":"co","u":"ppm","v":12.5}}]"#,
                            now + k as f64 * 1e-6
                        );
                        client
                            .publish(
                                format!("bench/sensors/s-{sensor}"),
                                QoS::AtLeastOnce,
                                false,
                                payload,
                            )
                            .await
                            .unwrap();
                    }
                    sent += per_tick.min(total - sent);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        });
    };
    let achieved = skynet_drain(
        &runtime,
        &config,
        total,
        Some(&mut begin),
        Some(&mut latencies),
    );
    let (rss_after, hwm) = rss_mib();
    latencies.sort_by(f64::total_cmp);
    println!(
        "steady {rate:.0} msg/s at QoS 1 for 10 s ({achieved:.0} readings/s over the run): reading time to observation p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5) * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        latencies.last().copied().unwrap_or(0.0) * 1e3
    );
    println!(
        "memory: resident {rss_before:.0} MiB before, {rss_after:.0} MiB after, peak {hwm:.0} MiB (the bench process: stage, publisher and metrics)"
    );
}
