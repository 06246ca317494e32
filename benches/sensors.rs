//! The sensor stage's figures, against the broker's own delivery rate in the same run.
//!
//! - `throughput`: single-record SenML messages, queued at a private Mosquitto for a
//!   persistent session while its subscriber is away, then drained: by a plain rumqttc
//!   subscriber that only counts (the broker's delivery rate, acknowledging on receipt), by
//!   skynet's sensor stage (the MQTT client, validation of 1,000 registered sensors, rules,
//!   one observation per reading; the bench acknowledges each checkpoint as it comes), and
//!   by the whole pipeline (`skynet::pipeline::run`: the sensor stage, risk, the SQLite
//!   commit, and manual acknowledgements once each commit is stored), timed until the
//!   last message is acknowledged. Readings/s as a ratio of the plain rate, at QoS 0 and
//!   QoS 1. Goal: 0.8 for the whole pipeline with manual acks at QoS 1.
//! - `latency`: a publisher at a steady rate (default 10,000 messages/s for 10 s); the time
//!   from a reading's time (set at publish) to its observation, p50/p99/max, and the
//!   process's resident memory meanwhile.
//!
//! `cargo bench --bench sensors`; `SKYNET_BENCH_MESSAGES` (default 200000) and
//! `SKYNET_BENCH_RATE` (default 10000) change the sizes; `SKYNET_BENCH_PART=whole` runs only
//! the plain subscriber and the whole pipeline at QoS 1 (the goal's ratio, about 30 s),
//! `throughput` or `latency` one part.

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
            // With manual acks, the broker's in-flight window (default 20) caps skynet at
            // window / commit interval: deploy/mosquitto.conf raises it the same way.
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nqueue_qos0_messages true\nmax_inflight_messages 10000\n"),
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

/// Publishes `n` single-record SenML messages over the sensors, times rising per sensor;
/// the last one reads 6000 ppm (above every bench rule's threshold: a sentinel).
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
        let v = if i + 1 == n { 6000.0 } else { 12.5 };
        let payload = format!(r#"[{{"bn":"s-{sensor}/","bt":{t:.3},"n":"co","u":"ppm","v":{v}}}]"#);
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

/// The bench's sensors: each with a CO threshold rule at `above` ppm.
fn config(port: u16, id: &str, qos: u8, above: f64) -> PipelineConfig {
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    PipelineConfig::parse(
        &repo.join("configs/bench-sensors.toml"),
        &config_text(port, id, qos, above),
    )
    .expect("bench config")
}

fn config_text(port: u16, id: &str, qos: u8, above: f64) -> String {
    // The bench is a target of the tests package (tests/); the repository is its parent.
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
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
        text += &format!(
            "[[sensors]]\nid = \"s-{i}\"\nkind = \"gas_co\"\ngrid = \"G-0201\"\nowner = \"safety_production\"\nexpected_interval_s = 0\n  [[sensors.rules]]\n  kind = \"threshold\"\n  above = {above:.1}\n  repeat_s = 0\n  category = \"gas_leak\"\n"
        );
    }
    text
}

/// Runs skynet's sensor stage until `n` observations came out (when the last, the
/// sentinel, is out, every reading before it was processed: one thread, in order). Returns
/// `readings`/s, and fills `latencies` (reading time to observation) when given.
fn skynet_drain(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    readings: usize,
    n: usize,
    started_at: Option<&mut dyn FnMut()>,
    mut latencies: Option<&mut Vec<f64>>,
) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<SensorEvent>(4096);
    let stop = Shutdown::new();
    let health = Health::new();
    let mqtt = config.mqtt.as_ref().unwrap();
    let started = Instant::now();
    let feed = sensors::start(
        runtime.handle(),
        mqtt,
        &config.sensors,
        &health,
        &stop,
        tx,
        None,
        Default::default(),
    )
    .unwrap();
    if let Some(f) = started_at {
        f();
    }
    let mut got = 0;
    while got < n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            // No commit here: acknowledged as soon as the stage is past them.
            Ok(SensorEvent::Checkpoint {
                acks: Some(acks), ..
            }) => acks.ack(),
            Ok(SensorEvent::Observation(o)) => {
                got += 1;
                if let Some(l) = latencies.as_deref_mut() {
                    let late = chrono::Utc::now() - o.at;
                    l.push(late.num_microseconds().unwrap_or(0) as f64 / 1e6);
                }
            }
            Ok(_) => {}
            Err(_) => panic!("only {got} of {n} observations came out"),
        }
    }
    let rate = readings as f64 / started.elapsed().as_secs_f64();
    stop.trigger();
    drop(rx);
    if let Some(thread) = feed.thread {
        let _ = thread.join();
    }
    rate
}

