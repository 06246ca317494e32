//! Street, district and city on loopback: deploy/three-level/'s three nats-server configs,
//! rewritten only where a test must differ from a deployment (ports on 127.0.0.1, store
//! directories in a temporary folder), and its create-city-streams.sh for the city's stream.
//! A district publishes incidents and grid risk into its own domain; the city's
//! SKYNET_INCIDENTS sources them across domains over the leaf node links. Then the hub is
//! killed, the districts go on taking events, and once the hub is back the city holds every
//! event exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::common::{eventually, free_port, read_stream_in, repo};

pub(super) const STREAM: &str = "SKYNET_INCIDENTS";
/// How long any one condition may take before the test fails: the sources retry every few
/// seconds after a link comes back, so this is a guard, not an expected time.
pub(super) const GUARD: Duration = Duration::from_secs(60);

// nats-server parses an environment variable's value as a config value: quotes, spaces or
// `#` in a password break the parse (deploy/three-level/README.md says so).
pub(super) const CITY_PASSWORD: &str = "city-pw-7f3a";
pub(super) const NORTH_LEAF_PASSWORD: &str = "north-leaf-pw";
pub(super) const SOUTH_LEAF_PASSWORD: &str = "south-leaf-pw";
pub(super) const SKYNET_PASSWORD: &str = "skynet-pw";

/// `text` with each `from` replaced by its `to`; each must occur exactly once, so an edit of
/// the committed file that the test no longer matches fails here rather than testing
/// something else.
fn rewrite(name: &str, text: &str, replacements: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        assert_eq!(
            out.matches(from).count(),
            1,
            "{name}: expected `{from}` exactly once"
        );
        out = out.replace(from, to);
    }
    out
}

