//! The console role (issue 23): `skynet run --role console` keeps a projection of
//! SKYNET_INCIDENTS. Incident CloudEvents of two districts (their `source`
//! `skynet/<cluster name>`) are published into the stream directly, as the districts'
//! scorers' NATS sinks would (or the city hub's stream sourcing them); the console lists
//! each with its district, filters by it, keeps the latest revision of each incident
//! whatever order revisions come in, and sends an acknowledgement as a signed case-status
//! event on `[cases]` instead of applying it, showing the revision that comes back. With a
//! real scorer beside it (NATS sink into SKYNET_INCIDENTS, `[cases]` with the same secret),
//! the console's acknowledgement is applied by the scorer and its revision comes back.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use common::{PrivateNats, console_get, eventually, free_port, incident_body, repo, tokio_runtime};
use futures_util::StreamExt;
use serde_json::Value;
use skynet::{RunOptions, pipeline};
use skynet_cluster::Role;
use skynet_core::{Incident, Shutdown};
use skynet_emit::CloudEvent;
use skynet_serve::console::{ConsoleStore, TokenKind, User};

/// Generous for a loaded 2-core machine; every wait is on a condition.
const WAIT: Duration = Duration::from_secs(45);
const SECRET: &str = "console-cases-secret-5b1e";

fn config_text(dir: &Path, url: &str, listen: SocketAddr) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    format!(
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

[cases]
url = "{url}"
sources = ["case-system"]
secret = "{SECRET}"

# An edge's camera: no edge runs here, so no node holds it.
[[cameras]]
id = "cam-1"
owner = "police"
uri = "rtsp://127.0.0.1:9/cam"
grid = "G-0101"
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&repo().join("models/yolox_nano.toml")),
        dir = esc(dir),
    )
}