/// Runs the whole pipeline (sensors, risk, commit into a fresh outbox, acks once stored)
/// until `n` more messages are acknowledged to the broker; returns messages/s.
fn pipeline_drain(services: &Arc<skynet::pipeline::Services>, text: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let text = format!(
        "[outbox]\npath = \"{}\"\n{text}",
        dir.path().join("outbox.sqlite").display()
    );
    let config = PipelineConfig::parse(&repo.join("configs/bench-sensors.toml"), &text)
        .expect("bench config");
    // The acknowledged count is read from the rendered metrics, which costs about 10 ms on
    // this machine (1,000 sensors' series): read every 2 ms, that took most of a core from the
    // pipeline under test. Read every 100 ms instead, and place the moment `n` was reached
    // between the last read below it and the first at or above it, in proportion.
    let acked = || {
        let at = Instant::now();
        let count = services
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with("skynet_sensor_acked_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        (at, count)
    };
    let (_, before) = acked();
    let shutdown = Shutdown::new();
    let options = skynet::pipeline::RunOptions {
        shutdown: shutdown.clone(),
        services: Some(Arc::clone(services)),
        detectors: None,
        wait_for_shutdown: true,
        ..Default::default()
    };
    let started = Instant::now();
    let run = std::thread::spawn(move || skynet::pipeline::run(&config, options));
    let until = started + Duration::from_secs(300);
    let target = n as f64;
    let (mut last_at, mut last) = (started, 0.0);
    let reached = loop {
        std::thread::sleep(Duration::from_millis(100));
        let (at, count) = acked();
        let count = count - before;
        if count >= target {
            let share = (target - last) / (count - last);
            break last_at + (at - last_at).mul_f64(share);
        }
        assert!(at < until, "only {count} of {n} acknowledged");
        (last_at, last) = (at, count);
    };
    let rate = n as f64 / (reached - started).as_secs_f64();
    shutdown.trigger();
    run.join().unwrap().expect("the pipeline runs");
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
        .unwrap_or(10_000.0);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("skynet sensor benchmark, {cores} cores, {SENSORS} sensors, single-record SenML");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start();
    let port = broker.port;
    // The whole pipeline's I/O runtime and metrics (the recorder installed above).
    let services = Arc::new(skynet::pipeline::Services::start(None).expect("services"));
    // Each figure is the median of `ROUNDS` rounds; the consumers take turns within a round,
    // so a slow moment of the machine does not favour one of them.
    const ROUNDS: usize = 3;
    // `whole`: only the plain subscriber and the whole pipeline at QoS 1 (the goal's ratio);
    // `throughput` or `latency`: one part.
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_default();
    let whole_only = part == "whole";
    let levels: &[u8] = if whole_only { &[1] } else { &[0, 1] };
    for &qos in levels {
        if part == "latency" {
            break;
        }
        let q = qos_of(qos);
        let (mut plain, mut ours, mut every, mut whole) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let start = chrono::Utc::now().timestamp() as f64 - 3000.0
                + f64::from(qos) * 1000.0
                + round as f64 * 300.0;
            // The same queue drained by each consumer: first the plain subscriber.
            let plain_id = format!("plain-{qos}-{round}");
            runtime.block_on(make_session(port, &plain_id, q));
            runtime.block_on(publish(port, n, q, start));
            plain.push(runtime.block_on(plain_drain(port, &plain_id, n)));
            if whole_only {
                ours.push(f64::NAN);
                every.push(f64::NAN);
            } else {
                // skynet with realistic rules (readings below the alarm level): only the
                // sentinel is evidence.
                let skynet_id = format!("skynet-{qos}-{round}");
                runtime.block_on(make_session(port, &skynet_id, q));
                runtime.block_on(publish(port, n, q, start));
                let normal = config(port, &skynet_id, qos, 5000.0);
                ours.push(skynet_drain(&runtime, &normal, n, 1, None, None));
                // skynet with every reading evidence: an observation out of each message.
                let every_id = format!("skynet-every-{qos}-{round}");
                runtime.block_on(make_session(port, &every_id, q));
                runtime.block_on(publish(port, n, q, start));
                let all = config(port, &every_id, qos, 0.0);
                every.push(skynet_drain(&runtime, &all, n, n, None, None));
            }
            // The whole pipeline, realistic rules: each message acknowledged once the commit
            // that holds it is stored (manual acks at QoS 1).
            let whole_id = format!("skynet-whole-{qos}-{round}");
            runtime.block_on(make_session(port, &whole_id, q));
            runtime.block_on(publish(port, n, q, start));
            if qos == 0 {
                // QoS 0 has nothing to acknowledge: the acked count would never move.
                whole.push(f64::NAN);
            } else {
                let text = config_text(port, &whole_id, qos, 5000.0);
                whole.push(pipeline_drain(&services, &text, n));
            }
        }
        let (plain, ours, every, whole) = (
            median(&mut plain),
            median(&mut ours),
            median(&mut every),
            median(&mut whole),
        );
        if whole_only {
            println!("QoS {qos}: broker delivery (plain subscriber) {plain:>7.0} msg/s");
        } else {
            println!(
                "QoS {qos}: broker delivery (plain subscriber) {plain:>7.0} msg/s | skynet {ours:>7.0} readings/s, ratio {:.2} | every reading evidence {every:>7.0}/s, ratio {:.2}",
                ours / plain,
                every / plain
            );
        }
        if qos > 0 {
            println!(
                "QoS {qos}: whole pipeline, acked after commit {whole:>7.0} readings/s, ratio {:.2} (goal 0.8)",
                whole / plain
            );
        }
    }

    if whole_only || part == "throughput" {
        return;
    }
    // Latency and memory at a steady rate, QoS 1: the plain subscriber first (publish to
    // delivery), then skynet with every reading evidence (publish to observation).
    let total = (rate * 10.0) as usize;
    let mut plain = Vec::with_capacity(total);
    let publisher = steady_publisher(runtime.handle(), port, rate, total, "plain");
    runtime.block_on(plain_latencies(port, total, &mut plain));
    let _ = publisher.join();
    let config = config(port, "skynet-latency", 1, 0.0);
    let (rss_before, _) = rss_mib();
    let mut latencies = Vec::with_capacity(total);
    let publisher: std::cell::RefCell<Option<std::thread::JoinHandle<()>>> = Default::default();
    let mut begin = || {
        *publisher.borrow_mut() = Some(steady_publisher(
            runtime.handle(),
            port,
            rate,
            total,
            "skynet",
        ));
    };
    let achieved = skynet_drain(
        &runtime,
        &config,
        total,
        total,
        Some(&mut begin),
        Some(&mut latencies),
    );
    let (rss_after, hwm) = rss_mib();
    if let Some(p) = publisher.borrow_mut().take() {
        let _ = p.join();
    }
    for (what, l) in [
        ("plain subscriber, publish to delivery", &mut plain),
        ("skynet, publish to observation", &mut latencies),
    ] {
        l.sort_by(f64::total_cmp);
        println!(
            "steady {rate:.0} msg/s at QoS 1 for 10 s, {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(l, 0.5) * 1e3,
            percentile(l, 0.99) * 1e3,
            l.last().copied().unwrap_or(0.0) * 1e3
        );
    }
    println!("  (skynet kept up at {achieved:.0} readings/s over the run)");
    println!(
        "memory: resident {rss_before:.0} MiB before, {rss_after:.0} MiB after, peak {hwm:.0} MiB (the bench process: stage, publisher and metrics)"
    );
}

