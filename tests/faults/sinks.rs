//! Sinks that refuse or go away: a webhook answering 401 (a rotated token) until it is fixed
//! loses nothing to the dead letters; `skynet run` stops on SIGTERM within 30 s while a sink
//! is down; a NATS outage longer than the stream's duplicate window stores every event once;
//! an event the NATS user may not publish goes to the dead letters and the rest still flow.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use skynet::{PipelineConfig, Services};
use skynet_core::RiskEvent;
use skynet_emit::{
    Committer, DeliveryOptions, IncidentSink, NatsSink, NatsSinkConfig, Outbox,
    spawn_deliveries_with,
};

use crate::common::{
    PrivateNats, eventually, free_port, incident_revision, read_stream, repo, spawn_logged,
    terminate,
};

const SECRET: &str = "faults-webhook-secret";

fn metric(services: &Services, line_start: &str) -> Option<f64> {
    services
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// A config of sensors only (its broker is nowhere: nothing comes in), with `sinks`.
fn config_file(dir: &Path, sinks: &str) -> PathBuf {
    let text = format!(
        r#"
[node]
name = "faults-sinks"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
  [[mqtt.topics]]
  pattern = "plant/+/senml"
[[sensors]]
id = "gas-f"
kind = "gas_co"
grid = "G-0201"
owner = "safety_production"
{sinks}
"#,
        grids = repo().join("configs/city-grids.geojson").display(),
        model = repo().join("models/yolox_nano.toml").display(),
        out = dir.display(),
        mqtt = free_port().port(),
    );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn revisions(id: &str, from: u32, to: u32, grid: &str) -> Vec<RiskEvent> {
    (from..=to)
        .map(|r| incident_revision(id, r, grid))
        .collect()
}

/// The built sinks of `config`, each with its health.
fn built_sinks(
    config: &PipelineConfig,
    services: &Services,
) -> Vec<(Box<dyn IncidentSink>, skynet_core::ComponentHealth)> {
    config
        .sinks
        .iter()
        .map(|s| {
            (
                s.config
                    .build(&skynet_emit::SinkBuildContext { name: &s.name })
                    .unwrap(),
                services.health.register(&s.name, "sink"),
            )
        })
        .collect()
}

#[derive(Default)]
struct Receiver {
    requests: usize,
    /// Answer 401 while set (the token was rotated and skynet's is stale).
    unauthorized: bool,
    taken: Vec<String>,
}

#[test]
fn a_webhook_answering_401_is_retried_as_refusing_until_it_takes_every_event_with_no_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::start(None).unwrap();
    let state = Arc::new(Mutex::new(Receiver {
        unauthorized: true,
        ..Receiver::default()
    }));
    let hook: SocketAddr = {
        let state = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: String| {
                let state = Arc::clone(&state);
                async move {
                    let mut r = state.lock().unwrap();
                    r.requests += 1;
                    if r.unauthorized {
                        return (StatusCode::UNAUTHORIZED, "token expired");
                    }
                    let event: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    r.taken
                        .push(event["id"].as_str().unwrap_or_default().to_string());
                    (StatusCode::OK, "")
                }
            }),
        );
        services.runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            addr
        })
    };
    let config_path = config_file(
        dir.path(),
        &format!(
            "[[sinks]]\nkind = \"webhook\"\nname = \"hook401\"\nurl = \"http://{hook}/events\"\nsecret = \"{SECRET}\"\ntimeout_s = 2\n"
        ),
    );
    let config = PipelineConfig::load(&config_path).unwrap();
    let mut committer = Committer::new(&config.node, Outbox::open(&config.outbox).unwrap());
    let deliveries = spawn_deliveries_with(
        &services.runtime(),
        &config.outbox,
        built_sinks(&config, &services),
        committer.wake_handle(),
        DeliveryOptions::default(),
    );
    committer
        .commit(&revisions("inc-401", 1, 30, "G-0201"), None)
        .unwrap();

    // A storm of 401s: the sink shows `refusing` (health, gauge) and keeps trying.
    assert!(
        eventually(Duration::from_secs(30), || {
            metric(&services, "skynet_sink_refusing{sink=\"hook401\"}") == Some(1.0)
                && state.lock().unwrap().requests >= 3
        }),
        "{}",
        services.metrics.render()
    );
    let status = services.health.state("hook401", "sink").unwrap();
    assert_eq!(status.detail.as_deref(), Some("refusing"), "{status:?}");
    assert!(status.reason.unwrap_or_default().contains("401"));
    assert!(
        Outbox::open(&config.outbox)
            .unwrap()
            .dead_letters(None)
            .unwrap()
            .is_empty()
    );

    // The token is fixed: every event arrives, none is a dead letter.
    state.lock().unwrap().unauthorized = false;
    assert!(
        eventually(Duration::from_secs(60), || {
            let taken: BTreeSet<String> = state.lock().unwrap().taken.iter().cloned().collect();
            taken.len() == 30
        }),
        "not every event arrived: {:?}",
        state.lock().unwrap().taken
    );
    assert!(
        Outbox::open(&config.outbox)
            .unwrap()
            .dead_letters(None)
            .unwrap()
            .is_empty()
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &services,
            "skynet_sink_refusing{sink=\"hook401\"}"
        ) == Some(0.0)),
        "{}",
        services.metrics.render()
    );
    assert_eq!(
        metric(
            &services,
            "skynet_sink_dead_letters_total{sink=\"hook401\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
    services.stop();
}

/// Waits for `child` to exit, for up to `limit`; kills it if it does not.
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let exited = eventually(limit, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

#[test]
fn sigterm_with_its_sinks_down_stops_skynet_run_within_30_s() {
    let dir = tempfile::tempdir().unwrap();
    // A webhook that takes the connection and never answers, and a NATS server that is not
    // there: both sinks are down, one hanging, one refused.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = hanging.local_addr().unwrap();
    let nats = free_port();
    let config_path = config_file(
        dir.path(),
        &format!(
            r#"[[sinks]]
kind = "webhook"
name = "hook-hung"
url = "http://{hook}/events"
secret = "{SECRET}"
timeout_s = 600
[[sinks]]
kind = "nats"
name = "nats-down"
url = "nats://{nats}"
"#
        ),
    );
    // Events already waiting in the outbox for both sinks.
    let config = PipelineConfig::load(&config_path).unwrap();
    let mut committer = Committer::new(&config.node, Outbox::open(&config.outbox).unwrap());
    committer
        .commit(&revisions("inc-term", 1, 10, "G-0201"), None)
        .unwrap();
    drop(committer);

    let (mut child, log) = spawn_logged(&config_path, &[]);
    // Running, and the NATS sink has failed at least once.
    assert!(
        eventually(Duration::from_secs(60), || {
            let log = log.lock().unwrap();
            log.contains("nats-down") && log.contains("will retry")
        }),
        "{}",
        log.lock().unwrap()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let asked = Instant::now();
    // A contract with supervisors (systemd's and Kubernetes' default grace is 30 s or
    // more), not a performance bound.
    let exited = exits_within(&mut child, Duration::from_secs(30));
    let waited = asked.elapsed();
    let (status, text) = terminate(&mut child, &log);
    assert!(exited, "still running {waited:?} after SIGTERM:\n{text}");
    assert!(status.code().is_some(), "{status:?}\n{text}");
    assert!(
        text.contains("still behind at shutdown"),
        "the undelivered events are not reported as kept:\n{text}"
    );
    // Nothing committed was lost: the events wait for the next start.
    assert_eq!(
        Outbox::open(&config.outbox)
            .unwrap()
            .pending_count("hook-hung")
            .unwrap(),
        10
    );
    drop(hanging);
}

/// The JetStream stream `name`'s message count and duplicate window, as the server has them.
fn stream_state(runtime: &tokio::runtime::Runtime, url: &str, name: &str) -> (u64, Duration) {
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        (info.state.messages, info.config.duplicate_window)
    })
}

#[test]
fn a_nats_outage_longer_than_the_duplicate_window_stores_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::start(None).unwrap();
    let runtime = crate::common::tokio_runtime();
    let mut nats = PrivateNats::start(&dir.path().join("nats"));
    let stream = "FAULTS_OUTAGE";
    // A stream made before, with JetStream's old 120 s window: the sink brings it to its own.
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.into(),
                subjects: vec!["outage.incidents.>".into(), "outage.grid_risk.>".into()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let mut sink_config = NatsSinkConfig::for_url(nats.url());
    sink_config.stream = stream.into();
    sink_config.subject_prefix = "outage".into();
    // A second: the outage below is longer.
    sink_config.duplicate_window_s = 1.0;
    sink_config.ack_timeout_s = 1.0;
    let outbox_path = dir.path().join("outbox.sqlite");
    let mut committer = Committer::new("n1", Outbox::open(&outbox_path).unwrap());
    let deliveries = spawn_deliveries_with(
        &services.runtime(),
        &outbox_path,
        vec![(
            Box::new(NatsSink::new("nats-outage", sink_config)) as Box<dyn IncidentSink>,
            services.health.register("nats-outage", "sink"),
        )],
        committer.wake_handle(),
        DeliveryOptions::default(),
    );
    committer
        .commit(&revisions("inc-out", 1, 10, "G-0201"), None)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || stream_state(
            &runtime,
            &nats.url(),
            stream
        )
        .0 == 10),
        "the first events did not arrive"
    );
    assert_eq!(
        stream_state(&runtime, &nats.url(), stream).1,
        Duration::from_secs(1),
        "the existing stream's window was not updated"
    );

    // The server goes away; events are committed meanwhile; the sink fails and backs off
    // (0.2 + 0.4 + 0.8 s before the fourth try: longer than the 1 s window).
    nats.stop();
    let retries = |services: &Services| {
        metric(services, "skynet_sink_retries_total{sink=\"nats-outage\"}").unwrap_or(0.0)
    };
    let before = retries(&services);
    committer
        .commit(&revisions("inc-out", 11, 25, "G-0201"), None)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || retries(&services)
            >= before + 4.0),
        "{}",
        services.metrics.render()
    );
    nats.resume();
    let outbox = Outbox::open(&outbox_path).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || outbox
            .pending_count("nats-outage")
            .unwrap()
            == 0),
        "the sink did not catch up: {}",
        services.metrics.render()
    );
    let stored = runtime.block_on(read_stream(&nats.url(), stream));
    let ids: Vec<String> = stored.iter().map(|m| m.0.clone()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "stored twice: {ids:?}");
    assert_eq!(ids.len(), 25, "{ids:?}");
    assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
    services.stop();
}