/// Publishes `incident` from `district` as its scorer's NATS sink does.
async fn publish(js: &jetstream::Context, district: &str, incident: &Incident) {
    let event = CloudEvent::incident(district, incident);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    let subject = format!("skynet.incidents.{}.{}", incident.grid, incident.category);
    js.publish_with_headers(subject, headers, serde_json::to_vec(&event).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        console_get(&self.client, &self.base, &self.token, path).await
    }

    /// (id, district, revision) of every incident listed at `query`.
    async fn incidents(&self, query: &str) -> Vec<(String, String, u64)> {
        let Some(page) = self.get(&format!("/api/v1/incidents{query}")).await else {
            return Vec::new();
        };
        let mut listed: Vec<(String, String, u64)> = page["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_string(),
                    i["district"].as_str().unwrap_or_default().to_string(),
                    i["revision"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        listed.sort();
        listed
    }
}

/// Polls `read` until `done` holds (or fails after [`WAIT`] naming `what`); the last value.
fn wait_for<T>(what: &str, mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let mut last = None;
    let ok = eventually(WAIT, || {
        let value = read();
        let ok = done(&value);
        last = Some(value);
        ok
    });
    assert!(ok, "{what}");
    last.unwrap()
}

/// A console-role pipeline with its state in `state` and the user `ana` (an operator), and
/// its API as `ana`.
fn start_console(
    state: &Path,
    url: &str,
) -> (
    Shutdown,
    JoinHandle<Result<skynet::RunSummary, String>>,
    Api,
) {
    std::fs::create_dir_all(state).unwrap();
    let listen = free_port();
    let config = common::pipeline_config(state, &config_text(state, url, listen));
    let token = {
        let store = ConsoleStore::open(&state.join("outbox.sqlite")).unwrap();
        let user = User {
            name: "ana".into(),
            role: skynet_serve::console::Role::Operator,
            department: None,
            owner: None,
        };
        store
            .put_user(&user, "a long and unguessable passphrase 7f3k")
            .unwrap();
        store
            .issue_token("ana", TokenKind::Api, Some("test"), None)
            .unwrap()
    };
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let run = std::thread::spawn(move || {
        pipeline::run(
            &config,
            RunOptions {
                shutdown: stop,
                wait_for_shutdown: true,
                role: Role::Console,
                ..RunOptions::default()
            },
        )
        .map_err(|e| e.to_string())
    });
    // Plain HTTP; reqwest is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://{listen}"),
        token,
    };
    (shutdown, run, api)
}

#[test]
fn a_console_role_projects_the_incidents_of_every_district_and_filters_by_district() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let rt = tokio_runtime();
    let js = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        // As the districts' NATS sinks create it.
        js.get_or_create_stream(stream::Config {
            name: "SKYNET_INCIDENTS".into(),
            subjects: vec!["skynet.incidents.>".into(), "skynet.grid_risk.>".into()],
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });

    // Before the console starts: two north incidents (the second's revision 2 before its
    // revision 1, as a failover's replay may order them), one south.
    rt.block_on(async {
        publish(&js, "north", &incident_body("inc-n1", 1, "G-0101")).await;
        publish(&js, "north", &incident_body("inc-n2", 2, "G-0102")).await;
        publish(&js, "north", &incident_body("inc-n2", 1, "G-0102")).await;
        publish(&js, "south", &incident_body("inc-s1", 1, "G-0201")).await;
    });

    let (shutdown, run, api) = start_console(&dir.path().join("console"), &url);

    let all = wait_for(
        "the console lists the three incidents of both districts",
        || rt.block_on(api.incidents("")),
        |listed| listed.len() == 3,
    );
    assert_eq!(
        all,
        [
            ("inc-n1".to_string(), "north".to_string(), 1),
            ("inc-n2".to_string(), "north".to_string(), 2),
            ("inc-s1".to_string(), "south".to_string(), 1),
        ],
        "each with its district; the latest revision of inc-n2 kept over the older one after it"
    );
    let north = rt.block_on(api.incidents("?district=north"));
    assert_eq!(
        north
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["inc-n1", "inc-n2"]
    );
    let south = rt.block_on(api.incidents("?district=south"));
    assert_eq!(
        south
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["inc-s1"]
    );
    assert!(rt.block_on(api.incidents("?district=east")).is_empty());

    // A new event while it runs, and one again (the same event id): shown once.
    rt.block_on(async {
        publish(&js, "south", &incident_body("inc-s2", 1, "G-0202")).await;
        publish(&js, "south", &incident_body("inc-s1", 1, "G-0201")).await;
    });
    let south = wait_for(
        "the south incident published while running is shown",
        || rt.block_on(api.incidents("?district=south")),
        |listed| listed.len() == 2,
    );
    assert_eq!(south[0], ("inc-s1".to_string(), "south".to_string(), 1));

    // The Sources view: the cluster's members, and no node running the camera.
    let cameras = wait_for(
        "the Sources view shows this console as a member of the cluster",
        || {
            rt.block_on(api.get("/api/v1/cameras"))
                .unwrap_or(Value::Null)
        },
        |c| {
            c["cluster"]["members"]["console"]
                .as_array()
                .is_some_and(|m| m.iter().any(|n| n == "city-console-1"))
        },
    );
    assert_eq!(cameras["cluster"]["name"], "city");
    assert_eq!(cameras["cameras"][0]["id"], "cam-1");
    assert!(cameras["cameras"][0]["node"].is_null(), "{cameras}");

    // An acknowledgement goes out as a signed case-status event on [cases]; the scorer's
    // revision (here published as a scorer would) is what the console then shows.
    let ack = {
        let (client, base, token) = (api.client.clone(), api.base.clone(), api.token.clone());
        rt.spawn(async move {
            client
                .post(format!("{base}/api/v1/incidents/inc-n1/ack"))
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let (subject, body, signature) = rt.block_on(async {
        // The console creates the stream when it sends, if no scorer has yet.
        let until = tokio::time::Instant::now() + WAIT;
        let mut stream = loop {
            if let Ok(stream) = js.get_stream("SKYNET_CASES").await {
                break stream;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the console sends the acknowledgement on [cases]"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stream.info().await;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("the acknowledgement is sent as a case-status event")
            .unwrap()
            .unwrap();
        let signature = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Skynet-Signature"))
            .map(|v| v.as_str().to_string());
        (
            message.subject.to_string(),
            message.payload.to_vec(),
            signature,
        )
    });
    assert_eq!(subject, "skynet.cases.inc-n1");
    let intake = skynet_risk::case_status::CaseIntake {
        subject_prefix: "skynet.cases".into(),
        sources: ["skynet-console".to_string()].into(),
        secret: Some(skynet_core::Secret::from(SECRET.to_string())),
        departments: Default::default(),
    };
    let event = intake
        .check(&subject, &body, signature.as_deref())
        .expect("signed with [cases] secret, from the console's source");
    assert_eq!(
        event.status.status,
        skynet_core::IncidentState::Acknowledged
    );
    assert_eq!(event.status.assignee.as_deref(), Some("ana"));
    // The scorer applies it: revision 2, acknowledged, as feedback.
    let mut applied = incident_body("inc-n1", 2, "G-0101");
    applied.state = skynet_core::IncidentState::Acknowledged;
    applied.change = skynet_core::IncidentChange::Feedback;
    rt.block_on(publish(&js, "north", &applied));
    let answer: Value = serde_json::from_str(&rt.block_on(ack).unwrap()).unwrap();
    let north = wait_for(
        "the scorer's revision is shown",
        || rt.block_on(api.incidents("?district=north")),
        |listed| listed.first().is_some_and(|(_, _, r)| *r == 2),
    );
    assert_eq!(north[0].0, "inc-n1");
    assert_eq!(answer["incident"]["acknowledged"]["by"], "ana", "{answer}");

    shutdown.trigger();
    run.join().unwrap().unwrap();
}

/// A scorer of cluster `city` with a NATS sink into SKYNET_INCIDENTS and `[cases]` with the
/// console's secret.
fn scorer_text(dir: &Path, url: &str) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    format!(
        r#"
[node]
name = "scorer-1"

[cluster]
url = "{url}"
name = "city"
failover_s = 3

[grids]
file = "{grids}"

[detect]
model = "{model}"

[risk]
half_life_s = 600
close_after_s = 600

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "nats"
url = "{url}"

[cases]
url = "{url}"
sources = ["case-system"]
secret = "{SECRET}"

# The edges' camera: a scorer runs none.
[[cameras]]
id = "cam-1"
owner = "police"
uri = "rtsp://127.0.0.1:9/cam"
grid = "G-0101"
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&repo().join("models/yolox_nano.toml")),
        dir = esc(dir),
    )
}

#[test]
fn an_acknowledgement_in_the_city_console_is_applied_by_the_scorer_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let rt = tokio_runtime();
    let cluster = skynet_cluster::ClusterConfig::for_url(url.clone());
    let mut client = None;
    assert!(
        eventually(WAIT, || {
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

    let scorer_dir = dir.path().join("scorer");
    std::fs::create_dir_all(&scorer_dir).unwrap();
    let scorer_config = common::pipeline_config(&scorer_dir, &scorer_text(&scorer_dir, &url));
    let scorer_stop = Shutdown::new();
    let scorer = {
        let stop = scorer_stop.clone();
        std::thread::spawn(move || {
            pipeline::run(
                &scorer_config,
                RunOptions {
                    shutdown: stop,
                    wait_for_shutdown: true,
                    role: Role::Scorer,
                    ..RunOptions::default()
                },
            )
            .map_err(|e| e.to_string())
        })
    };
    let (shutdown, run, api) = start_console(&dir.path().join("console"), &url);

    // Gas in G-0101: the scorer opens an incident, its NATS sink publishes it.
    let observation = skynet_core::Observation {
        at: chrono::Utc::now(),
        source: skynet_core::SourceRef::sensor(&skynet_core::DeviceId::new("gas-1")),
        grid: skynet_core::GridId::new("G-0101"),
        category: "gas_leak".into(),
        weight: 0.6,
        confidence: 1.0,
        evidence: Default::default(),
    };
    let listed = wait_for(
        "the scorer's incident reaches the city console, district `city`",
        || {
            // Published until the scorer owns the cell and has taken it (a message before
            // it joined is read too: its consumer starts at the stream's beginning).
            if rt.block_on(api.incidents("")).is_empty() {
                rt.block_on(async {
                    js.publish(
                        skynet_cluster::bus::observation_subject("G-0101"),
                        serde_json::to_vec(&observation).unwrap().into(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap()
                });
            }
            rt.block_on(api.incidents("?district=city"))
        },
        |listed| !listed.is_empty(),
    );
    let (id, _, before) = listed[0].clone();
    let answer = rt.block_on(async {
        api.client
            .post(format!("{}/api/v1/incidents/{id}/ack", api.base))
            .bearer_auth(&api.token)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["incident"]["acknowledged"]["by"], "ana", "{answer}");
    let state = |detail: &Value| {
        (
            detail["incident"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            detail["incident"]["revision"].as_u64().unwrap_or_default(),
        )
    };
    wait_for(
        "the scorer applies the console's acknowledgement and its revision comes back",
        || {
            rt.block_on(api.get(&format!("/api/v1/incidents/{id}")))
                .map(|d| state(&d))
                .unwrap_or_default()
        },
        |(state, revision)| state == "acknowledged" && *revision > before,
    );

    shutdown.trigger();
    run.join().unwrap().unwrap();
    scorer_stop.trigger();
    scorer.join().unwrap().unwrap();
}

/// A console signs its users' status changes with `[cases] secret`, and the scorers take a
/// console's changes only when signed: without the secret it refuses to start (before it
/// joins: no NATS is reached), naming the key and the variable the city configs read it from.
#[test]
fn a_console_without_a_cases_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret_line = format!("secret = \"{SECRET}\"");
    // Nothing listens there: the refusal comes before any connection.
    let text = config_text(dir.path(), "nats://127.0.0.1:9", free_port());
    assert_eq!(text.matches(&secret_line).count(), 1);
    for (what, text) in [
        ("no secret", text.replace(&secret_line, "")),
        (
            "an empty secret",
            text.replace(&secret_line, "secret = \"\""),
        ),
    ] {
        let config = common::pipeline_config(dir.path(), &text);
        let err = pipeline::run(
            &config,
            RunOptions {
                role: Role::Console,
                ..RunOptions::default()
            },
        )
        .expect_err(what)
        .to_string();
        assert!(err.contains("[cases] secret"), "{what}: {err}");
        assert!(err.contains("SKYNET_CASES_SECRET"), "{what}: {err}");
    }
}
