//! Attack: an inspector of an unrelated department reads everything the console serves,
//! route by route from the OpenAPI document, looking for an incident outside their scope
//! (its id, its category, its evidence). Every answer must be a 403/404 or a body without
//! it; the same routes as an operator show it, so the fixture really holds it. A route the
//! document gains without a line in [`how_to_call`] fails the test: a new route cannot
//! forget scope unnoticed. A patrol camera of the incident's owner (police), named as the
//! incident is, stands for patrol data the inspector (safety production) must not see.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use skynet_core::{GridRisk, Incident, OwnerKind, RiskEvent};
use skynet_serve::console::{ApiConfig, Console, ConsoleStore, PatrolRegistration, Role};

use crate::fixture;

pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// The incident no inspector of `emergency` may learn of, and what would give it away.
pub(crate) const OUT: &str = "inc-out-of-scope";
const OUT_CATEGORY: &str = "brawl";
const OUT_EVIDENCE: &[u8] = b"\xff\xd8EVIDENCE-OF-THE-OUT-OF-SCOPE-INCIDENT";
/// The inspector's own incident, in the same cell.
pub(crate) const IN: &str = "inc-in-scope";

pub(crate) fn incident(id: &str, department: &str, owner: &str, category: &str) -> Incident {
    fixture::incident(id, department, owner, category, "II")
}

fn grid_change(revision: u64) -> GridRisk {
    serde_json::from_value(json!({
        "id": format!("g-{revision}"), "grid": "G-0201", "revision": revision, "level": "II",
        "level_colour": "orange", "previous_level": null, "score": 0.7,
        "at": "2026-11-27T10:00:01Z",
        "categories": {"gas_leak": 0.5, OUT_CATEGORY: 0.7},
        "incidents": [IN, OUT]
    }))
    .expect("a valid cell change")
}

/// The console served on a loopback port over a state database with one incident in the
/// inspector's scope and one outside it (with evidence, a note, an acknowledgement and a
/// cell history listing both), users `op`, `insp` (emergency), `police` (an inspector of the
/// other department) and `adm`, and a stand-in for the risk stage.
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
    pub console: Arc<Console>,
    addr: SocketAddr,
    http: reqwest::Client,
    /// Bearer tokens by user name.
    pub tokens: Vec<(String, String)>,
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

pub(crate) async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let inside = incident(IN, "emergency", "safety_production", "gas_leak");
    let outside = incident(OUT, "police-dept", "police", OUT_CATEGORY);
    fixture::commit(
        &db,
        &[
            RiskEvent::Incident(inside),
            RiskEvent::Incident(outside),
            RiskEvent::GridRisk(grid_change(1)),
        ],
    );
    let console = Arc::new(fixture::console(
        dir.path(),
        &db,
        fixture::Seed {
            config: ApiConfig::local("127.0.0.1:0".parse().unwrap()),
            evidence: &[(IN, b"\xff\xd8in scope"), (OUT, OUT_EVIDENCE)],
            camera_owner: OwnerKind::Police,
        },
    ));
    // A patrol whose only camera is the police's, with the out-of-scope id for a name and the
    // out-of-scope evidence for its round's snapshot: what an inspector of safety production
    // must not see of patrols.
    console.register_patrol(PatrolRegistration {
        name: "p-out".into(),
        every_s: 60.0,
        dwell_s: 3.0,
        max_concurrent: 1,
        cameras: vec![skynet_core::DeviceId::new(OUT)],
    });
    console.record_patrol_round(
        &serde_json::from_value(json!({
            "patrol": "p-out", "round": 1,
            "started": "2026-11-27T10:00:00Z", "finished": "2026-11-27T10:00:05Z",
            "cameras": [{"id": OUT, "grid": "G-0201", "owner": "police", "status": "checked",
                "frames": 3, "observations": 1, "snapshot": format!("patrol/p-out/1/{OUT}.jpg")}]
        }))
        .expect("a valid round"),
    );
    let snapshots = dir.path().join("evidence/patrol/p-out/1");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join(format!("{OUT}.jpg")), OUT_EVIDENCE).unwrap();
    // The stand-in for the risk stage: the next revision committed and published, on its
    // own thread as the pipeline does it.
    fixture::connect_risk_stage(&console, &db, |_| false);
    let store = ConsoleStore::open(&db).unwrap();
    let users: [fixture::UserSpec; 4] = [
        ("op", Role::Operator, None, None),
        (
            "insp",
            Role::Inspector,
            Some("emergency"),
            Some("safety_production"),
        ),
        ("police", Role::Inspector, Some("police-dept"), None),
        ("adm", Role::Admin, None, None),
    ];
    fixture::put_users(&store, &users, PASSWORD);
    let mut tokens = Vec::new();
    for (name, ..) in users {
        let token = store
            .issue_token(name, skynet_serve::console::TokenKind::Api, None, None)
            .unwrap();
        tokens.push((name.to_string(), token));
    }
    // People's traces of the out-of-scope incident: a note and an acknowledgement.
    store.add_note(OUT, "op", "out of scope note").unwrap();
    store.acknowledge(OUT, "op").unwrap();
    let addr = fixture::serve(Arc::clone(&console));
    World {
        _dir: dir,
        db,
        console,
        addr,
        http: {
            // reqwest is built without a TLS provider of its own; these requests are plain
            // HTTP, but the client wants one all the same. Another test may have installed it.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::new()
        },
        tokens,
    }
}

