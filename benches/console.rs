//! The console under load, on a real state database and the real HTTP server.
//!
//! - `live push`: 200 browser tabs hold the live stream (`GET /api/v1/events`, one TCP
//!   connection each, as Server-Sent Events; 200 users, one tab each, as `[api]
//!   max_streams_per_user` allows 10) while incident revisions are committed to the
//!   outbox at 100/s and published, as the commit stage does. Measured: the time from each
//!   commit's return to each client reading the revision, p50/p99/max over every delivery.
//!   Goal: p99 under 100 ms. Baseline in the same run: the same revisions fanned out to 200
//!   in-process receivers of the hub's channel (no HTTP, no sockets).
//! - `live flood` (issue 22): 2,000 live streams across 200 users (10 each, the per-user
//!   cap) at the same 100 incidents/s: p99 push latency, as a ratio against the 200-client
//!   p99 measured in the same run (the `live push` part runs first when this one is asked
//!   for). `SKYNET_BENCH_FLOOD_SECONDS` (5) sets its length.
//! - `api`: `GET /api/v1/incidents?limit=50` (a filtered and an unfiltered page) with
//!   100,000 incidents in the store, 16 connections with keep-alive for 10 s each: requests/s
//!   and p99. Baseline in the same run: `GET /api/v1/me` (the same authentication and HTTP
//!   stack, no incident query).
//!
//! `cargo bench --bench console`; `SKYNET_BENCH_CLIENTS` (200), `SKYNET_BENCH_RATE` (100),
//! `SKYNET_BENCH_SECONDS` (10) and `SKYNET_BENCH_INCIDENTS` (100000) change the sizes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use skynet_core::{Health, Incident, RiskEvent};
use skynet_emit::{CloudEvent, Outbox, OutboxEvent};
use skynet_serve::console::{ApiConfig, Console, ConsoleStore, Role, TokenKind, User};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "../tests/common/mod.rs"]
mod common;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn incident(n: u64, department: &str, level: &str) -> Incident {
    serde_json::from_value(json!({
        "id": format!("inc-{n:07}"), "revision": 1, "status": "opened", "state": "open",
        "change": "opened", "category": "gas_leak", "level": level, "level_colour": "orange",
        "risk_score": 0.7, "confidence": 0.9, "grid": format!("G-{:04}", n % 500),
        "department": department,
        "deadlines": {"dispatch_by": "2026-11-27T12:00:00Z", "resolve_by": "2026-11-27T20:00:00Z"},
        "sensor": "gas-07", "owner": "safety_production",
        "first_seen": "2026-11-27T10:00:00Z",
        "last_seen": (chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::Duration::seconds(1_700_000_000 + n as i64)).to_rfc3339(),
        "observations": 3,
        "contributions": [{"at": "2026-11-27T10:00:00Z", "source": {"kind": "sensor", "id": "gas-07"}, "category": "gas_leak", "weight": 0.6, "confidence": 1.0, "count": 3}],
        "detections": [], "rule": {"name": "gas-high", "kind": "threshold"}
    }))
    .expect("a valid incident")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Served {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    console: Arc<Console>,
    addr: std::net::SocketAddr,
    /// One API token per user, `users` of them.
    tokens: Vec<String>,
}

fn serve(runtime: &tokio::runtime::Runtime, users: usize) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let console = Arc::new(
        Console::open(
            ApiConfig {
                session_ttl: Duration::from_secs(3600),
                ..ApiConfig::local("127.0.0.1:0".parse().unwrap())
            },
            &db,
            None,
            Health::new(),
            None,
        )
        .unwrap(),
    );
    let store = ConsoleStore::open(&db).unwrap();
    let mut tokens = Vec::with_capacity(users);
    for n in 0..users {
        let name = format!("op{n:03}");
        store
            .put_user(
                &User {
                    name: name.clone(),
                    role: Role::Operator,
                    department: None,
                    owner: None,
                },
                "a long bench passphrase 4k9q",
            )
            .unwrap();
        tokens.push(
            store
                .issue_token(&name, TokenKind::Api, Some("bench"), None)
                .unwrap(),
        );
    }
    let listener = skynet_serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::clone(&console);
    runtime.spawn(async move {
        let _ = skynet_serve::serve_console(listener, served, None, std::future::pending()).await;
    });
    Served {
        _dir: dir,
        db,
        console,
        addr,
        tokens,
    }
}

