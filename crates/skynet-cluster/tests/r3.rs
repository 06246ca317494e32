//! R3: the city's buckets and observation stream on a 3-node JetStream cluster survive the
//! loss of one node. Three nats-servers of the test's own on loopback spare ports, each with
//! its own store, all run the committed deploy/nats/nats-cluster.conf (users and
//! permissions included: the edges and the scorer connect as their roles' users) with only
//! what a deployment also gives on the command line (server name, routes, ports). Members join, a lease is held and observations are published with
//! `[cluster] replicas = 3`; then the server leading the observation stream is killed (by
//! its pid, SIGKILL), and the cluster goes on: heartbeats continue, the lease is renewed,
//! the stream takes new publishes and serves every message. Every wait is for a condition
//! under a guard; the times are printed, not asserted.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use skynet_cluster::bus::{OBSERVATIONS_STREAM, observation_stream, observation_subject};
use skynet_cluster::{ClusterConfig, ClusterError, LEASES_BUCKET, Lease, Leases, MEMBERS_BUCKET};
use skynet_cluster::{Membership, Role};
use tokio::time::Instant;

/// The default: heartbeats every 5 s, members and leases expire after 10 s, longer than a
/// leader election after the kill plus a request timed out against the dead leader.
const FAILOVER_S: f64 = 15.0;
/// Far above any expected wait (cluster forming, a leader election), so only a failure
/// trips it; the whole test stays well under a minute when it passes.
const GUARD: Duration = Duration::from_secs(25);
/// How long after the kill the members' views may take to show both members again.
const VIEWS_GUARD: Duration = Duration::from_secs(45);
// Each role connects as its own user of the committed config (edge, scorer).
const EDGE_PASSWORD: &str = "r3-test-edge-pw";
const SCORER_PASSWORD: &str = "r3-test-scorer-pw";
const BEFORE: usize = 20;
const AFTER: usize = 20;

// The tests' one allocator of spare ports (process-unique, below the ephemeral range).
#[path = "../../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::spare_port;

fn nats_server_bin() -> &'static str {
    // Debian puts it in /usr/sbin, which a non-root user's PATH may lack.
    if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

fn committed_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats-cluster.conf")
}