impl World {
    pub fn token(&self, name: &str) -> String {
        self.tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            bytes: response.bytes().await.unwrap().to_vec(),
        }
    }
}

/// How to call one documented operation: the path with its parameters filled, and a body.
/// `None` for a route with no answer to read here (the live stream: see its own test).
fn how_to_call(method: &str, path: &str) -> Option<Option<(String, Option<Value>)>> {
    let call = |uri: &str, body: Option<Value>| Some(Some((uri.to_string(), body)));
    match (method, path) {
        ("post", "/api/v1/login") => call(
            path,
            Some(json!({"username": "insp", "password": PASSWORD})),
        ),
        // Logged out with a token of its own (see the caller).
        ("post", "/api/v1/logout") => call(path, Some(json!({}))),
        ("get", "/api/v1/me") => call(path, None),
        ("get", "/api/v1/incidents") => call(path, None),
        ("get", "/api/v1/incidents/{id}") => call(&format!("/api/v1/incidents/{OUT}"), None),
        ("post", "/api/v1/incidents/{id}/ack") => {
            call(&format!("/api/v1/incidents/{OUT}/ack"), Some(json!({})))
        }
        ("post", "/api/v1/incidents/{id}/notes") => call(
            &format!("/api/v1/incidents/{OUT}/notes"),
            Some(json!({"text": "probing"})),
        ),
        ("post", "/api/v1/incidents/{id}/status") => call(
            &format!("/api/v1/incidents/{OUT}/status"),
            Some(json!({"status": "dispatched"})),
        ),
        ("get", "/api/v1/evidence/{incident}/{file}") => {
            call(&format!("/api/v1/evidence/{OUT}/1.jpg"), None)
        }
        ("get", "/api/v1/grids") => call(path, None),
        ("get", "/api/v1/grids/{id}/history") => call("/api/v1/grids/G-0201/history", None),
        ("get", "/api/v1/cameras") => call(path, None),
        ("get", "/api/v1/cameras/{id}/frame") => call("/api/v1/cameras/cam-1/frame", None),
        ("get", "/api/v1/cameras/{id}/live.mp4") => call("/api/v1/cameras/cam-1/live.mp4", None),
        ("put", "/api/v1/cameras/{id}/thresholds") => call(
            "/api/v1/cameras/cam-1/thresholds",
            Some(json!({"person": 0.5})),
        ),
        ("post", "/api/v1/cameras/{id}/thresholds/what-if") => call(
            "/api/v1/cameras/cam-1/thresholds/what-if",
            Some(json!({"person": 0.5})),
        ),
        ("get", "/api/v1/sensors") => call(path, None),
        ("get", "/api/v1/platforms") => call(path, None),
        ("get", "/api/v1/patrols") => call(path, None),
        ("get", "/api/v1/patrols/grids") => call(path, None),
        ("get", "/api/v1/patrols/{patrol}/rounds") => call("/api/v1/patrols/p-out/rounds", None),
        ("get", "/api/v1/patrols/{patrol}/rounds/{round}/cameras/{camera}/snapshot") => call(
            &format!("/api/v1/patrols/p-out/rounds/1/cameras/{OUT}/snapshot"),
            None,
        ),
        ("get", "/api/v1/tickets") => call(path, None),
        ("get", "/api/v1/audit") => call(path, None),
        ("get", "/api/v1/users") => call(path, None),
        ("post", "/api/v1/users") => call(
            path,
            Some(json!({"name": "newcomer", "role": "operator", "password": PASSWORD})),
        ),
        ("get", "/api/v1/openapi.json") => call(path, None),
        ("get", "/api/v1/events") => Some(None),
        _ => None,
    }
}

/// What would tell the inspector of the out-of-scope incident.
fn leaks(answer: &Answer) -> Vec<&'static str> {
    let text = answer.text();
    let mut found = Vec::new();
    if text.contains(OUT) {
        found.push("its id");
    }
    if text.contains(OUT_CATEGORY) {
        found.push("its category");
    }
    if answer
        .bytes
        .windows(OUT_EVIDENCE.len())
        .any(|w| w == OUT_EVIDENCE)
    {
        found.push("its evidence");
    }
    found
}