/// Publishes `total` readings at `rate`/s (in batches every 10 ms), each with its publish
/// time as its SenML time, on a thread of its own.
fn steady_publisher(
    runtime: &tokio::runtime::Handle,
    port: u16,
    rate: f64,
    total: usize,
    name: &str,
) -> std::thread::JoinHandle<()> {
    let (rt, id) = (runtime.clone(), format!("bench-steady-{name}"));
    std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (client, mut eventloop) = AsyncClient::new(options(port, &id, true), 10_000);
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100.0).round().max(1.0) as usize;
            let mut sent = 0usize;
            while sent < total {
                ticker.tick().await;
                let batch = per_tick.min(total - sent);
                for i in sent..sent + batch {
                    let sensor = i % SENSORS;
                    // Each message's own publish time: a batch is not one instant.
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                    let payload = format!(
                        r#"[{{"bn":"s-{sensor}/","bt":{now:.6},"n":"co","u":"ppm","v":12.5}}]"#
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
                sent += batch;
            }
            let _ = client.disconnect().await;
        });
    })
}

/// A plain subscriber's latency: from each message's SenML time to its delivery.
async fn plain_latencies(port: u16, total: usize, out: &mut Vec<f64>) {
    let (client, eventloop) = AsyncClient::new(options(port, "plain-latency", true), 10);
    client
        .subscribe("bench/sensors/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    drive(eventloop, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let text = std::str::from_utf8(&p.payload).unwrap_or("");
            let bt = text
                .split("\"bt\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            out.push(chrono::Utc::now().timestamp_micros() as f64 / 1e6 - bt);
        }
        out.len() >= total
    })
    .await;
}
