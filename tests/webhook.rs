//! The webhook sink against a real HTTP receiver that checks every signature: a receiver
//! that fails for a while still gets every event, in order; an event it refuses for good
//! goes to the dead letters while the later ones flow; `skynet outbox replay` delivers it
//! once the receiver takes it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use skynet::{PipelineConfig, Services};
use skynet_core::RiskEvent;
use skynet_emit::{Committer, DeliveryOptions, Outbox};

mod common;

use common::{eventually, incident_revision, repo, text, webhook_signature};

const SECRET: &str = "webhook-test-secret";
const EVENTS: u32 = 20;
/// Requests answered 500 before the receiver recovers.
const FAIL_FIRST: usize = 6;

/// The receiving side, as a webhook consumer writes it.
#[derive(Default)]
struct Receiver {
    requests: usize,
    /// Event ids taken (answered 200), in arrival order, duplicates included.
    taken: Vec<String>,
    bad_signatures: usize,
    /// Answered 400 while set.
    refuse: Option<String>,
}

async fn receive(
    state: Arc<Mutex<Receiver>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, &'static str) {
    let expected = webhook_signature(SECRET, &body);
    let signed = headers
        .get("x-skynet-signature")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let event: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let id = event["id"].as_str().unwrap_or_default().to_string();
    let mut r = state.lock().unwrap();
    r.requests += 1;
    if !signed {
        r.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    if r.requests <= FAIL_FIRST {
        return (StatusCode::INTERNAL_SERVER_ERROR, "starting up");
    }
    if r.refuse.as_deref() == Some(id.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown grid cell for this tenant");
    }
    r.taken.push(id);
    (StatusCode::OK, "")
}

fn config_file(dir: &Path, hook: SocketAddr) -> PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "webhook-test"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"
lag_alarm_events = 5
[mqtt]
url = "mqtt://127.0.0.1:1"
  [[mqtt.topics]]
  pattern = "plant/+/senml"
[[sensors]]
id = "gas-w"
kind = "gas_co"
grid = "G-0201"
owner = "safety_production"
[[sinks]]
kind = "webhook"
name = "hook"
url = "http://{hook}/events"
secret = "{SECRET}"
timeout_s = 2
max_attempts = 2
headers = {{ X-Tenant = "city" }}
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
    );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn incident(revision: u32) -> RiskEvent {
    incident_revision("inc-w", revision, "G-0201")
}

fn skynet(args: &[&str]) -> std::process::Output {
    Command::new(common::skynet_bin())
        .args(args)
        .output()
        .expect("skynet runs")
}

fn metric(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn a_refused_event_is_dead_lettered_the_rest_arrive_in_order_and_replay_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::start(None).unwrap();
    let state = Arc::new(Mutex::new(Receiver {
        refuse: Some("inc-w/7".into()),
        ..Receiver::default()
    }));
    let hook = {
        let state = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                receive(Arc::clone(&state), headers, body)
            }),
        );
        services.runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            addr
        })
    };
    let config_path = config_file(dir.path(), hook);
    let config = PipelineConfig::load(&config_path).unwrap();
    assert_eq!(config.sinks[0].kind, "webhook");
    let config_arg = config_path.to_str().unwrap();

    let mut committer = Committer::new(&config.node, Outbox::open(&config.outbox).unwrap());
    let sinks = config
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
        .collect();
    let deliveries = skynet_emit::spawn_deliveries_with(
        &services.runtime(),
        &config.outbox,
        sinks,
        committer.wake_handle(),
        DeliveryOptions {
            lag_alarm_events: config.outbox_lag_alarm_events,
        },
    );
    let revisions: Vec<RiskEvent> = (1..=EVENTS).map(incident).collect();
    committer.commit(&revisions, None).unwrap();

    // The receiver fails the first requests: the sink is behind by more than the limit of
    // 5 meanwhile, and says so.
    assert!(
        eventually(Duration::from_secs(60), || {
            metric(
                &services.metrics.render(),
                "skynet_sink_lag_alarm{sink=\"hook\"}",
            ) == Some(1.0)
        }),
        "{}",
        services.metrics.render()
    );

    let expected: Vec<String> = (1..=EVENTS)
        .filter(|&r| r != 7)
        .map(|r| format!("inc-w/{r}"))
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || {
            let taken: BTreeSet<String> = state.lock().unwrap().taken.iter().cloned().collect();
            taken.len() == expected.len()
        }),
        "not every event arrived: {:?}",
        state.lock().unwrap().taken
    );
    {
        let r = state.lock().unwrap();
        assert_eq!(r.bad_signatures, 0);
        // In order: the first arrival of each id follows the outbox order.
        let mut seen = BTreeSet::new();
        let firsts: Vec<&String> = r.taken.iter().filter(|id| seen.insert(*id)).collect();
        assert_eq!(firsts, expected.iter().collect::<Vec<_>>());
    }

    // The refused one is a dead letter; nothing was lost: taken + dead = outbox.
    let listed = skynet(&["outbox", "dead-letters", "--config", config_arg, "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let letters: Vec<serde_json::Value> = text(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["id"], "inc-w/7");
    assert_eq!(letters[0]["sink"], "hook");
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["reason"], "unknown grid cell for this tenant");
    let stored = Outbox::open(&config.outbox)
        .unwrap()
        .events()
        .unwrap()
        .len();
    assert_eq!(expected.len() + letters.len(), stored);
    assert!(
        eventually(Duration::from_secs(60), || {
            let m = services.metrics.render();
            metric(&m, "skynet_sink_lag_alarm{sink=\"hook\"}") == Some(0.0)
                && metric(&m, "skynet_sink_lag_events{sink=\"hook\"}") == Some(0.0)
        }),
        "{}",
        services.metrics.render()
    );
    let m = services.metrics.render();
    assert_eq!(
        metric(&m, "skynet_sink_dead_letters_total{sink=\"hook\"}"),
        Some(1.0),
        "{m}"
    );
    let text_listing = skynet(&["outbox", "dead-letters", "--config", config_arg]);
    assert!(text(&text_listing.stdout).contains("inc-w/7\thook\t400\t"));

    // No such id: exit 1; a bad config: exit 2, naming the problem.
    let missing = skynet(&["outbox", "replay", "--config", config_arg, "--id", "nope/1"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[outbox]\nlag_alarm_events = 0\n").unwrap();
    let refused = skynet(&["outbox", "dead-letters", "--config", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let unknown = skynet(&[
        "outbox", "replay", "--config", config_arg, "--sink", "nats", "--all",
    ]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));

    // The receiver is fixed; a replay delivers the event while skynet runs.
    state.lock().unwrap().refuse = None;
    let replayed = skynet(&[
        "outbox", "replay", "--config", config_arg, "--id", "inc-w/7",
    ]);
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    assert!(
        eventually(Duration::from_secs(60), || state
            .lock()
            .unwrap()
            .taken
            .iter()
            .any(|id| id == "inc-w/7")),
        "the replayed event did not arrive"
    );
    assert!(
        eventually(Duration::from_secs(60), || Outbox::open(&config.outbox)
            .unwrap()
            .dead_letters(None)
            .unwrap()
            .is_empty()),
        "the delivered dead letter is still listed"
    );
    let taken: BTreeSet<String> = state.lock().unwrap().taken.iter().cloned().collect();
    assert_eq!(taken.len(), stored);
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
    services.stop();
}