/// A nats-server of this test's own whose user `skynet` may not publish incidents of cell
/// `G-DENIED`. The sink logs in as `skynet` with the `user:password@` of its URL; a client
/// without credentials (the test's reader) is `reader`, who may do anything, so a sink whose
/// URL credentials were not sent would publish the denied event and fail the test.
struct NatsWithUsers {
    port: u16,
    child: Child,
}

impl NatsWithUsers {
    fn start(dir: &Path) -> Self {
        let port = free_port().port();
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                r#"
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{store}" }}
no_auth_user: "reader"
authorization {{
  users = [
    {{ user: "reader", password: "reader-pw" }}
    {{ user: "skynet", password: "skynet-pw", permissions: {{
        publish: {{ allow: [">"], deny: ["denied.incidents.G-DENIED.>"] }}
        subscribe: {{ allow: [">"] }}
    }} }}
  ]
}}
"#,
                store = dir.join("store").display(),
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nats-server did not start on {port}"
        );
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// As the user `skynet`, in the URL.
    fn skynet_url(&self) -> String {
        format!("nats://skynet:skynet-pw@127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsWithUsers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_event_the_nats_user_may_not_publish_is_a_dead_letter_and_later_events_still_flow() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::start(None).unwrap();
    let runtime = crate::common::tokio_runtime();
    let nats = NatsWithUsers::start(&dir.path().join("nats"));
    let stream = "FAULTS_DENIED";
    let mut sink_config = NatsSinkConfig::for_url(nats.skynet_url());
    sink_config.stream = stream.into();
    sink_config.subject_prefix = "denied".into();
    sink_config.ack_timeout_s = 1.0;
    let outbox_path = dir.path().join("outbox.sqlite");
    let mut committer = Committer::new("n1", Outbox::open(&outbox_path).unwrap());
    let deliveries = spawn_deliveries_with(
        &services.runtime(),
        &outbox_path,
        vec![(
            Box::new(NatsSink::new("nats-denied", sink_config)) as Box<dyn IncidentSink>,
            services.health.register("nats-denied", "sink"),
        )],
        committer.wake_handle(),
        DeliveryOptions::default(),
    );
    let mut events = revisions("inc-ok", 1, 3, "G-0201");
    events.push(incident_revision("inc-denied", 1, "G-DENIED"));
    events.extend(revisions("inc-ok", 4, 6, "G-0201"));
    committer.commit(&events, None).unwrap();

    let url = nats.url();
    let outbox = Outbox::open(&outbox_path).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || outbox
            .pending_count("nats-denied")
            .unwrap()
            == 0),
        "the sink is blocked: {:?}",
        services.health.state("nats-denied", "sink")
    );
    let letters = outbox.dead_letters(Some("nats-denied")).unwrap();
    assert_eq!(
        letters.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["inc-denied/1"],
        "{letters:?}"
    );
    assert!(
        letters[0].reason.contains("permissions violation"),
        "{}",
        letters[0].reason
    );
    let ids = |runtime: &tokio::runtime::Runtime| -> Vec<String> {
        runtime
            .block_on(read_stream(&url, stream))
            .into_iter()
            .map(|m| m.0)
            .collect()
    };
    let expected: Vec<String> = (1..=6).map(|r| format!("inc-ok/{r}")).collect();
    assert_eq!(ids(&runtime), expected);

    // Later events still flow.
    committer
        .commit(&revisions("inc-ok", 7, 8, "G-0201"), None)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || ids(&runtime).len() == 8),
        "{:?}",
        ids(&runtime)
    );
    assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
    services.stop();
}