/// One nats-server of the test's own, started from a rewritten config; killed by its pid.
pub(super) struct Server {
    name: &'static str,
    config: PathBuf,
    client_port: u16,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub(super) fn new(
        dir: &Path,
        name: &'static str,
        committed: &str,
        replacements: &[(&str, String)],
        client_port: u16,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let source = repo().join("deploy/three-level").join(committed);
        let text = std::fs::read_to_string(&source).unwrap();
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(&config, rewrite(committed, &text, replacements)).unwrap();
        let mut server = Self {
            name,
            config,
            client_port,
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        server.start();
        server
    }

    pub(super) fn start(&mut self) {
        // Debian puts it in /usr/sbin, which a non-root user's PATH may lack.
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&self.log)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        let port = self.client_port;
        assert!(
            eventually(GUARD, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "{} did not start on {port}: {}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL, as a crash or a cut cable: nothing is flushed or said goodbye.
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) async fn connect(url: &str, user: &str, password: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url} as {user}: {e}"))
}

/// Waits for `check` to hold, polling; fails with `what` after the guard.
pub(super) async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + GUARD;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages in `stream` of the domain `js` speaks to (0 when it cannot be asked now).
pub(super) async fn count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// One stored message: its `Nats-Msg-Id`, its CloudEvent source, and for a sourced one the
/// `Nats-Stream-Source` header's origin (`<stream>:<hash of the source's API prefix>`).
struct Stored {
    id: String,
    ce_source: String,
    origin: Option<String>,
}

/// Every message of `name`, in stream order.
async fn read_all(js: &jetstream::Context, name: &str) -> Vec<Stored> {
    read_stream_in(js, name, GUARD)
        .await
        .into_iter()
        .map(|(id, _, mut headers, _)| Stored {
            id,
            ce_source: headers.remove("ce-source").unwrap_or_default(),
            // "SKYNET_INCIDENTS:GdAn74Cw 17": the origin, then the district's sequence.
            origin: headers
                .get("Nats-Stream-Source")
                .and_then(|v| v.split(' ').next().map(str::to_string)),
        })
        .collect()
}

/// A district's skynet publishing: `n` incidents and one grid-risk message, ids prefixed by
/// `tag`, each acknowledged by the district's own JetStream (so stored there, link or not).
async fn publish(js: &jetstream::Context, district: &str, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut acks = Vec::new();
    for i in 0..=n {
        let (id, subject) = if i < n {
            (
                format!("{district}-{tag}-inc-{i}"),
                format!("skynet.incidents.G-{:04}.gas_leak", i % 7),
            )
        } else {
            (
                format!("{district}-{tag}-risk"),
                "skynet.grid_risk.G-0001".to_string(),
            )
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("ce-source", format!("skynet://{district}").as_str());
        let body = serde_json::json!({"id": id, "district": district}).to_string();
        acks.push(
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap_or_else(|e| panic!("{district}: publish {id}: {e}")),
        );
        ids.push(id);
    }
    for (ack, id) in acks.into_iter().zip(&ids) {
        let ack = ack
            .await
            .unwrap_or_else(|e| panic!("{district}: no ack for {id}: {e}"));
        assert!(!ack.duplicate, "{district}: {id} stored once");
    }
    ids
}

/// Asserts that the city's stream holds exactly `expected`, each once.
async fn assert_city_holds(city: &jetstream::Context, expected: &BTreeSet<String>, when: &str) {
    let wanted = expected.len() as u64;
    until(
        &format!("the city holds {wanted} events {when}"),
        || async { count(city, STREAM).await >= wanted },
    )
    .await;
    let messages = read_all(city, STREAM).await;
    let mut seen = BTreeMap::<&str, usize>::new();
    // Which district each message came from, by the source JetStream names in its header:
    // one origin per district, whatever the events say of themselves.
    let mut origins = BTreeMap::<&str, BTreeSet<&str>>::new();
    for m in &messages {
        *seen.entry(m.id.as_str()).or_default() += 1;
        let origin = m
            .origin
            .as_deref()
            .expect("a sourced message names its origin");
        origins
            .entry(origin)
            .or_default()
            .insert(m.ce_source.as_str());
    }
    assert_eq!(
        origins.len(),
        2,
        "{when}: one origin per district: {origins:?}"
    );
    assert!(
        origins.values().all(|sources| sources.len() == 1),
        "{when}: each origin is one district: {origins:?}"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{when}: stored twice in the city: {twice:?}"
    );
    let got: BTreeSet<String> = seen.keys().map(|s| s.to_string()).collect();
    assert_eq!(&got, expected, "{when}: the city's events");
    assert_eq!(messages.len(), expected.len(), "{when}: the city's count");
}

/// District `name`'s stream in its own domain (`js`), made as its skynet sink makes it
/// (the sink's plan: incidents and grid risk in one stream).
pub(super) async fn district_stream(js: &jetstream::Context, name: &str) {
    let plan = skynet_emit::NatsSinkConfig::for_url("nats://unused").stream_plan();
    js.get_or_create_stream(stream::Config {
        name: plan.name.clone(),
        subjects: plan.subjects.clone(),
        max_age: plan.max_age,
        duplicate_window: plan.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: create {STREAM}: {e}"));
}

/// The city hub and the north and south districts, from deploy/three-level/'s configs
/// rewritten onto loopback ports and store folders in `dir`, each district leaf-linked to
/// the hub; also the hub's client port (for create-city-streams.sh).
pub(super) fn city_servers(dir: &Path) -> (Server, Server, Server, u16) {
    let (hub_port, leaf_port, hub_http) =
        (free_port().port(), free_port().port(), free_port().port());
    let hub_store = dir.join("city");
    let hub = Server::new(
        dir,
        "city-hub",
        "city-hub.conf",
        &[
            (
                "listen: 0.0.0.0:4222",
                format!("listen: 127.0.0.1:{hub_port}"),
            ),
            ("http: 0.0.0.0:8222", format!("http: 127.0.0.1:{hub_http}")),
            (
                "listen: 0.0.0.0:7422",
                format!("listen: 127.0.0.1:{leaf_port}"),
            ),
            (
                "\"/data/city\"",
                format!("{:?}", hub_store.display().to_string()),
            ),
        ],
        hub_port,
        vec![
            ("CITY_NATS_PASSWORD", CITY_PASSWORD.into()),
            ("NORTH_LEAF_PASSWORD", NORTH_LEAF_PASSWORD.into()),
            ("SOUTH_LEAF_PASSWORD", SOUTH_LEAF_PASSWORD.into()),
        ],
    );
    let district = |name: &'static str, leaf_password: &str| {
        let (port, http) = (free_port().port(), free_port().port());
        let store = dir.join(name);
        Server::new(
            dir,
            name,
            &format!("district-{name}.conf"),
            &[
                ("listen: 0.0.0.0:4222", format!("listen: 127.0.0.1:{port}")),
                ("http: 0.0.0.0:8222", format!("http: 127.0.0.1:{http}")),
                (
                    &format!("\"/data/{name}\""),
                    format!("{:?}", store.display().to_string()),
                ),
            ],
            port,
            vec![
                ("SKYNET_NATS_PASSWORD", SKYNET_PASSWORD.into()),
                (
                    "CITY_LEAF_URL",
                    format!("nats-leaf://{name}:{leaf_password}@127.0.0.1:{leaf_port}"),
                ),
            ],
        )
    };
    let north = district("north", NORTH_LEAF_PASSWORD);
    let south = district("south", SOUTH_LEAF_PASSWORD);
    (hub, north, south, hub_port)
}

#[test]
fn districts_feed_the_city_and_a_cut_link_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, north, south, hub_port) = city_servers(dir.path());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Each district's stream, made in its own domain as its skynet sink makes it.
        let mut districts = Vec::new();
        for (name, server) in [("north", &north), ("south", &south)] {
            let client = connect(&server.url(), "skynet", SKYNET_PASSWORD).await;
            let js = jetstream::with_domain(client, name);
            district_stream(&js, name).await;
            districts.push((name, js));
        }

        // The city's stream, by the committed script, once the hub answers for both
        // districts' domains over the leaf links.
        let hub_client = connect(&hub.url(), "city", CITY_PASSWORD).await;
        for (name, _) in &districts {
            let remote = jetstream::with_domain(hub_client.clone(), *name);
            until(&format!("the hub reaches the {name} domain"), || async {
                remote.get_stream(STREAM).await.is_ok()
            })
            .await;
        }
        let script = repo().join("deploy/three-level/create-city-streams.sh");
        let run_script = || {
            let out = Command::new("bash")
                .arg(&script)
                .env("CITY_NATS_URL", format!("127.0.0.1:{hub_port}"))
                .env("CITY_NATS_PASSWORD", CITY_PASSWORD)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "create-city-streams.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run_script();
        // A second run changes nothing (idempotent).
        run_script();
        let city = jetstream::with_domain(hub_client, "city");
        let info = city
            .get_stream(STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert!(
            info.config.subjects.is_empty(),
            "the city's stream captures nothing itself"
        );
        let apis: BTreeSet<_> = info
            .config
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.external.as_ref().map(|e| e.api_prefix.clone()))
            .collect();
        assert_eq!(
            apis,
            BTreeSet::from(["$JS.north.API".to_string(), "$JS.south.API".to_string()])
        );

        // Linked: what each district publishes reaches the city.
        let mut expected = BTreeSet::new();
        let mut per_district = BTreeMap::<&str, BTreeSet<String>>::new();
        for (name, js) in &districts {
            let ids = publish(js, name, "linked", 20).await;
            per_district.entry(name).or_default().extend(ids.clone());
            expected.extend(ids);
        }
        assert_city_holds(&city, &expected, "while linked").await;

        // The hub dies: each district keeps taking events in its own domain.
        hub.kill();
        for (name, js) in &districts {
            let n = if *name == "north" { 30 } else { 10 };
            let ids = publish(js, name, "cut", n).await;
            per_district.entry(name).or_default().extend(ids.clone());
            expected.extend(ids);
        }

        // Back: the city's sources resume where they stopped, and nothing is lost or doubled.
        hub.start();
        let city = jetstream::with_domain(connect(&hub.url(), "city", CITY_PASSWORD).await, "city");
        assert_city_holds(&city, &expected, "after the link came back").await;

        // Each district stored only its own events: the links carry no skynet subject, so
        // one district's publishes never land in another's stream.
        for (name, js) in &districts {
            let own: BTreeSet<String> = read_all(js, STREAM)
                .await
                .into_iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(
                &own, &per_district[name],
                "{name}'s stream holds its own events only"
            );
        }
    });
}
