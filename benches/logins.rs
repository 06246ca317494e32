//! Logins under a password-guessing attack (issue 22), on the real HTTP server and state
//! database, with the real argon2 cost.
//!
//! The console sits behind a trusted proxy (loopback, in `[api] trusted_proxies`), so each
//! request names its client in `X-Forwarded-For`. The attack: 1,000 client addresses, 64
//! requests in flight at once, each a wrong password for a name taken in turn from the
//! legitimate user's own (`op`), another real one (`adm`), common ones (`admin`, `root`) and
//! a fresh one per address; a 429 sends the attacker on to its next address. While it runs,
//! legitimate users log in one after another, 100 ms apart:
//!
//! - `op` from the browser it logged in from before (its device cookie), the case the
//!   device cookies are for: the account is the one being guessed at;
//! - `eng` from a new browser (no device cookie) on an address of its own: an account
//!   nobody guesses at, waiting for the shared password checks like everyone else.
//!
//! Measured: each one's login time, p50 and p99, against the same logins with no attack in
//! the same run, as a ratio of p99s; and the attack's attempts/s, and how many were slowed
//! (429), checked and refused (401), or turned away for want of a free check (503).
//!
//! `cargo bench --bench logins`; `SKYNET_BENCH_LOGINS` (40) sets the logins per user per
//! phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use skynet_core::Health;
use skynet_serve::console::{ApiConfig, Console, ConsoleStore, Role};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../crates/skynet-serve/tests/support/fixture.rs"]
mod fixture;

const PASSWORD: &str = "correct horse battery staple";
const ATTACK_ADDRESSES: u32 = 1000;
const ATTACK_IN_FLIGHT: usize = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Server {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    http: reqwest::Client,
}

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let config = ApiConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..ApiConfig::local("127.0.0.1:0".parse().unwrap())
    };
    let console = Arc::new(Console::open(config, &db, None, Health::new(), None).unwrap());
    let store = ConsoleStore::open(&db).unwrap();
    fixture::put_users(
        &store,
        &[
            ("op", Role::Operator, None, None),
            ("adm", Role::Admin, None, None),
            ("eng", Role::Engineer, None, None),
        ],
        PASSWORD,
    );
    let addr = fixture::serve(console);
    Server {
        _dir: dir,
        addr,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(ATTACK_IN_FLIGHT + 4)
            .build()
            .unwrap(),
    }
}

impl Server {
    /// One login; the status, and the device cookie it set.
    async fn login(
        &self,
        name: &str,
        password: &str,
        client: &str,
        device: Option<&str>,
    ) -> (u16, Option<String>) {
        let mut request = self
            .http
            .post(format!("http://{}/api/v1/login", self.addr))
            .header("content-type", "application/json")
            .header("x-forwarded-for", client)
            .body(json!({"username": name, "password": password}).to_string());
        if let Some(device) = device {
            request = request.header("cookie", format!("skynet_device={device}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let device = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("skynet_device="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let _ = response.bytes().await;
        (status, device)
    }
}

/// `count` logins of `name` one after another, `gap` apart: each one's time (a refused
/// login counts at its time too), and the statuses other than 200.
async fn logins(
    server: &Server,
    name: &str,
    client: &str,
    device: Option<&str>,
    count: u64,
    gap: Duration,
) -> (Vec<Duration>, Vec<u16>) {
    let mut times = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let (status, _) = server.login(name, PASSWORD, client, device).await;
        times.push(started.elapsed());
        if status != 200 {
            refused.push(status);
        }
        tokio::time::sleep(gap).await;
    }
    times.sort();
    (times, refused)
}

#[derive(Default)]
struct AttackCounts {
    attempts: AtomicU64,
    refused: AtomicU64,
    slowed: AtomicU64,
    busy: AtomicU64,
}

fn main() {
    // reqwest is built without a crypto provider of its own (skynet installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = common::tokio_runtime();
    let count = env("SKYNET_BENCH_LOGINS", 40);
    runtime.block_on(async move {
        let server = Arc::new(serve().await);
        let (status, device) = server.login("op", PASSWORD, "192.0.2.10", None).await;
        assert_eq!(status, 200);
        let device = device.expect("a device cookie");
        let gap = Duration::from_millis(100);

        let calm_op = logins(&server, "op", "192.0.2.10", Some(&device), count, gap).await;
        let calm_eng = logins(&server, "eng", "192.0.2.20", None, count, gap).await;

        let counts = Arc::new(AttackCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut attackers = Vec::new();
        for _ in 0..ATTACK_IN_FLIGHT {
            let (server, counts, stop, next) = (
                Arc::clone(&server),
                Arc::clone(&counts),
                Arc::clone(&stop),
                Arc::clone(&next),
            );
            attackers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let address = (n % u64::from(ATTACK_ADDRESSES)) as u32;
                    let client = format!("198.18.{}.{}", address / 250, address % 250);
                    let fresh = format!("user{address}");
                    let name = match n / u64::from(ATTACK_ADDRESSES) % 5 {
                        0 => "op",
                        1 => "adm",
                        2 => "admin",
                        3 => "root",
                        _ => fresh.as_str(),
                    };
                    let (status, _) = server.login(name, "Password123!", &client, None).await;
                    counts.attempts.fetch_add(1, Ordering::Relaxed);
                    match status {
                        401 => &counts.refused,
                        429 => &counts.slowed,
                        _ => &counts.busy,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Let the attack fill the queue of password checks first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let attacked_op = logins(&server, "op", "192.0.2.10", Some(&device), count, gap).await;
        let attacked_eng = logins(&server, "eng", "192.0.2.20", None, count, gap).await;
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            let _ = attacker.await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let attempts = counts.attempts.load(Ordering::Relaxed);
        println!(
            "attack: {attempts} attempts from {ATTACK_ADDRESSES} addresses in {seconds:.1} s ({:.0}/s): {} slowed (429), {} checked and refused (401), {} turned away busy (503)",
            attempts as f64 / seconds,
            counts.slowed.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
            counts.busy.load(Ordering::Relaxed),
        );
        for (who, calm, attacked) in [
            ("op with its device cookie (the account guessed at)", &calm_op, &attacked_op),
            ("eng from a new browser (no device cookie)", &calm_eng, &attacked_eng),
        ] {
            let ((calm, calm_refused), (attacked, attacked_refused)) = (calm, attacked);
            let (calm99, attacked99) = (percentile(calm, 0.99), percentile(attacked, 0.99));
            println!(
                "{who}: p50 {:.1} ms, p99 {:.1} ms without the attack; p50 {:.1} ms, p99 {:.1} ms under it: p99 ratio {:.2}; not logged in: {calm_refused:?} without, {attacked_refused:?} under",
                ms(percentile(calm, 0.5)),
                ms(calm99),
                ms(percentile(attacked, 0.5)),
                ms(attacked99),
                attacked99.as_secs_f64() / calm99.as_secs_f64().max(1e-9)
            );
        }
    });
}