/// One node of the cluster; killed by its pid when dropped.
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(dir: &Path, name: &str, port: u16, route_port: u16, routes: &str) -> Self {
        let store = dir.join(name);
        std::fs::create_dir_all(&store).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let monitor_port = spare_port();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(committed_config())
            .args(["--server_name", name, "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            // Each its own monitoring port: the config's 8222 would clash on one machine.
            .args(["-m", &monitor_port.to_string()])
            .args(["--cluster", &format!("nats://127.0.0.1:{route_port}")])
            .args(["--routes", routes])
            .arg("-sd")
            .arg(&store)
            .env("SKYNET_EDGE_NATS_PASSWORD", EDGE_PASSWORD)
            .env("SKYNET_SCORER_NATS_PASSWORD", SCORER_PASSWORD)
            .env("SKYNET_CONSOLE_NATS_PASSWORD", "r3-test-console-pw")
            .env("CASE_SYSTEM_NATS_PASSWORD", "r3-test-case-pw")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        let node = Self {
            name: name.to_string(),
            port,
            monitor_port,
            child: Some(child),
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "{name} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    /// True when the node's /healthz answers 200: in a cluster, only once its JetStream
    /// knows the meta leader, so a stream or bucket can be made.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Retries `what` until it succeeds or the guard runs out (cluster forming, elections).
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    label: &str,
    mut what: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + GUARD;
    loop {
        match what().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < until => {
                tracing_free_debug(label, &e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{label}: not within {GUARD:?}: {e}"),
        }
    }
}

fn tracing_free_debug(label: &str, e: &dyn std::fmt::Display) {
    if std::env::var_os("R3_DEBUG").is_some() {
        eprintln!("{label}: {e}");
    }
}

/// Waits until `cond` holds, polling.
async fn until<F: std::future::Future<Output = bool>>(label: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + GUARD;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {GUARD:?}: {label}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn observation(i: usize) -> String {
    serde_json::json!({ "camera": "cam-safety-03", "grid": "G-0201", "seq": i }).to_string()
}

async fn publish(js: &jetstream::Context, i: usize) -> Result<(), String> {
    let message = jetstream::message::PublishMessage::build()
        .payload(observation(i).into())
        .message_id(format!("r3-{i}"));
    js.send_publish(observation_subject("G-0201"), message)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The revision of a member's heartbeat key as the bucket holds it now.
async fn heartbeat_revision(kv: &jetstream::kv::Store, key: &str) -> Option<u64> {
    kv.entry(key).await.ok().flatten().map(|e| e.revision)
}

/// What a lease holder did: when each renewal succeeded, and how often the lease was lost
/// (expired while renewals could not reach the bucket) and taken again.
#[derive(Default)]
struct HolderLog {
    renewed: Vec<Instant>,
    lost: u32,
}

impl HolderLog {
    fn renewed_since(&self, t: Instant) -> usize {
        self.renewed.iter().filter(|r| **r > t).count()
    }
}

/// Holds `lease` as an edge holds a camera's: renews it every heartbeat, retrying a
/// transient error at once; a lost lease is taken again when free.
async fn hold(leases: Leases, lease: Lease, heartbeat: Duration, log: Arc<Mutex<HolderLog>>) {
    let key = lease.key().to_string();
    let mut lease = Some(lease);
    let mut every = tokio::time::interval(heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        loop {
            let done = match &mut lease {
                Some(held) => match leases.renew(held).await {
                    Ok(()) => {
                        log.lock().unwrap().renewed.push(Instant::now());
                        true
                    }
                    Err(ClusterError::LeaseLost { .. }) => {
                        log.lock().unwrap().lost += 1;
                        lease = None;
                        false
                    }
                    Err(e) => {
                        tracing_free_debug("renew", &e);
                        false
                    }
                },
                None => match leases.try_acquire(&key).await {
                    Ok(Some(taken)) => {
                        lease = Some(taken);
                        true
                    }
                    Ok(None) => true,
                    Err(e) => {
                        tracing_free_debug("acquire", &e);
                        false
                    }
                },
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_cluster_goes_on_when_one_of_three_nats_servers_is_killed() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (spare_port(), spare_port())).collect();
    let routes = ports
        .iter()
        .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, r))| Node::start(dir.path(), &format!("nats-{i}"), *p, *r, &routes))
        .collect();
    until("every node's JetStream knows the meta leader", || {
        let ready = nodes.iter().all(Node::healthy);
        async move { ready }
    })
    .await;
    println!(
        "3-node cluster ready {:.2} s after the start",
        started.elapsed().as_secs_f64()
    );
    let config_for = |user: &str, password: &str| {
        let url = nodes
            .iter()
            .map(|n| format!("nats://{user}:{password}@127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        ClusterConfig {
            failover_s: FAILOVER_S,
            replicas: 3,
            ..ClusterConfig::for_url(url)
        }
    };
    let config = config_for("edge", EDGE_PASSWORD);
    let scorer_config = config_for("scorer", SCORER_PASSWORD);
    let connect = || async { skynet_cluster::connect(&config).await };

    // The buckets and the stream with three replicas: refused until the three servers have
    // found each other and elected a JetStream meta leader, so retried until then.
    let edge_client = retry("connect", connect).await;
    // A second edge (the lease's rival) and a scorer, each as its role's user.
    let rival_client = retry("connect", connect).await;
    let scorer_client = retry("connect", || async {
        skynet_cluster::connect(&scorer_config).await
    })
    .await;
    let edge = retry("the edge joins", || {
        Membership::join(&edge_client, &config, "edge-a", Role::Edge)
    })
    .await;
    let scorer = retry("the scorer joins", || {
        Membership::join(&scorer_client, &scorer_config, "scorer-1", Role::Scorer)
    })
    .await;
    let leases = retry("the lease bucket", || {
        Leases::open(&edge_client, &config, "edge-a")
    })
    .await;
    let rival = Leases::open(&rival_client, &config, "edge-b")
        .await
        .expect("the lease bucket, made");
    let mut stream = retry("the observation stream", || {
        observation_stream(&edge_client, &config)
    })
    .await;
    println!(
        "buckets and stream made {:.2} s after the start",
        started.elapsed().as_secs_f64()
    );

    let js = jetstream::new(edge_client.clone());
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    for bucket in [MEMBERS_BUCKET, LEASES_BUCKET] {
        let kv = js.get_key_value(bucket).await.unwrap();
        let status = kv.status().await.unwrap();
        assert_eq!(status.info.config.num_replicas, 3, "{bucket}");
    }

    for m in [&edge, &scorer] {
        let mut v = m.view(Role::Edge);
        tokio::time::timeout(GUARD, v.wait_for(|v| v.members == ["edge-a"]))
            .await
            .expect("the edge is seen")
            .unwrap();
        let mut v = m.view(Role::Scorer);
        tokio::time::timeout(GUARD, v.wait_for(|v| v.members == ["scorer-1"]))
            .await
            .expect("the scorer is seen")
            .unwrap();
    }
    let key = Leases::camera_key("cam-safety-03");
    let lease = leases
        .try_acquire(&key)
        .await
        .unwrap()
        .expect("free at first");
    let log = Arc::new(Mutex::new(HolderLog::default()));
    let holder = tokio::spawn(hold(leases, lease, config.timing().heartbeat, log.clone()));
    for i in 0..BEFORE {
        retry("publish before the kill", || publish(&js, i)).await;
    }

    // Kill the server leading the observation stream: its replicas elect a new leader.
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim = nodes
        .iter_mut()
        .find(|n| n.name == leader)
        .expect("the leader is one of ours");
    let members_kv = jetstream::new(scorer_client.clone())
        .get_key_value(MEMBERS_BUCKET)
        .await
        .unwrap();
    let edge_rev = heartbeat_revision(&members_kv, "edge.edge-a")
        .await
        .unwrap();
    let scorer_rev = heartbeat_revision(&members_kv, "scorer.scorer-1")
        .await
        .unwrap();
    victim.kill();
    let killed_at = Instant::now();
    println!("killed {leader}, the leader of {OBSERVATIONS_STREAM}");

    // The stream: a new leader among the survivors, and it takes publishes again (retried
    // with the same Nats-Msg-Id, so a publish whose ack was lost is stored once).
    // Asked with a short timeout: a request the dead leader never answers would otherwise
    // hide the election's time behind JetStream's default 5 s.
    let probe = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(scorer_client.clone());
    until("a new stream leader", || {
        let probe = probe.clone();
        let leader = leader.clone();
        async move {
            match probe.get_stream(OBSERVATIONS_STREAM).await {
                Ok(s) => s
                    .cached_info()
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.as_ref())
                    .is_some_and(|l| *l != leader),
                Err(_) => false,
            }
        }
    })
    .await;
    println!(
        "{OBSERVATIONS_STREAM} had a new leader {:.2} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    for i in BEFORE..BEFORE + AFTER {
        retry("publish after the kill", || publish(&js, i)).await;
    }
    println!(
        "{OBSERVATIONS_STREAM} took publishes again {:.2} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // The lease: its holder renews it on, as an edge does, through the election.
    until("two renewals after the kill", || {
        let renewed = log.lock().unwrap().renewed_since(killed_at);
        async move { renewed >= 2 }
    })
    .await;
    let (first, lost) = {
        let log = log.lock().unwrap();
        (
            log.renewed.iter().find(|t| **t > killed_at).copied(),
            log.lost,
        )
    };
    println!(
        "the lease was renewed {:.2} s after the kill ({lost} lost and taken again meanwhile)",
        (first.unwrap() - killed_at).as_secs_f64()
    );
    assert_eq!(
        retry("holder", || rival.holder(&key)).await.as_deref(),
        Some("edge-a")
    );
    assert!(
        retry("a rival's try", || rival.try_acquire(&key))
            .await
            .is_none(),
        "taken while held"
    );
    holder.abort();

    // Membership: both members' heartbeats go on, and each sees the other.
    until("heartbeats after the kill", || {
        let kv = members_kv.clone();
        async move {
            let e = heartbeat_revision(&kv, "edge.edge-a").await;
            let s = heartbeat_revision(&kv, "scorer.scorer-1").await;
            e.is_some_and(|r| r > edge_rev) && s.is_some_and(|r| r > scorer_rev)
        }
    })
    .await;
    println!(
        "both members' heartbeats stored again {:.2} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    // Each member's view of both: its watch of the bucket (an ordered consumer) may have to
    // be made anew on a survivor, which JetStream refuses while it re-places consumers.
    let views_deadline = killed_at + VIEWS_GUARD;
    loop {
        let views: Vec<(&str, Vec<String>, Vec<String>)> = [&edge, &scorer]
            .iter()
            .map(|m| (m.node(), m.members(Role::Edge), m.members(Role::Scorer)))
            .collect();
        if views
            .iter()
            .all(|(_, e, s)| e == &["edge-a"] && s == &["scorer-1"])
        {
            break;
        }
        assert!(
            Instant::now() < views_deadline,
            "both members not in both views {VIEWS_GUARD:?} after the kill: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A member whose heartbeats a view missed for longer than the expiry while its watch
    // was re-made after the kill shows as crashed there (its items moved meanwhile).
    let crashed: Vec<(String, Vec<String>)> = [&edge, &scorer]
        .iter()
        .map(|m| {
            let mut gone = m.view(Role::Edge).borrow().crashed.clone();
            gone.extend(m.view(Role::Scorer).borrow().crashed.clone());
            (m.node().to_string(), gone)
        })
        .collect();
    println!(
        "both members in both views again {:.2} s after the kill (seen as crashed meanwhile, by view: {crashed:?})",
        killed_at.elapsed().as_secs_f64()
    );

    // The stream serves every observation, before and after the kill, once each and in
    // order (read by sequence from the new leader).
    let mut read = Vec::new();
    for seq in 1..=(BEFORE + AFTER) as u64 {
        let message = retry("a stored message", || stream.get_raw_message(seq)).await;
        read.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..BEFORE + AFTER).map(observation).collect();
    assert_eq!(read, expected, "every observation once, in order");

    // Two of three replicas current, the killed one offline or lagging.
    let info = retry("stream info", || {
        let mut stream = stream.clone();
        async move { stream.info().await.cloned() }
    })
    .await;
    assert_eq!(info.state.messages, (BEFORE + AFTER) as u64);
    let cluster = info.cluster.expect("clustered");
    assert_ne!(cluster.leader.as_deref(), Some(leader.as_str()));
    let current = cluster.replicas.iter().filter(|p| p.current).count();
    assert!(
        current >= 1,
        "the leader's follower is current: {:?}",
        cluster.replicas
    );
    println!(
        "the whole R3 test took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(edge);
    drop(scorer);
    drop(nodes);
}