/// One live-stream client: reads events, records the delay of each incident after its commit.
async fn live_client(
    addr: std::net::SocketAddr,
    token: String,
    committed: Arc<Mutex<HashMap<String, Instant>>>,
    ready: Arc<tokio::sync::Barrier>,
    expected: usize,
) -> Vec<Duration> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut delays = Vec::with_capacity(expected);
    let mut greeted = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if !greeted && line.starts_with("event: hello") {
            greeted = true;
            ready.wait().await;
            continue;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Some(start) = data.find("\"id\":\"inc-") else {
            continue;
        };
        let id = &data[start + 6..start + 17];
        let now = Instant::now();
        if let Some(at) = committed.lock().unwrap().get(id) {
            delays.push(now.duration_since(*at));
        }
        if delays.len() >= expected {
            break;
        }
    }
    delays
}

/// `users` users with `per_user` live streams each, `rate` revisions/s for `seconds`; with
/// `baseline`, as many in-process receivers beside them. Prints the figures and returns the
/// p99 of commit to client.
fn live_push(
    runtime: &tokio::runtime::Runtime,
    users: usize,
    per_user: usize,
    seconds: u64,
    baseline: bool,
) -> Duration {
    let clients = users * per_user;
    let rate = env("SKYNET_BENCH_RATE", 100);
    let total = (rate * seconds) as usize;
    let served = serve(runtime, users);
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for n in 0..clients {
        tasks.push(runtime.spawn(live_client(
            served.addr,
            served.tokens[n % users].clone(),
            Arc::clone(&committed),
            Arc::clone(&ready),
            total,
        )));
    }
    // The in-process baseline: receivers of the same hub channel.
    let mut baseline_tasks = Vec::new();
    for _ in 0..if baseline { clients } else { 0 } {
        let mut rx = served.console.subscribe_live();
        let committed = Arc::clone(&committed);
        baseline_tasks.push(runtime.spawn(async move {
            let mut delays = Vec::with_capacity(total);
            while delays.len() < total {
                match rx.recv().await {
                    Ok(message) => {
                        if let Some((id, _)) = &message.incident {
                            let now = Instant::now();
                            if let Some(at) = committed.lock().unwrap().get(id) {
                                delays.push(now.duration_since(*at));
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
            delays
        }));
    }
    runtime.block_on(ready.wait());
    let mut outbox = Outbox::open(&served.db).unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut commit_times = Vec::with_capacity(total);
    for n in 0..total {
        let due = started + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let incident = incident(n as u64, "emergency", "II");
        let t = Instant::now();
        outbox
            .commit(
                &[OutboxEvent::Incident(CloudEvent::incident(
                    "bench", &incident,
                ))],
                None,
            )
            .unwrap();
        let done = Instant::now();
        commit_times.push(done - t);
        committed.lock().unwrap().insert(incident.id.clone(), done);
        served.console.publish(&[RiskEvent::Incident(incident)]);
    }
    let collect = |tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>| {
        let mut all = Vec::new();
        let mut short = 0;
        for task in tasks {
            let delays = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await })
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if delays.len() < total {
                short += 1;
            }
            all.extend(delays);
        }
        all.sort();
        (all, short)
    };
    let (delays, short) = collect(tasks);
    let (floor, _) = collect(baseline_tasks);
    commit_times.sort();
    println!(
        "live push: {clients} SSE clients ({users} users x {per_user}), {rate} incidents/s for {seconds} s ({total} revisions, {} deliveries, {short} clients short)",
        delays.len()
    );
    println!(
        "  commit to client: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   (goal: p99 < 100 ms: {:.3} of it)",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
        ms(percentile(&delays, 1.0)),
        ms(percentile(&delays, 0.99)) / 100.0
    );
    if baseline {
        println!(
            "  baseline, in-process receivers: p50 {:.3} ms, p99 {:.3} ms",
            ms(percentile(&floor, 0.5)),
            ms(percentile(&floor, 0.99)),
        );
    }
    println!(
        "  the outbox commit itself: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&commit_times, 0.5)),
        ms(percentile(&commit_times, 0.99)),
    );
    percentile(&delays, 0.99)
}

/// `connections` clients with keep-alive, each looping on `path` for `duration`.
fn load(
    runtime: &tokio::runtime::Runtime,
    served: &Served,
    path: &str,
    connections: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let url = format!("http://{}{path}", served.addr);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, token) = (client.clone(), url.clone(), served.tokens[0].clone());
        tasks.push(runtime.spawn(async move {
            let mut times = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                let response = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await.unwrap();
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(runtime.block_on(task).unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn api(runtime: &tokio::runtime::Runtime) {
    let incidents = env("SKYNET_BENCH_INCIDENTS", 100_000);
    let seconds = env("SKYNET_BENCH_SECONDS", 10);
    let served = serve(runtime, 1);
    let mut outbox = Outbox::open(&served.db).unwrap();
    let filled = Instant::now();
    let departments = ["emergency", "streets", "police-3", "fire"];
    let levels = ["I", "II", "III", "IV"];
    for chunk in (0..incidents).collect::<Vec<_>>().chunks(2000) {
        let events: Vec<OutboxEvent> = chunk
            .iter()
            .map(|&n| {
                let i = incident(
                    n,
                    departments[(n % 4) as usize],
                    levels[((n / 4) % 4) as usize],
                );
                OutboxEvent::Incident(CloudEvent::incident("bench", &i))
            })
            .collect();
        outbox.commit(&events, None).unwrap();
    }
    println!(
        "api: {incidents} incidents stored in {:.1} s; 16 connections, {seconds} s per route",
        filled.elapsed().as_secs_f64()
    );
    let duration = Duration::from_secs(seconds);
    let (base_rate, base) = load(runtime, &served, "/api/v1/me", 16, duration);
    println!(
        "  GET /api/v1/me (baseline):                     {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        base_rate,
        ms(percentile(&base, 0.5)),
        ms(percentile(&base, 0.99))
    );
    for path in [
        "/api/v1/incidents?limit=50",
        "/api/v1/incidents?limit=50&level=I,II&department=streets&state=open",
    ] {
        let (rate, times) = load(runtime, &served, path, 16, duration);
        println!(
            "  GET {path:<60} {:>8.0} req/s ({:.2} of the baseline), p50 {:.2} ms, p99 {:.2} ms",
            rate,
            rate / base_rate,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99))
        );
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    // reqwest is built without a crypto provider of its own (skynet installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = common::tokio_runtime();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let flood = only
        .as_deref()
        .is_none_or(|o| "live flood".contains(o) || o == "live");
    if flood
        || only
            .as_deref()
            .is_none_or(|o| "live push".contains(o) || o == "live")
    {
        let clients = env("SKYNET_BENCH_CLIENTS", 200) as usize;
        let seconds = env("SKYNET_BENCH_SECONDS", 10);
        let reference = live_push(&runtime, clients, 1, seconds, true);
        if flood {
            // 2,000 sockets each side of loopback: more than a default soft limit of 1024.
            raise_fd_limit();
            let seconds = env("SKYNET_BENCH_FLOOD_SECONDS", 5);
            let p99 = live_push(&runtime, 200, 10, seconds, false);
            println!(
                "live flood: p99 {:.2} ms with 2,000 streams against {:.2} ms with {clients}: ratio {:.2}",
                ms(p99),
                ms(reference),
                p99.as_secs_f64() / reference.as_secs_f64().max(1e-9)
            );
        }
    }
    if only.as_deref().is_none_or(|o| o == "api") {
        api(&runtime);
    }
}
