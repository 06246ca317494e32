//! The city console on the three levels of deploy/three-level/: a `skynet run --role console`
//! process connected to the city hub (its `[cluster] url` the hub, as user `city`) projects
//! the city's SKYNET_INCIDENTS, which sources each district's. Incident CloudEvents are
//! published into each district's own stream, with the source `skynet/north` or
//! `skynet/south`, as a district's scorers' NATS sinks publish them. The console lists them
//! with their district and filters by it; then the hub is killed (the districts' links cut),
//! the districts go on taking incidents and revisions, and once the hub is back the console
//! shows every incident of both, each once, at its latest revision.
//!
//! A district's cluster runs in its own domain beside the city's: its members (KV
//! `skynet_members`, whose subjects `$KV.skynet_members.>` are the same in every domain) are
//! not the city's, and the city console's are not the district's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;
use skynet_cluster::{ClusterConfig, Membership, Role};
use skynet_emit::CloudEvent;

use super::three_level::{
    CITY_PASSWORD, GUARD, SKYNET_PASSWORD, STREAM, city_servers, connect, district_stream, until,
};
use crate::common::{
    console_get, eventually, free_port, incident_body, repo, skynet_bin, spawn_logged_with_env,
    terminate,
};

const PASSPHRASE: &str = "a long and unguessable passphrase 9q2w";