#[tokio::test]
async fn every_documented_route_keeps_an_out_of_scope_incident_from_an_inspector() {
    let w = world().await;
    let doc: Value = serde_json::from_str(include_str!(
        "../../crates/skynet-serve/src/console/openapi.json"
    ))
    .unwrap();
    let inspector = w.token("insp");
    let operator = w.token("op");
    // The fixture holds what the inspector must not see: the operator sees it.
    for path in [
        "/api/v1/incidents".to_string(),
        format!("/api/v1/incidents/{OUT}"),
        "/api/v1/grids/G-0201/history".to_string(),
        format!("/api/v1/evidence/{OUT}/1.jpg"),
        "/api/v1/patrols".to_string(),
        "/api/v1/patrols/grids".to_string(),
        "/api/v1/patrols/p-out/rounds".to_string(),
        format!("/api/v1/patrols/p-out/rounds/1/cameras/{OUT}/snapshot"),
    ] {
        let answer = w.call(Method::GET, &path, Some(&operator), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
        assert!(!leaks(&answer).is_empty(), "the operator sees it at {path}");
    }
    let mut unknown = Vec::new();
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let Some(how) = how_to_call(method, path) else {
                unknown.push(format!("{} {path}", method.to_uppercase()));
                continue;
            };
            let Some((uri, body)) = how else {
                continue;
            };
            let token = if path == "/api/v1/logout" {
                // Its own token: the inspector's main one goes on.
                let login = w
                    .call(
                        Method::POST,
                        "/api/v1/login",
                        None,
                        Some(json!({"username": "insp", "password": PASSWORD})),
                    )
                    .await;
                login.json()["token"].as_str().unwrap().to_string()
            } else {
                inspector.clone()
            };
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = w.call(method.clone(), &uri, Some(&token), body).await;
            assert!(
                answer.status.as_u16() < 500,
                "{method} {uri}: {}",
                answer.status
            );
            let found = leaks(&answer);
            assert!(
                found.is_empty(),
                "{method} {uri} answered {} with the out-of-scope incident's {found:?}: {}",
                answer.status,
                answer.text()
            );
            checked += 1;
        }
    }
    assert!(
        unknown.is_empty(),
        "routes in openapi.json this test does not know how to call (add each to `how_to_call`, \
         and make sure it keeps to the caller's scope): {unknown:?}"
    );
    assert!(checked >= 19, "only {checked} routes checked");
    // The inspector's own incident is there for them: the narrowing is not a blank page.
    let history = w
        .call(
            Method::GET,
            "/api/v1/grids/G-0201/history",
            Some(&inspector),
            None,
        )
        .await;
    let change = &history.json()["history"][0];
    assert_eq!(change["incidents"], json!([IN]), "{change}");
    assert_eq!(change["categories"], json!({"gas_leak": 0.5}), "{change}");
    let score = change["score"].as_f64().unwrap();
    assert!(
        (score - 0.7).abs() < 1e-6,
        "the cell's score is the city's: {change}"
    );
    let list = w
        .call(Method::GET, "/api/v1/incidents", Some(&inspector), None)
        .await;
    assert!(list.text().contains(IN), "{}", list.text());
}

/// Reads the live stream until `until` appears, or panics after 60 s (a hung stream).
async fn read_until(mut response: reqwest::Response, until: &str) -> String {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(until) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the live stream brought the marker");
    text
}

#[tokio::test]
async fn the_live_streams_grid_events_carry_only_the_callers_incidents() {
    let w = world().await;
    let open = |name: &str| {
        w.http
            .get(w.url("/api/v1/events"))
            .bearer_auth(w.token(name))
            .send()
    };
    let inspector = open("insp").await.unwrap();
    let operator = open("op").await.unwrap();
    assert_eq!(inspector.status(), StatusCode::OK);
    let (inspector_stream, operator_stream) = (inspector, operator);
    // Published in order: the out-of-scope revision, the cell change listing both, then an
    // in-scope revision as the marker that everything before it was delivered.
    let mut marker = incident(IN, "emergency", "safety_production", "gas_leak");
    marker.revision = 2;
    marker.note = Some("the marker".into());
    let mut outside = incident(OUT, "police-dept", "police", OUT_CATEGORY);
    outside.revision = 2;
    // Both streams subscribed before their answers came: the publication reaches them.
    w.console.publish(&[
        RiskEvent::Incident(outside),
        RiskEvent::GridRisk(grid_change(2)),
        RiskEvent::Incident(marker),
    ]);
    let seen = read_until(inspector_stream, "the marker").await;
    let everything = read_until(operator_stream, "the marker").await;
    assert!(seen.contains("event: grid"), "{seen}");
    assert!(seen.contains(IN), "{seen}");
    assert!(!seen.contains(OUT), "{seen}");
    assert!(!seen.contains(OUT_CATEGORY), "{seen}");
    // The operator sees the whole cell change.
    assert!(everything.contains(OUT), "{everything}");
    assert!(everything.contains(OUT_CATEGORY), "{everything}");
}
