//! deploy/nats/nats-cluster.conf's users, one per role, against a nats-server of the test's
//! own (spare ports, its own store, stopped by its pid) running the committed file with only
//! its `cluster {}` block taken out (a lone clustered server refuses to start JetStream):
//! accounts, users, permissions and `max_payload` are the committed ones. Each role does
//! what it does in a city (joins, holds leases, publishes on the bus, saves cell state,
//! delivers incidents and grid risk, sends status changes) and is refused what belongs to
//! another role. A refusal is the server's permissions violation for that subject, waited
//! for as a condition.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use skynet_cluster::bus::{cell_key, cells_bucket, observation_stream, observation_subject};
use skynet_cluster::{ClusterConfig, Leases, Membership, Role};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common::nats_server::spare_port;
use crate::common::{eventually, repo};

/// Far above what any step takes; only a failure trips it.
const GUARD: Duration = Duration::from_secs(30);

// nats-server parses an environment variable's value as a config value: plain passwords.
const EDGE_PASSWORD: &str = "edge-pw-3c1f";
const SCORER_PASSWORD: &str = "scorer-pw-9a2e";
const CONSOLE_PASSWORD: &str = "console-pw-41bd";
const CASE_SYSTEM_PASSWORD: &str = "case-pw-77d0";

/// One nats-server running the committed cluster config, unclustered; killed when dropped.
struct Server {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let committed = std::fs::read_to_string(repo().join("deploy/nats/nats-cluster.conf"))
            .expect("deploy/nats/nats-cluster.conf");
        let block = "cluster {\n  name: skynet\n  listen: 0.0.0.0:6222\n}\n";
        assert_eq!(
            committed.matches(block).count(),
            1,
            "nats-cluster.conf: expected its cluster block exactly once"
        );
        let config = dir.join("nats-cluster-single.conf");
        std::fs::write(&config, committed.replace(block, "")).unwrap();
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let log = dir.join("nats.log");
        let port = spare_port();
        // Debian puts it in /usr/sbin, which a non-root user's PATH may lack.
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--server_name", "nats-0", "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            // Its own monitoring port: the config's 8222 may be taken on this machine.
            .args(["-m", &spare_port().to_string()])
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .env_clear()
            .env("SKYNET_EDGE_NATS_PASSWORD", EDGE_PASSWORD)
            .env("SKYNET_SCORER_NATS_PASSWORD", SCORER_PASSWORD)
            .env("SKYNET_CONSOLE_NATS_PASSWORD", CONSOLE_PASSWORD)
            .env("CASE_SYSTEM_NATS_PASSWORD", CASE_SYSTEM_PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        let server = Self {
            port,
            log,
            child: Some(child),
        };
        assert!(
            eventually(GUARD, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "nats-server did not start on {port}: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        server
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A role's connection, with the server's errors (permissions violations) on a channel.
struct RoleClient {
    user: &'static str,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
    config: ClusterConfig,
}

async fn connect(server: &Server, user: &'static str, password: &str) -> RoleClient {
    let (tx, errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    RoleClient {
        user,
        client,
        errors,
        config: ClusterConfig::for_url(server.url(user, password)),
    }
}

impl RoleClient {
    /// Publishes on `subject` and waits for the server's permissions violation naming it.
    async fn refused(&mut self, subject: &str) {
        self.client
            .publish(subject.to_string(), "refused?".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.errors.recv()).await {
                Ok(Some(e)) => {
                    let e_lower = e.to_lowercase();
                    if e_lower.contains("permissions violation") && e.contains(subject) {
                        return;
                    }
                }
                Ok(None) => panic!("{}: the connection's events ended", self.user),
                Err(_) => panic!(
                    "{} may publish on {subject}: no permissions violation within {GUARD:?}",
                    self.user
                ),
            }
        }
    }

    /// Publishes `payload` on `subject` into a stream and waits for JetStream's ack.
    async fn stored(&self, subject: &str, payload: Vec<u8>) {
        jetstream::new(self.client.clone())
            .publish(subject.to_string(), payload.into())
            .await
            .unwrap_or_else(|e| panic!("{} publishes on {subject}: {e}", self.user))
            .await
            .unwrap_or_else(|e| panic!("{} on {subject}: no ack: {e}", self.user));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_s_nats_user_may_do_its_role_s_work_and_nothing_of_another_s() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut edge = connect(&server, "edge", EDGE_PASSWORD).await;
    let mut scorer = connect(&server, "scorer", SCORER_PASSWORD).await;
    let mut console = connect(&server, "console", CONSOLE_PASSWORD).await;

    // An edge: joins, holds a camera's lease, publishes an observation and a reading.
    let edge_member = Membership::join(&edge.client, &edge.config, "edge-a", Role::Edge)
        .await
        .expect("an edge joins");
    let leases = Leases::open(&edge.client, &edge.config, "edge-a")
        .await
        .expect("an edge opens the leases");
    let camera = Leases::camera_key("cam-1");
    assert!(
        leases.try_acquire(&camera).await.unwrap().is_some(),
        "an edge takes a free camera's lease"
    );
    observation_stream(&edge.client, &edge.config)
        .await
        .expect("an edge makes the observation stream");
    edge.stored(&observation_subject("G-1"), b"{}".to_vec())
        .await;
    edge.stored("skynet.readings.G-1.gas-1", b"{}".to_vec())
        .await;

    // A scorer: joins, saves a cell's state as large as the bucket takes it (8 MiB values:
    // the conf's max_payload must let them through), and delivers incidents and grid risk
    // into SKYNET_INCIDENTS as its NATS sink does.
    let scorer_member = Membership::join(&scorer.client, &scorer.config, "scorer-1", Role::Scorer)
        .await
        .expect("a scorer joins");
    let cells = cells_bucket(&scorer.client, &scorer.config)
        .await
        .expect("a scorer opens the cells");
    cells
        .put(cell_key("G-1"), vec![b'x'; 2 * 1024 * 1024].into())
        .await
        .expect("a scorer saves a 2 MiB cell");
    jetstream::new(scorer.client.clone())
        .get_or_create_stream(stream::Config {
            name: "SKYNET_INCIDENTS".into(),
            subjects: vec!["skynet.incidents.>".into(), "skynet.grid_risk.>".into()],
            ..Default::default()
        })
        .await
        .expect("a scorer's sink makes SKYNET_INCIDENTS");
    scorer
        .stored("skynet.incidents.G-1.gas_leak", b"{}".to_vec())
        .await;
    scorer.stored("skynet.grid_risk.G-1", b"{}".to_vec()).await;

    // The console: joins, reads who holds a camera, sends a status change into SKYNET_CASES.
    let console_member =
        Membership::join(&console.client, &console.config, "console-1", Role::Console)
            .await
            .expect("the console joins");
    let seen = Leases::open(&console.client, &console.config, "console-1")
        .await
        .expect("the console opens the leases to read them");
    assert_eq!(
        seen.holder(&camera).await.unwrap().as_deref(),
        Some("edge-a")
    );
    jetstream::new(console.client.clone())
        .get_or_create_stream(stream::Config {
            name: "SKYNET_CASES".into(),
            subjects: vec!["skynet.cases.>".into()],
            ..Default::default()
        })
        .await
        .expect("the console makes SKYNET_CASES");
    console.stored("skynet.cases.inc-1", b"{}".to_vec()).await;

    // What each role may not do.
    for subject in [
        "skynet.incidents.G-1.gas_leak",
        "skynet.grid_risk.G-1",
        "skynet.cases.inc-1",
        "$KV.skynet_cells.cell.G-1",
        "$KV.skynet_members.scorer.scorer-1",
        "$JS.API.STREAM.DELETE.SKYNET_OBSERVATIONS",
        "$JS.API.STREAM.PURGE.KV_skynet_leases",
    ] {
        edge.refused(subject).await;
    }
    for subject in [
        "skynet.cases.inc-1",
        "skynet.observations.G-1",
        "skynet.readings.G-1.gas-1",
        "$KV.skynet_leases.camera.cam-1",
        "$KV.skynet_members.edge.edge-a",
        "$JS.API.STREAM.DELETE.KV_skynet_leases",
        "$JS.API.STREAM.UPDATE.KV_skynet_members",
    ] {
        scorer.refused(subject).await;
    }
    for subject in [
        "skynet.incidents.G-1.gas_leak",
        "skynet.grid_risk.G-1",
        "skynet.observations.G-1",
        "$KV.skynet_leases.camera.cam-1",
        "$KV.skynet_cells.cell.G-1",
        "$KV.skynet_members.scorer.scorer-1",
        "$JS.API.STREAM.PURGE.SKYNET_INCIDENTS",
    ] {
        console.refused(subject).await;
    }

    // Nothing refused was stored: the lease is still the edge's, the cell the scorer's.
    assert_eq!(
        seen.holder(&camera).await.unwrap().as_deref(),
        Some("edge-a")
    );
    let cell = cells.get(cell_key("G-1")).await.unwrap().unwrap();
    assert_eq!(cell.len(), 2 * 1024 * 1024);

    drop(edge_member);
    drop(scorer_member);
    drop(console_member);
    drop(server);
}