/// The console's config: the hub as its cluster (user `city`), the cluster named `city`.
fn console_config(dir: &Path, hub: &str, listen: SocketAddr) -> std::path::PathBuf {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    let url = hub.replace("nats://", &format!("nats://city:{CITY_PASSWORD}@"));
    let text = format!(
        r#"
[node]
name = "city-console-1"

[cluster]
url = "{url}"
name = "city"
failover_s = 3

[api]
listen = "{listen}"

[grids]
file = "{grids}"

[detect]
model = "{model}"

[outbox]
path = "{dir}/outbox.sqlite"

# A console signs its users' status changes: it refuses to start without the secret.
[cases]
url = "{url}"
sources = ["case-system"]
secret = "three-level-cases-secret"

# A district edge's camera: no edge of the city runs it.
[[cameras]]
id = "cam-1"
owner = "police"
uri = "rtsp://127.0.0.1:9/cam"
grid = "G-0101"
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&repo().join("models/yolox_nano.toml")),
        dir = esc(dir),
    );
    let path = dir.join("console.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `skynet ARGS` with `input` on stdin; its stdout, once it succeeded.
fn skynet(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(skynet_bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "skynet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes revision `n` of `id` in `district`'s own stream, as its scorers' NATS sink
/// does (source `skynet/<district>`, the CloudEvent id as `Nats-Msg-Id`), acknowledged by
/// the district's JetStream whether or not its link to the city is up.
async fn publish(js: &jetstream::Context, district: &str, id: &str, n: u32, grid: &str) {
    let incident = incident_body(id, n, grid);
    let event = CloudEvent::incident(district, &incident);
    assert_eq!(event.source, format!("skynet/{district}"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    headers.insert("ce-source", event.source.as_str());
    let subject = format!("skynet.incidents.{}.{}", incident.grid, incident.category);
    let ack = js
        .publish_with_headers(subject, headers, serde_json::to_vec(&event).unwrap().into())
        .await
        .unwrap_or_else(|e| panic!("{district}: publish {id}/{n}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("{district}: no ack for {id}/{n}: {e}"));
    assert!(!ack.duplicate, "{district}: {id}/{n} stored once");
}

/// The console's API, with a token of an operator added by `skynet users`.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    /// The console process's log so far, for a failure's message.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        console_get(&self.client, &self.base, &self.token, path).await
    }

    /// Each incident listed at `query`: id -> (district, revision); an id listed twice
    /// fails.
    async fn incidents(&self, query: &str) -> BTreeMap<String, (String, u64)> {
        let Some(page) = self.get(&format!("/api/v1/incidents{query}")).await else {
            return BTreeMap::new();
        };
        let mut listed = BTreeMap::new();
        for i in page["incidents"].as_array().into_iter().flatten() {
            let id = i["id"].as_str().unwrap_or_default().to_string();
            let district = i["district"].as_str().unwrap_or_default().to_string();
            let revision = i["revision"].as_u64().unwrap_or_default();
            let before = listed.insert(id.clone(), (district, revision));
            assert!(before.is_none(), "{id} listed twice at {query}: {page}");
        }
        listed
    }

    /// Waits until the console lists exactly `expected` at `query`.
    async fn wait_for(&self, query: &str, expected: &BTreeMap<String, (String, u64)>, when: &str) {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            let listed = self.incidents(query).await;
            if &listed == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{when}: the console lists at `{query}`\n{listed:?}\ninstead of\n{expected:?}\n{}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What `all` holds of `district`.
fn of(all: &BTreeMap<String, (String, u64)>, district: &str) -> BTreeMap<String, (String, u64)> {
    all.iter()
        .filter(|(_, (d, _))| d == district)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn district_incidents_reach_the_city_console_which_catches_up_after_a_cut_link() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, north, south, hub_port) = city_servers(dir.path());
    let rt = crate::common::tokio_runtime();

    // Each district's stream in its own domain, as its sink makes it; the city's by the
    // committed script once the hub reaches both domains.
    let districts = rt.block_on(async {
        let mut districts = Vec::new();
        for (name, server) in [("north", &north), ("south", &south)] {
            let client = connect(&server.url(), "skynet", SKYNET_PASSWORD).await;
            let js = jetstream::with_domain(client.clone(), name);
            district_stream(&js, name).await;
            districts.push((name, client, js));
        }
        let hub_client = connect(&hub.url(), "city", CITY_PASSWORD).await;
        for (name, _, _) in &districts {
            let remote = jetstream::with_domain(hub_client.clone(), *name);
            until(&format!("the hub reaches the {name} domain"), || async {
                remote.get_stream(STREAM).await.is_ok()
            })
            .await;
        }
        districts
    });
    let out = Command::new("bash")
        .arg(repo().join("deploy/three-level/create-city-streams.sh"))
        .env("CITY_NATS_URL", format!("127.0.0.1:{hub_port}"))
        .env("CITY_NATS_PASSWORD", CITY_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-city-streams.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A member of each district's cluster (a scorer), in the district's domain.
    let [north_member, south_member] = [0, 1].map(|d| {
        let (name, client, _) = &districts[d];
        rt.block_on(async {
            let config = ClusterConfig {
                name: name.to_string(),
                failover_s: 3.0,
                ..ClusterConfig::default()
            };
            Membership::join(client, &config, &format!("{name}-scorer-1"), Role::Scorer)
                .await
                .unwrap_or_else(|e| panic!("{name}: join its cluster: {e}"))
        })
    });

    // Before the console starts, two north incidents and one south.
    let mut expected: BTreeMap<String, (String, u64)> = BTreeMap::new();
    rt.block_on(async {
        for (id, grid) in [("north-inc-1", "G-0101"), ("north-inc-2", "G-0102")] {
            publish(&districts[0].2, "north", id, 1, grid).await;
            expected.insert(id.into(), ("north".into(), 1));
        }
        publish(&districts[1].2, "south", "south-inc-1", 1, "G-0201").await;
        expected.insert("south-inc-1".into(), ("south".into(), 1));
    });

    // The city console: an operator added by `skynet users`, then the process.
    let state = dir.path().join("console");
    std::fs::create_dir_all(&state).unwrap();
    let listen = free_port();
    let config = console_config(&state, &hub.url(), listen);
    let config_arg = config.to_str().unwrap();
    skynet(
        &[
            "users", "add", "ana", "--role", "operator", "--config", config_arg,
        ],
        &format!("{PASSPHRASE}\n"),
    );
    let token = skynet(&["users", "token", "ana", "--config", config_arg], "")
        .trim()
        .to_string();
    let (mut console, log) = spawn_logged_with_env(&config, &["--role", "console"], &[]);
    // Plain HTTP; reqwest is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        client: reqwest::Client::new(),
        base: format!("http://{listen}"),
        token,
        log: std::sync::Arc::clone(&log),
    };
    let log_of = || log.lock().unwrap().clone();

    rt.block_on(async {
        // Linked: both districts' incidents, each with its district, filtered by it.
        api.wait_for("", &expected, "linked").await;
        api.wait_for("?district=north", &of(&expected, "north"), "linked")
            .await;
        api.wait_for("?district=south", &of(&expected, "south"), "linked")
            .await;
        assert!(api.incidents("?district=east").await.is_empty());
        // One published while the console runs.
        publish(&districts[1].2, "south", "south-inc-2", 1, "G-0202").await;
        expected.insert("south-inc-2".into(), ("south".into(), 1));
        api.wait_for(
            "?district=south",
            &of(&expected, "south"),
            "linked, while running",
        )
        .await;
    });
    assert!(
        eventually(GUARD, || rt
            .block_on(api.get("/api/v1/cameras"))
            .is_some_and(|c| c["cluster"]["members"]["console"]
                .as_array()
                .is_some_and(|m| m.iter().any(|n| n == "city-console-1")))),
        "the console is a member of the city's cluster\n{}",
        log_of()
    );
    // Each level's cluster is its own (joined seconds ago, heartbeats every second): the
    // districts' scorers are not members of the city or of each other's cluster, the city
    // console not one of a district's.
    let cameras = rt.block_on(api.get("/api/v1/cameras")).unwrap();
    assert!(
        cameras["cluster"]["members"]["scorer"]
            .as_array()
            .is_none_or(|m| m.is_empty()),
        "the city's cluster has no scorer of its own: {}",
        cameras["cluster"]
    );
    for (name, member) in [("north", &north_member), ("south", &south_member)] {
        assert!(
            member.members(Role::Console).is_empty(),
            "{name}'s cluster has no console: {:?}",
            member.members(Role::Console)
        );
        assert_eq!(
            member.members(Role::Scorer),
            [format!("{name}-scorer-1")],
            "{name}'s cluster has its own scorer only"
        );
    }

    // The link is cut (the hub dies); each district goes on: new incidents, and a new
    // revision of one the city holds.
    hub.kill();
    rt.block_on(async {
        for i in 3..=6 {
            let id = format!("north-inc-{i}");
            publish(&districts[0].2, "north", &id, 1, "G-0101").await;
            expected.insert(id, ("north".into(), 1));
        }
        publish(&districts[0].2, "north", "north-inc-1", 2, "G-0101").await;
        expected.insert("north-inc-1".into(), ("north".into(), 2));
        publish(&districts[1].2, "south", "south-inc-3", 1, "G-0201").await;
        publish(&districts[1].2, "south", "south-inc-2", 2, "G-0202").await;
        expected.insert("south-inc-3".into(), ("south".into(), 1));
        expected.insert("south-inc-2".into(), ("south".into(), 2));
    });

    // Back: the city's sources resume, the console reconnects and catches up, nothing lost.
    hub.start();
    rt.block_on(async {
        api.wait_for("", &expected, "after the link came back")
            .await;
        api.wait_for(
            "?district=north",
            &of(&expected, "north"),
            "after the link came back",
        )
        .await;
        api.wait_for(
            "?district=south",
            &of(&expected, "south"),
            "after the link came back",
        )
        .await;
    });
    // Its log handle goes first: terminate waits for the reader to drop the last other one.
    drop(api);
    let (status, log) = terminate(&mut console, &log);
    assert!(
        status.success(),
        "the console stops cleanly: {status}\n{log}"
    );
    rt.block_on(async {
        let _ = north_member.leave().await;
        let _ = south_member.leave().await;
    });
}
