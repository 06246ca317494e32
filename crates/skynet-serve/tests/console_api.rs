//! The console's API end to end on a real state database: every route as every role (the
//! role matrix), the audit entry of every change, scopes, the live stream, and that the
//! OpenAPI document names exactly the routes the server answers.
//!
//! The risk stage is stood in for by a status applier that commits the next revision to
//! the outbox and publishes it, as the pipeline's commit stage does; the whole pipeline
//! behind the console is exercised by the browser test (tests/console).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skynet_core::{Incident, LiveThresholds, OwnerKind, RiskEvent};
use skynet_serve::console::{
    ApiConfig, CameraRegistration, Console, ConsoleStore, PatrolRegistration, Role, WhatIf,
    WhatIfError, WhatIfExample, WhatIfReport,
};
use tower::ServiceExt;

#[path = "support/fixture.rs"]
mod fixture;

const PASSWORD: &str = "correct horse battery";

fn incident(id: &str, department: &str, owner: &str, level: &str) -> Incident {
    fixture::incident(id, department, owner, "gas_leak", level)
}

struct Fixture {
    _dir: tempfile::TempDir,
    console: Arc<Console>,
    app: Router,
    /// A bearer token per role.
    tokens: Vec<(Role, String)>,
}

fn commit(path: &std::path::Path, incident: &Incident) {
    fixture::commit(path, &[RiskEvent::Incident(incident.clone())]);
}

/// Round `round` of the patrol `p1`: `cam-1` (G-0201, safety production) and `cam-p2`
/// (G-0202, police) with the given statuses; a checked camera has a snapshot.
fn patrol_round(round: u64, cam_1: &str, cam_p2: &str) -> skynet_core::PatrolRound {
    let started = chrono::DateTime::<chrono::Utc>::from_timestamp(60 * round as i64, 0).unwrap();
    let look = |id: &str, grid: &str, owner: &str, status: &str| {
        json!({"id": id, "grid": grid, "owner": owner, "status": status,
            "frames": u64::from(status == "checked") * 3, "observations": 0,
            "snapshot": (status == "checked").then(|| format!("/evidence/patrol/p1/{round}/{id}.jpg"))})
    };
    serde_json::from_value(json!({
        "patrol": "p1", "round": round, "started": started,
        "finished": started + chrono::Duration::seconds(12),
        "cameras": [
            look("cam-1", "G-0201", "safety_production", cam_1),
            look("cam-p2", "G-0202", "police", cam_p2),
        ]
    }))
    .unwrap()
}

/// The patrol `p1` (`cam-1`, `cam-p2`) with round 7 recorded (`cam-1` checked, `cam-p2`
/// offline) and both cameras' snapshots of round 7 on disk.
fn seed_patrol(console: &Console, dir: &std::path::Path) {
    console.register_patrol(PatrolRegistration {
        name: "p1".into(),
        every_s: 60.0,
        dwell_s: 3.0,
        max_concurrent: 2,
        cameras: vec![
            skynet_core::DeviceId::new("cam-1"),
            skynet_core::DeviceId::new("cam-p2"),
        ],
    });
    console.record_patrol_round(&patrol_round(7, "checked", "offline"));
    let snapshots = dir.join("evidence/patrol/p1/7");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join("cam-1.jpg"), b"\xff\xd8patrol").unwrap();
    std::fs::write(snapshots.join("cam-p2.jpg"), b"\xff\xd8police").unwrap();
}

/// Stands in for the pipeline's what-if: the change of `person` decides the counts, so a
/// test sees which current and proposed thresholds reached it.
struct FakeWhatIf;

impl WhatIf for FakeWhatIf {
    fn thresholds(
        &self,
        camera: &skynet_core::DeviceId,
        current: &BTreeMap<String, f32>,
        proposed: &BTreeMap<String, f32>,
    ) -> Result<WhatIfReport, WhatIfError> {
        assert_eq!(camera.as_str(), "cam-1");
        let (now, then) = (current["person"], proposed["person"]);
        let until: chrono::DateTime<chrono::Utc> = "2026-11-27T12:00:00Z".parse().unwrap();
        Ok(WhatIfReport {
            added: u64::from(then < now),
            dropped: u64::from(then > now),
            changed: 2,
            unchanged: 7,
            incidents: 9 + u64::from(then > now),
            observations: 1234,
            since: until - chrono::Duration::hours(24),
            until,
            examples: vec![WhatIfExample {
                change: "changed",
                grid: "G-0201".into(),
                category: "crowd".into(),
                device: "cam-1".into(),
                first_seen: until,
                old_level: Some("III".into()),
                new_level: Some("IV".into()),
            }],
        })
    }
}

async fn fixture() -> Fixture {
    let f = fixture_without_what_if().await;
    f.console.set_what_if(Arc::new(FakeWhatIf));
    f
}

/// A console of a node that records no observations: no what-if.
async fn fixture_without_what_if() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    commit(
        &db,
        &incident("inc-gas", "emergency", "safety_production", "II"),
    );
    commit(
        &db,
        &incident("inc-street", "streets", "city_management", "III"),
    );
    let console = Arc::new(fixture::console(
        dir.path(),
        &db,
        fixture::Seed {
            config: ApiConfig {
                session_ttl: Duration::from_secs(3600),
                ..ApiConfig::local("127.0.0.1:0".parse().unwrap())
            },
            evidence: &[("inc-gas", b"\xff\xd8jpeg")],
            camera_owner: OwnerKind::SafetyProduction,
        },
    ));
    seed_patrol(&console, dir.path());
    fixture::connect_risk_stage(&console, &db, |status| {
        status.note.as_deref() == Some("refused by the risk stage")
    });
    let store = ConsoleStore::open(&db).unwrap();
    let users: [fixture::UserSpec; 4] = [
        ("op", Role::Operator, None, None),
        (
            "insp",
            Role::Inspector,
            Some("emergency"),
            Some("safety_production"),
        ),
        ("eng", Role::Engineer, None, None),
        ("adm", Role::Admin, None, None),
    ];
    fixture::put_users(&store, &users, PASSWORD);
    let app = skynet_serve::console::console_router(Arc::clone(&console));
    let mut tokens = Vec::new();
    for (name, role, _, _) in users {
        let (status, body, _) = call(
            &app,
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push((role, body["token"].as_str().unwrap().to_string()));
    }
    Fixture {
        _dir: dir,
        console,
        app,
        tokens,
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body, headers)
}

impl Fixture {
    fn token(&self, role: Role) -> &str {
        &self.tokens.iter().find(|(r, _)| *r == role).unwrap().1
    }

    fn audit_actions(&self) -> Vec<(String, String, String)> {
        ConsoleStore::open(&self.db())
            .unwrap()
            .audit_entries(&skynet_serve::console::store::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action, e.target))
            .collect()
    }

    fn db(&self) -> std::path::PathBuf {
        self._dir.path().join("outbox.sqlite")
    }
}

/// Allowed (a 2xx answer) or refused with 403, per role: operator, inspector, engineer, admin.
const MATRIX: &[(&str, &str, &str, [bool; 4])] = &[
    ("GET", "/api/v1/me", "", [true, true, true, true]),
    ("GET", "/api/v1/incidents", "", [true, true, true, true]),
    (
        "GET",
        "/api/v1/incidents/inc-gas",
        "",
        [true, true, true, true],
    ),
    (
        "GET",
        "/api/v1/evidence/inc-gas/1.jpg",
        "",
        [true, true, true, true],
    ),
    (
        "POST",
        "/api/v1/incidents/inc-gas/notes",
        r#"{"text":"on it"}"#,
        [true, true, false, true],
    ),
    ("GET", "/api/v1/grids", "", [true, true, true, true]),
    (
        "GET",
        "/api/v1/grids/G-0201/history",
        "",
        [true, true, true, true],
    ),
    ("GET", "/api/v1/cameras", "", [true, false, true, true]),
    (
        "GET",
        "/api/v1/cameras/cam-1/frame",
        "",
        [true, false, true, true],
    ),
    (
        "PUT",
        "/api/v1/cameras/cam-1/thresholds",
        r#"{"person":0.5}"#,
        [false, false, true, true],
    ),
    (
        "POST",
        "/api/v1/cameras/cam-1/thresholds/what-if",
        r#"{"person":0.5}"#,
        [false, false, true, true],
    ),
    ("GET", "/api/v1/patrols", "", [true, true, true, true]),
    ("GET", "/api/v1/patrols/grids", "", [true, true, true, true]),
    (
        "GET",
        "/api/v1/patrols/p1/rounds",
        "",
        [true, true, true, true],
    ),
    (
        "GET",
        "/api/v1/patrols/p1/rounds/7/cameras/cam-1/snapshot",
        "",
        [true, true, true, true],
    ),
    ("GET", "/api/v1/sensors", "", [true, false, true, true]),
    ("GET", "/api/v1/platforms", "", [true, false, true, true]),
    ("GET", "/api/v1/tickets", "", [false, true, false, true]),
    ("GET", "/api/v1/audit", "", [false, false, false, true]),
    ("GET", "/api/v1/users", "", [false, false, false, true]),
    (
        "POST",
        "/api/v1/users",
        r#"{"name":"new-op","role":"operator","password":"long enough pw"}"#,
        [false, false, false, true],
    ),
    (
        "POST",
        "/api/v1/incidents/inc-gas/ack",
        "{}",
        [true, false, false, true],
    ),
    (
        "POST",
        "/api/v1/incidents/inc-gas/status",
        r#"{"status":"dispatched"}"#,
        [false, true, false, true],
    ),
];

#[tokio::test]
async fn every_route_as_every_role_is_allowed_or_refused_as_the_matrix_says() {
    let roles = [Role::Operator, Role::Inspector, Role::Engineer, Role::Admin];
    for (method, uri, body, allowed) in MATRIX {
        let mut shared = Some(fixture().await);
        for (role, allow) in roles.iter().zip(allowed) {
            // A status change allowed for one role would make the same change a conflict
            // for the next: those get a fresh store per call.
            let f = match shared.take() {
                Some(f) if !uri.ends_with("/status") => f,
                _ => fixture().await,
            };
            let body = (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
            let (status, answer, _) = call(
                &f.app,
                method.parse().unwrap(),
                uri,
                Some(f.token(*role)),
                body,
            )
            .await;
            if *allow {
                assert!(
                    status.is_success(),
                    "{method} {uri} as {role:?}: {status} {answer}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {role:?}: {answer}"
                );
                assert_eq!(answer["error"], "forbidden");
            }
            shared = Some(f);
        }
    }
}

#[tokio::test]
async fn every_documented_route_exists_and_needs_a_caller() {
    let f = fixture().await;
    let doc: Value = serde_json::from_str(
        &call(&f.app, Method::GET, "/api/v1/openapi.json", None, None)
            .await
            .1
            .to_string(),
    )
    .unwrap();
    let mut documented = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            documented += 1;
            let uri = path
                .replace("{id}", "inc-gas")
                .replace("{incident}", "inc-gas")
                .replace("{file}", "1.jpg");
            let (status, body, _) = call(
                &f.app,
                method.to_uppercase().parse().unwrap(),
                &uri,
                None,
                Some(json!({})),
            )
            .await;
            let public = operation.get("security") == Some(&json!([]));
            if public {
                assert_ne!(status, StatusCode::NOT_FOUND, "{method} {path}");
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                assert_eq!(body["error"], "unauthorized");
            }
            assert!(operation["responses"].is_object(), "{method} {path}");
        }
    }
    // Every route of the router is documented: the matrix covers each one.
    let routed: std::collections::BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, uri, _, _)| (m.to_lowercase(), uri.to_string()))
        .collect();
    assert!(
        documented >= routed.len() + 4,
        "login, logout, events, openapi too"
    );
    let unknown = call(&f.app, Method::GET, "/api/v1/nothing", None, None).await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    assert_eq!(unknown.1["error"], "not_found");
}

#[tokio::test]
async fn inspectors_see_and_change_only_their_departments_incidents() {
    let f = fixture().await;
    let inspector = f.token(Role::Inspector).to_string();
    let (_, list, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/incidents",
        Some(&inspector),
        None,
    )
    .await;
    let ids: Vec<&str> = list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["inc-gas"]);
    // Asking for another department gives nothing rather than widening the scope.
    let (_, other, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/incidents?department=streets",
        Some(&inspector),
        None,
    )
    .await;
    assert_eq!(other["incidents"], json!([]));
    for uri in [
        "/api/v1/incidents/inc-street",
        "/api/v1/incidents/inc-street/notes",
    ] {
        let method = if uri.ends_with("notes") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, _, _) = call(
            &f.app,
            method,
            uri,
            Some(&inspector),
            Some(json!({"text": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-street/status",
        Some(&inspector),
        Some(json!({"status": "dispatched"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, tickets, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/tickets",
        Some(&inspector),
        None,
    )
    .await;
    assert_eq!(tickets["tickets"][0]["id"], "inc-gas");
    assert_eq!(
        tickets["tickets"][0]["next_deadline"],
        "2026-11-27T12:00:00Z"
    );
}

/// A GET with an optional `Range` header: status, headers and the raw body.
async fn get_range(
    app: &Router,
    uri: &str,
    token: &str,
    range: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

#[tokio::test]
async fn a_clip_is_served_by_byte_ranges_to_those_who_may_see_its_incident() {
    let f = fixture().await;
    let evidence = f._dir.path().join("evidence");
    let clip: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(evidence.join("inc-gas").join("2.mp4"), &clip).unwrap();
    std::fs::create_dir_all(evidence.join("inc-street")).unwrap();
    std::fs::write(evidence.join("inc-street").join("1.mp4"), &clip).unwrap();
    let operator = f.token(Role::Operator).to_string();
    let uri = "/api/v1/evidence/inc-gas/2.mp4";
    let header = |headers: &axum::http::HeaderMap, name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };

    // Whole, in more than one chunk.
    let (status, headers, body) = get_range(&f.app, uri, &operator, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, header::CONTENT_TYPE), "video/mp4");
    assert_eq!(header(&headers, header::ACCEPT_RANGES), "bytes");
    assert_eq!(header(&headers, header::CONTENT_LENGTH), "200000");
    assert!(body == clip);

    // One range, each form.
    for (range, first, last) in [
        ("bytes=10-19", 10, 19),
        ("bytes=199990-", 199_990, 199_999),
        ("bytes=-7", 199_993, 199_999),
        ("bytes=100000-300000", 100_000, 199_999),
        ("bytes=0-", 0, 199_999),
    ] {
        let (status, headers, body) = get_range(&f.app, uri, &operator, Some(range)).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&headers, header::CONTENT_RANGE),
            format!("bytes {first}-{last}/200000"),
            "{range}"
        );
        assert_eq!(
            header(&headers, header::CONTENT_LENGTH),
            (last - first + 1).to_string()
        );
        assert!(body == clip[first..=last], "{range}");
    }

    // Past the end: 416 with the length.
    let (status, headers, _) = get_range(&f.app, uri, &operator, Some("bytes=200000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&headers, header::CONTENT_RANGE), "bytes */200000");

    // Several ranges: the whole file.
    let (status, _, body) = get_range(&f.app, uri, &operator, Some("bytes=0-1,5-6")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), clip.len());

    // The inspector sees the clip of their department's incident, never another's, whatever
    // the range; no file outside the evidence directory, no other kind of file.
    let inspector = f.token(Role::Inspector).to_string();
    let (status, _, body) = get_range(&f.app, uri, &inspector, Some("bytes=0-3")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, clip[..4]);
    for (uri, range) in [
        ("/api/v1/evidence/inc-street/1.mp4", None),
        ("/api/v1/evidence/inc-street/1.mp4", Some("bytes=0-3")),
        ("/api/v1/evidence/inc-street/1.mp4", Some("bytes=900000-")),
    ] {
        let (status, _, _) = get_range(&f.app, uri, &inspector, range).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri} {range:?}");
    }
    std::fs::write(evidence.join("inc-gas").join("notes.txt"), b"x").unwrap();
    for uri in [
        "/api/v1/evidence/inc-gas/..%2F..%2Foutbox.sqlite",
        "/api/v1/evidence/inc-gas/..%2Finc-street%2F1.mp4",
        "/api/v1/evidence/..%2Finc-street/1.mp4",
        "/api/v1/evidence/inc-gas/notes.txt",
        "/api/v1/evidence/inc-gas/.mp4",
    ] {
        let (status, _, _) = get_range(&f.app, uri, &operator, Some("bytes=0-")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    // Each part served is audited.
    assert!(
        f.audit_actions()
            .iter()
            .filter(|(actor, action, target)| actor == "insp"
                && action == "evidence.read"
                && target == "inc-gas/2.mp4")
            .count()
            == 1
    );
}

#[tokio::test]
async fn status_changes_follow_the_lifecycle_and_every_change_is_audited() {
    let f = fixture().await;
    let inspector = f.token(Role::Inspector).to_string();
    let operator = f.token(Role::Operator).to_string();
    let engineer = f.token(Role::Engineer).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/ack",
        Some(&operator),
        Some(json!({"note": "seen"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["incident"]["state"], "acknowledged");
    assert_eq!(body["incident"]["acknowledged"]["by"], "op");
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/status",
        Some(&inspector),
        Some(json!({"status": "dispatched", "note": "team 3"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["incident"]["state"], "dispatched");
    // verified only follows resolved.
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/status",
        Some(&inspector),
        Some(json!({"status": "verified"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "transition");
    let (status, _, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/notes",
        Some(&inspector),
        Some(json!({"text": "gas valve closed"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body, _) = call(
        &f.app,
        Method::PUT,
        "/api/v1/cameras/cam-1/thresholds",
        Some(&engineer),
        Some(json!({"person": 0.2})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "below the detector's floor: {body}"
    );
    let (status, _, _) = call(
        &f.app,
        Method::PUT,
        "/api/v1/cameras/cam-1/thresholds",
        Some(&engineer),
        Some(json!({"person": 0.55})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (_, detail, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/incidents/inc-gas",
        Some(&operator),
        None,
    )
    .await;
    let kinds: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["system", "status", "note"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // The acknowledgement moved the lifecycle: its status entry says so once.
    assert!(!kinds.contains(&"ack"), "{kinds:?}");
    assert_eq!(detail["revisions"].as_array().unwrap().len(), 3);

    let actions = f.audit_actions();
    for (actor, action, target) in [
        ("op", "incident.ack", "inc-gas"),
        ("insp", "incident.status", "inc-gas"),
        ("insp", "incident.note", "inc-gas"),
        ("eng", "camera.thresholds", "cam-1"),
        ("op", "login", "op"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, b, c)| a == actor && b == action && c == target),
            "{actor} {action} {target} in {actions:?}"
        );
    }
    // The refused change left no entry claiming it happened; before and after are kept.
    let admin = f.token(Role::Admin).to_string();
    let (_, audit, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/audit?action=camera.thresholds",
        Some(&admin),
        None,
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["before"]["person"], json!(0.4));
    assert_eq!(entries[0]["after"]["person"], json!(0.55));
    // The threshold change outlives a restart: a new console applies it to the camera.
    let again = Arc::new(LiveThresholds::new(
        0.3,
        [("person".to_string(), 0.4)].into(),
    ));
    f.console.register_camera(CameraRegistration {
        id: skynet_core::DeviceId::new("cam-1"),
        grid: "G-0201".into(),
        owner: OwnerKind::SafetyProduction,
        thresholds: Arc::clone(&again),
    });
    assert_eq!(again.get("person"), Some(0.55));
}

#[tokio::test]
async fn logins_are_rate_limited_sessions_end_at_logout_and_errors_are_json() {
    let f = fixture().await;
    let (status, _, headers) = call(
        &f.app,
        Method::POST,
        "/api/v1/login",
        None,
        Some(json!({"username": "eng", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.starts_with("skynet_session=sks_")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Guessing at one account (from an unknown address: the router is called directly)
    // slows it down once the account's free failures are spent.
    for _ in 0..skynet_serve::console::auth::ACCOUNT.free {
        let (status, body, _) = call(
            &f.app,
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "op", "password": "wrong password"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_credentials");
    }
    let (status, body, headers) = call(
        &f.app,
        Method::POST,
        "/api/v1/login",
        None,
        Some(json!({"username": "op", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    // A body that is not JSON is refused with a JSON error.
    let response = f
        .app
        .clone()
        .oneshot(
            Request::post("/api/v1/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // The session cookie works like the bearer token, and logout ends it.
    let token = f.token(Role::Admin).to_string();
    let with_cookie = |uri: &str, method: Method| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(
                header::COOKIE,
                format!("theme=dark; skynet_session={token}"),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    let me = f
        .app
        .clone()
        .oneshot(with_cookie("/api/v1/me", Method::GET))
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let out = f
        .app
        .clone()
        .oneshot(with_cookie("/api/v1/logout", Method::POST))
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let me = f
        .app
        .clone()
        .oneshot(with_cookie("/api/v1/me", Method::GET))
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_live_stream_brings_revisions_to_those_who_may_see_them() {
    let f = fixture().await;
    let open = |role: Role| {
        let token = f.token(role).to_string();
        let app = f.app.clone();
        async move {
            let response = app
                .oneshot(
                    Request::get("/api/v1/events")
                        .header(header::AUTHORIZATION, format!("Bearer {token}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            response.into_body()
        }
    };
    let mut operator = open(Role::Operator).await;
    let mut inspector = open(Role::Inspector).await;
    async fn next_event(body: &mut Body) -> String {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
                .await
                .expect(
                    "an event within 60 s (a deadline for a loaded machine, not a latency check)",
                )
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8_lossy(&data).to_string();
                if !text.starts_with(':') {
                    return text;
                }
            }
        }
    }
    assert!(next_event(&mut operator).await.starts_with("event: hello"));
    assert!(next_event(&mut inspector).await.starts_with("event: hello"));
    let mut street = incident("inc-street", "streets", "city_management", "I");
    street.revision = 2;
    let mut gas = incident("inc-gas", "emergency", "safety_production", "I");
    gas.revision = 2;
    f.console
        .publish(&[RiskEvent::Incident(street), RiskEvent::Incident(gas)]);
    let first = next_event(&mut operator).await;
    assert!(first.contains("inc-street") && first.starts_with("event: incident"));
    assert!(next_event(&mut operator).await.contains("inc-gas"));
    // The inspector's first incident is their own: the other department's never came.
    let mine = next_event(&mut inspector).await;
    assert!(mine.contains("inc-gas"), "{mine}");
    assert!(mine.contains("\"acknowledged\":null"));
}

#[tokio::test]
async fn the_console_page_is_served_compressed_with_an_etag() {
    let f = fixture().await;
    let response = f
        .app
        .clone()
        .oneshot(
            Request::get("/")
                .header(header::ACCEPT_ENCODING, "gzip, br")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(
        response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let etag = response.headers()[header::ETAG].clone();
    let again = f
        .app
        .clone()
        .oneshot(
            Request::get("/")
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_reopened_incident_must_be_acknowledged_again() {
    let f = fixture().await;
    let operator = f.token(Role::Operator).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/ack",
        Some(&operator),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["incident"]["acknowledged"]["by"], "op");
    // The engine closes it, then it comes back within its cooldown: the same id, open.
    let mut reopened = incident("inc-gas", "emergency", "safety_production", "I");
    reopened.revision = 5;
    reopened.change = skynet_core::IncidentChange::Reopened;
    commit(&f.db(), &reopened);
    f.console.publish(&[RiskEvent::Incident(reopened)]);
    let (_, detail, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/incidents/inc-gas",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(detail["incident"]["state"], "open");
    assert_eq!(
        detail["incident"]["acknowledged"],
        Value::Null,
        "the alarm sounds again"
    );
}

#[tokio::test]
async fn a_status_change_the_risk_stage_refuses_answers_202_and_is_audited_as_requested() {
    let f = fixture().await;
    let inspector = f.token(Role::Inspector).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/incidents/inc-gas/status",
        Some(&inspector),
        Some(json!({"status": "dispatched", "note": "refused by the risk stage"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["incident"]["state"], "open");
    let admin = f.token(Role::Admin).to_string();
    let (_, audit, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/audit?action=incident.status",
        Some(&admin),
        None,
    )
    .await;
    // Audited as it was handed over: what was asked (the revisions say it was not applied).
    let after = &audit["entries"][0]["after"];
    assert_eq!(after["requested"], "dispatched");
    assert_eq!(audit["entries"][0]["actor"], "insp");
}

#[tokio::test]
async fn changes_need_json_from_the_consoles_own_origin_and_every_error_is_json() {
    let f = fixture().await;
    let operator = f.token(Role::Operator).to_string();
    let send = |request: Request<Body>| {
        let app = f.app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, body)
        }
    };
    let ack = |content_type: &'static str, origin: Option<&'static str>, body: &'static str| {
        let mut request = Request::post("/api/v1/incidents/inc-gas/ack")
            .header(header::AUTHORIZATION, format!("Bearer {operator}"))
            .header(header::CONTENT_TYPE, content_type)
            .header(header::HOST, "console.city:8080");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.body(Body::from(body)).unwrap()
    };
    // A form post: what another site can make a browser send with its cookie.
    let (status, body) = send(ack("application/x-www-form-urlencoded", None, "note=x")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"], "unsupported_media_type");
    let (status, body) = send(ack("application/json", Some("http://evil.example"), "{}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "cross_origin");
    let (status, body) = send(ack(
        "application/json",
        Some("http://console.city:8080"),
        "{}",
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Malformed query strings, too many filter values, a wrong method: JSON errors.
    let many = format!("/api/v1/incidents?grid={}", vec!["G"; 101].join(","));
    for (method, uri, code) in [
        (
            Method::GET,
            "/api/v1/incidents?limit=many",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, many.as_str(), StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/api/v1/incidents?state=lost",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/api/v1/incidents",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let (status, body, _) = call(
            &f.app,
            method.clone(),
            uri,
            Some(&operator),
            (method == Method::DELETE).then(|| json!({})),
        )
        .await;
        assert_eq!(status, code, "{method} {uri}: {body}");
        assert!(body["error"].is_string(), "{method} {uri}: {body}");
    }
}

/// The schema the OpenAPI document gives for an answer, with the document's components
/// beside it so that its `$ref`s resolve.
fn documented_schema(doc: &Value, path: &str, method: &str, status: StatusCode) -> Value {
    let schema = &doc["paths"][path][method]["responses"][status.as_str()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema in openapi.json"
    );
    let mut schema = schema.clone();
    schema["components"] = doc["components"].clone();
    schema
}

/// The object keys of `value` that its schema does not declare. Schemas without
/// `properties` (GeoJSON, revisions, audit before/after) are open; `IncidentView` lists its
/// own keys and stands for an incident revision too (`schemas/incident.schema.json`).
fn undeclared(doc: &Value, schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let mut schema = schema;
    let mut extra: Vec<String> = Vec::new();
    while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/components/schemas/");
        if name == "IncidentView" {
            let incident: Value =
                serde_json::from_str(include_str!("../../../schemas/incident.schema.json"))
                    .expect("the published incident schema");
            extra.extend(
                incident["properties"]["data"]["properties"]
                    .as_object()
                    .expect("incident properties")
                    .keys()
                    .cloned(),
            );
        }
        schema = &doc["components"]["schemas"][name];
    }
    match value {
        Value::Object(map) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, item) in map {
                match properties.get(key) {
                    Some(declared) => {
                        undeclared(doc, declared, item, &format!("{at}.{key}"), found)
                    }
                    None if extra.contains(key) => {}
                    None => found.push(format!("{at}.{key}")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(declared) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    undeclared(doc, declared, item, &format!("{at}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// Checks an answer against openapi.json: valid against its schema, and no key the
/// document does not name.
fn check_documented(doc: &Value, path: &str, method: &str, status: StatusCode, body: &Value) {
    let schema = documented_schema(doc, path, method, status);
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?}\n{body}"
    );
    let mut found = Vec::new();
    undeclared(doc, &schema, body, "", &mut found);
    assert!(
        found.is_empty(),
        "{method} {path} {status}: keys openapi.json does not declare: {found:?}\n{body}"
    );
}

/// A call and the answer it must get: method and path as openapi.json names them, the URI,
/// the caller's token, the body, the status.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<Value>,
    StatusCode,
);

#[tokio::test]
async fn every_answer_has_the_shape_the_openapi_document_gives() {
    let f = fixture().await;
    let doc = call(&f.app, Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .1;
    let admin = f.token(Role::Admin).to_string();
    let operator = f.token(Role::Operator).to_string();
    let inspector = f.token(Role::Inspector).to_string();
    // Some of everything that may be null or empty: a reading, an acknowledgement, a note.
    f.console
        .sensor_reading("gas-07", 12.5, "%LEL", chrono::Utc::now());
    f.console.sensor_offline("gas-07", Some(chrono::Utc::now()));
    let calls: &[Case] = &[
        (
            "post",
            "/api/v1/login",
            "/api/v1/login",
            None,
            Some(json!({"username": "adm", "password": PASSWORD})),
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/login",
            "/api/v1/login",
            None,
            Some(json!({"username": "adm", "password": "wrong"})),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "get",
            "/api/v1/me",
            "/api/v1/me",
            Some(&inspector),
            None,
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/incidents/{id}/notes",
            "/api/v1/incidents/inc-gas/notes",
            Some(&operator),
            Some(json!({"text": "on my way"})),
            StatusCode::CREATED,
        ),
        (
            "post",
            "/api/v1/incidents/{id}/ack",
            "/api/v1/incidents/inc-gas/ack",
            Some(&operator),
            Some(json!({"note": "seen"})),
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/incidents/{id}/status",
            "/api/v1/incidents/inc-gas/status",
            Some(&admin),
            Some(json!({"status": "dispatched", "note": "team 3"})),
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/incidents/{id}/status",
            "/api/v1/incidents/inc-street/status",
            Some(&admin),
            Some(json!({"status": "dispatched", "note": "refused by the risk stage"})),
            StatusCode::ACCEPTED,
        ),
        (
            "post",
            "/api/v1/incidents/{id}/status",
            "/api/v1/incidents/inc-gas/status",
            Some(&admin),
            Some(json!({"status": "verified"})),
            StatusCode::CONFLICT,
        ),
        (
            "get",
            "/api/v1/incidents",
            "/api/v1/incidents",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/incidents",
            "/api/v1/incidents?limit=1",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/incidents",
            "/api/v1/incidents?state=bogus",
            Some(&admin),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "get",
            "/api/v1/incidents/{id}",
            "/api/v1/incidents/inc-gas",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/incidents/{id}",
            "/api/v1/incidents/inc-street",
            Some(&inspector),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "get",
            "/api/v1/grids",
            "/api/v1/grids",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/grids/{id}/history",
            "/api/v1/grids/G-0201/history",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/cameras",
            "/api/v1/cameras",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/cameras",
            "/api/v1/cameras",
            Some(&inspector),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "put",
            "/api/v1/cameras/{id}/thresholds",
            "/api/v1/cameras/cam-1/thresholds",
            Some(&admin),
            Some(json!({"person": 0.55})),
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/cameras/{id}/thresholds/what-if",
            "/api/v1/cameras/cam-1/thresholds/what-if",
            Some(&admin),
            Some(json!({"person": 0.7})),
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/cameras/{id}/thresholds/what-if",
            "/api/v1/cameras/cam-1/thresholds/what-if",
            Some(&admin),
            Some(json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "post",
            "/api/v1/cameras/{id}/thresholds/what-if",
            "/api/v1/cameras/cam-9/thresholds/what-if",
            Some(&admin),
            Some(json!({"person": 0.7})),
            StatusCode::NOT_FOUND,
        ),
        (
            "post",
            "/api/v1/cameras/{id}/thresholds/what-if",
            "/api/v1/cameras/cam-1/thresholds/what-if",
            Some(&operator),
            Some(json!({"person": 0.7})),
            StatusCode::FORBIDDEN,
        ),
        (
            "get",
            "/api/v1/patrols",
            "/api/v1/patrols",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/patrols",
            "/api/v1/patrols",
            Some(&inspector),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/patrols/grids",
            "/api/v1/patrols/grids",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/patrols/{patrol}/rounds",
            "/api/v1/patrols/p1/rounds?limit=5",
            Some(&operator),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/patrols/{patrol}/rounds",
            "/api/v1/patrols/p1/rounds?limit=many",
            Some(&operator),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "get",
            "/api/v1/patrols/{patrol}/rounds",
            "/api/v1/patrols/p9/rounds",
            Some(&operator),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "get",
            "/api/v1/patrols/{patrol}/rounds/{round}/cameras/{camera}/snapshot",
            "/api/v1/patrols/p1/rounds/7/cameras/cam-p2/snapshot",
            Some(&inspector),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "get",
            "/api/v1/sensors",
            "/api/v1/sensors",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/platforms",
            "/api/v1/platforms",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/tickets",
            "/api/v1/tickets",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/audit",
            "/api/v1/audit",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/users",
            "/api/v1/users",
            Some(&admin),
            None,
            StatusCode::OK,
        ),
        (
            "post",
            "/api/v1/users",
            "/api/v1/users",
            Some(&admin),
            Some(
                json!({"name": "new-op", "role": "operator", "password": "long enough pw", "department": "x"}),
            ),
            StatusCode::CREATED,
        ),
        (
            "post",
            "/api/v1/users",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "new-op", "role": "operator", "password": "long enough pw"})),
            StatusCode::OK,
        ),
        (
            "get",
            "/api/v1/me",
            "/api/v1/me",
            None,
            None,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (method, path, uri, token, body, expected) in calls {
        let (status, answer, _) = call(
            &f.app,
            method.to_uppercase().parse().unwrap(),
            uri,
            *token,
            body.clone(),
        )
        .await;
        assert_eq!(status, *expected, "{method} {uri}: {answer}");
        check_documented(&doc, path, method, status, &answer);
    }
    // The detail now has a person's entries in its timeline, and the grid cell its devices.
    let (_, detail, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/incidents/inc-gas",
        Some(&admin),
        None,
    )
    .await;
    let kinds: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"note") && kinds.contains(&"status"),
        "{kinds:?}"
    );
    let (_, grids, _) = call(&f.app, Method::GET, "/api/v1/grids", Some(&admin), None).await;
    assert_eq!(
        grids["features"][0]["properties"]["cameras"],
        json!(["cam-1"])
    );
    assert_eq!(grids["features"][0]["properties"]["name"], "Warehouses");
    let (_, sensors, _) = call(&f.app, Method::GET, "/api/v1/sensors", Some(&admin), None).await;
    assert_eq!(sensors["sensors"][0]["last_reading"]["value"], 12.5);
    // And the check sees a key the document does not name.
    let mut found = Vec::new();
    let me = documented_schema(&doc, "/api/v1/me", "get", StatusCode::OK);
    let surprise = json!({"name": "adm", "last_reading": {"at": null, "extra": 1}});
    undeclared(&doc, &me, &surprise, "", &mut found);
    assert_eq!(found, [".last_reading"]);
}

#[tokio::test]
async fn a_threshold_what_if_answers_the_counts_and_applies_nothing() {
    let f = fixture().await;
    let engineer = f.token(Role::Engineer).to_string();
    let what_if = "/api/v1/cameras/cam-1/thresholds/what-if";
    // Raising `person` from 0.4 to 0.7: the fake says one incident dropped.
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        what_if,
        Some(&engineer),
        Some(json!({"person": 0.7})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["added"], 0);
    assert_eq!(body["dropped"], 1);
    assert_eq!(body["changed"], 2);
    assert_eq!(body["unchanged"], 7);
    assert_eq!(body["incidents"], 10);
    assert_eq!(body["observations"], 1234);
    assert_eq!(body["since"], "2026-11-26T12:00:00Z");
    assert_eq!(body["until"], "2026-11-27T12:00:00Z");
    assert_eq!(body["examples"][0]["old_level"], "III");
    assert_eq!(body["examples"][0]["new_level"], "IV");
    // Nothing was applied, saved or audited.
    let (_, cameras, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/cameras",
        Some(&engineer),
        None,
    )
    .await;
    let person = cameras["cameras"][0]["thresholds"]["person"]
        .as_f64()
        .unwrap();
    assert!((person - 0.4).abs() < 1e-6, "{cameras}");
    assert!(
        !f.audit_actions()
            .iter()
            .any(|(_, action, _)| action == "camera.thresholds"),
        "a what-if is not a change"
    );
    // The change's own checks: a score below the detector's floor, a label the camera does
    // not look for, an empty change, a body that is not a score table.
    for bad in [
        json!({"person": 0.2}),
        json!({"bicycle": 0.5}),
        json!({}),
        json!({"person": "high"}),
        json!([0.5]),
    ] {
        let (status, body, _) = call(
            &f.app,
            Method::POST,
            what_if,
            Some(&engineer),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    // Attack: a body over the route's 64 KiB is refused before it is read whole.
    let huge: serde_json::Map<String, Value> = (0..8000)
        .map(|i| (format!("label-{i:05}-padding-padding"), json!(0.5)))
        .collect();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        what_if,
        Some(&engineer),
        Some(Value::Object(huge)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "too_large");
    // An operator may not ask.
    let operator = f.token(Role::Operator).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        what_if,
        Some(&operator),
        Some(json!({"person": 0.7})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn a_threshold_what_if_without_a_recording_says_so() {
    let f = fixture_without_what_if().await;
    let engineer = f.token(Role::Engineer).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/cameras/cam-1/thresholds/what-if",
        Some(&engineer),
        Some(json!({"person": 0.7})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "no_recording");
    assert!(
        body["message"].as_str().unwrap().contains("[risk] record"),
        "{body}"
    );
    let doc: Value = serde_json::from_str(include_str!("../src/console/openapi.json")).unwrap();
    check_documented(
        &doc,
        "/api/v1/cameras/{id}/thresholds/what-if",
        "post",
        status,
        &body,
    );
}

#[tokio::test]
async fn the_live_stream_brings_a_cameras_boxes_only_to_those_who_may_watch_it() {
    let f = fixture().await;
    for (id, owner) in [
        ("cam-street", OwnerKind::CityManagement),
        ("cam-gas", OwnerKind::SafetyProduction),
    ] {
        f.console.register_camera(CameraRegistration {
            id: skynet_core::DeviceId::new(id),
            grid: "G-0201".into(),
            owner,
            thresholds: Arc::new(LiveThresholds::new(0.3, BTreeMap::new())),
        });
    }
    let open = |role: Role| {
        let token = f.token(role).to_string();
        let app = f.app.clone();
        async move {
            app.oneshot(
                Request::get("/api/v1/events")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .into_body()
        }
    };
    async fn next_event(body: &mut Body) -> String {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
                .await
                .expect(
                    "an event within 60 s (a deadline for a loaded machine, not a latency check)",
                )
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8_lossy(&data).to_string();
                if !text.starts_with(':') {
                    return text;
                }
            }
        }
    }
    let mut operator = open(Role::Operator).await;
    let mut inspector = open(Role::Inspector).await;
    assert!(next_event(&mut operator).await.starts_with("event: hello"));
    assert!(next_event(&mut inspector).await.starts_with("event: hello"));
    let person = skynet_core::Detection {
        label: "person".into(),
        score: 0.9,
        bbox: skynet_core::BBox::new(160.0, 120.0, 480.0, 360.0),
        track: Some(7),
    };
    let at = chrono::Utc::now();
    for camera in ["cam-street", "cam-gas"] {
        f.console.publish_detections(
            &skynet_core::DeviceId::new(camera),
            at,
            (640, 480),
            std::slice::from_ref(&person),
        );
    }
    let data = |event: &str| -> Value {
        let line = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data in {event}"));
        serde_json::from_str(line).unwrap()
    };
    // The operator (sources.read) sees every camera's boxes, as fractions of the frame.
    let first = next_event(&mut operator).await;
    assert!(first.starts_with("event: detections"), "{first}");
    let first = data(&first);
    assert_eq!(first["camera"], "cam-street");
    assert_eq!(first["width"], 640);
    let b = &first["boxes"][0];
    assert_eq!(b["label"], "person");
    assert_eq!(b["track"], 7);
    assert_eq!(
        [&b["x1"], &b["y1"], &b["x2"], &b["y2"]].map(|v| v.as_f64().unwrap()),
        [0.25, 0.25, 0.75, 0.75]
    );
    assert_eq!(data(&next_event(&mut operator).await)["camera"], "cam-gas");
    // The inspector's first boxes are of their owner's camera: the other one's never came.
    let mine = next_event(&mut inspector).await;
    assert!(mine.starts_with("event: detections"), "{mine}");
    assert_eq!(data(&mine)["camera"], "cam-gas");
}

#[tokio::test]
async fn patrols_show_rounds_and_last_looks_to_those_who_may_see_their_cameras() {
    let f = fixture().await;
    let admin = f.token(Role::Admin).to_string();
    let inspector = f.token(Role::Inspector).to_string();
    let mut live = f.console.subscribe_live();
    // Round 8: cam-1 offline this time, cam-p2 back.
    f.console
        .record_patrol_round(&patrol_round(8, "offline", "checked"));
    let message = live.try_recv().expect("a live message for the round");
    assert_eq!(message.kind, "patrol");
    assert!(message.data.contains("\"round\":8"), "{}", message.data);

    let (status, body, _) = call(&f.app, Method::GET, "/api/v1/patrols", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let patrol = &body["patrols"][0];
    assert_eq!(patrol["name"], "p1");
    assert_eq!(patrol["max_concurrent"], 2);
    assert_eq!(patrol["rounds_kept"], 2);
    assert_eq!(patrol["rounds"][0]["round"], 8, "newest first");
    assert_eq!(patrol["rounds"][0]["seconds"], 12.0);
    assert_eq!(
        (
            &patrol["rounds"][1]["checked"],
            &patrol["rounds"][1]["offline"]
        ),
        (&json!(1), &json!(1))
    );
    let cam_1 = &patrol["cameras"][0];
    assert_eq!(cam_1["id"], "cam-1");
    assert_eq!(cam_1["last"]["status"], "offline");
    assert_eq!(cam_1["last"]["snapshot_url"], Value::Null);
    assert_eq!(cam_1["rounds_since_checked"], 1);
    let cam_p2 = &patrol["cameras"][1];
    assert_eq!(cam_p2["rounds_since_checked"], 0);
    assert_eq!(cam_p2["grid"], "G-0202");
    assert_eq!(
        cam_p2["last"]["snapshot_url"],
        "/api/v1/patrols/p1/rounds/8/cameras/cam-p2/snapshot"
    );
    assert_eq!(
        patrol["offline"],
        json!([{"grid": "G-0201", "cameras": [{"id": "cam-1", "status": "offline"}]}])
    );
    let (_, grids, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols/grids",
        Some(&admin),
        None,
    )
    .await;
    let cells: Vec<(&str, &Value)> = grids["grids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["grid"].as_str().unwrap(), &g["rounds_since_checked"]))
        .collect();
    assert_eq!(cells, [("G-0201", &json!(1)), ("G-0202", &json!(0))]);

    // The inspector (safety production) sees cam-1 only: in the list, the rounds, the cells
    // and the snapshots.
    let (_, mine, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols",
        Some(&inspector),
        None,
    )
    .await;
    let ids: Vec<&str> = mine["patrols"][0]["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cam-1"]);
    assert_eq!(mine["patrols"][0]["rounds"][0]["cameras"], 1);
    let (_, rounds, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols/p1/rounds?limit=1",
        Some(&inspector),
        None,
    )
    .await;
    assert_eq!(rounds["rounds"].as_array().unwrap().len(), 1);
    assert_eq!(rounds["rounds"][0]["looks"].as_array().unwrap().len(), 1);
    assert_eq!(rounds["rounds"][0]["looks"][0]["id"], "cam-1");
    let (_, cells, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols/grids",
        Some(&inspector),
        None,
    )
    .await;
    assert_eq!(cells["grids"].as_array().unwrap().len(), 1);
    assert_eq!(cells["grids"][0]["grid"], "G-0201");
    assert_eq!(cells["grids"][0]["cameras"][0]["patrol"], "p1");

    // Snapshots: served as evidence is (not cached), in scope only, and nothing but a
    // patrol camera's file of a round.
    let snapshot = "/api/v1/patrols/p1/rounds/7/cameras/cam-1/snapshot";
    let (status, headers, bytes) = get_range(&f.app, snapshot, &inspector, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(bytes, b"\xff\xd8patrol");
    let police = "/api/v1/patrols/p1/rounds/7/cameras/cam-p2/snapshot";
    assert_eq!(
        get_range(&f.app, police, &admin, None).await.0,
        StatusCode::OK
    );
    for uri in [
        police,
        "/api/v1/patrols/p1/rounds/8/cameras/cam-1/snapshot",
        "/api/v1/patrols/p9/rounds/7/cameras/cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/7/cameras/cam-9/snapshot",
        "/api/v1/patrols/p1/rounds/7/cameras/..%2F..%2F..%2Foutbox.sqlite/snapshot",
        "/api/v1/patrols/p1/rounds/7/cameras/..%2Fp1%2F7%2Fcam-1/snapshot",
        "/api/v1/patrols/..%2Fpatrol%2Fp1/rounds/7/cameras/cam-1/snapshot",
        "/api/v1/patrols/..%2F..%2Finc-gas/rounds/7/cameras/cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/..%2F7/cameras/cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/-7/cameras/cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/+7/cameras/cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/7/cameras/.cam-1/snapshot",
        "/api/v1/patrols/p1/rounds/7/cameras/cam-1%00/snapshot",
    ] {
        let (status, _, body) = get_range(&f.app, uri, &inspector, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"], "not_found", "{uri}");
        if uri != police {
            assert_eq!(
                get_range(&f.app, uri, &admin, None).await.0,
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }
    let (status, _, _) = call(&f.app, Method::GET, snapshot, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&f.app, Method::GET, "/api/v1/patrols", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // An inspector of no owner sees no patrol camera: no patrol, and its rounds are not found.
    let store = ConsoleStore::open(&f.db()).unwrap();
    fixture::put_users(
        &store,
        &[("insp-any", Role::Inspector, Some("emergency"), None)],
        PASSWORD,
    );
    let (_, login, _) = call(
        &f.app,
        Method::POST,
        "/api/v1/login",
        None,
        Some(json!({"username": "insp-any", "password": PASSWORD})),
    )
    .await;
    let other = login["token"].as_str().unwrap();
    let (_, none, _) = call(&f.app, Method::GET, "/api/v1/patrols", Some(other), None).await;
    assert_eq!(none["patrols"], json!([]));
    let (status, _, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols/p1/rounds",
        Some(other),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        get_range(&f.app, snapshot, other, None).await.0,
        StatusCode::NOT_FOUND
    );
}

/// After a restart the console reads a patrol's latest rounds back from the outbox's stored
/// `skynet.patrol_round.v1` events when the pipeline registers the patrol.
#[tokio::test]
async fn a_patrol_registered_after_a_restart_shows_its_stored_rounds() {
    let f = fixture().await;
    let db = rusqlite::Connection::open(f.db()).unwrap();
    for round in [3u64, 4, 5] {
        let mut data = serde_json::to_value(patrol_round(round, "checked", "offline")).unwrap();
        data["patrol"] = json!("p2");
        let body = json!({"specversion": "1.0", "id": format!("p2/{round}"), "source": "skynet/test",
            "type": "skynet.patrol_round.v1", "subject": "p2", "time": data["finished"],
            "datacontenttype": "application/json", "data": data});
        db.execute(
            "INSERT INTO events (id, type, subject, time, body, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
            rusqlite::params![format!("p2/{round}"), "skynet.patrol_round.v1", "p2", "2026-12-06T10:00:00Z", body.to_string()],
        )
        .unwrap();
    }
    // Another patrol's round and another type are not read back.
    db.execute(
        "INSERT INTO events (id, type, subject, time, body, stored_at) VALUES ('x/1', 'skynet.grid_risk.v1', 'p2', 't', '{}', 't')",
        [],
    )
    .unwrap();
    f.console.register_patrol(PatrolRegistration {
        name: "p2".into(),
        every_s: 30.0,
        dwell_s: 2.0,
        max_concurrent: 1,
        cameras: vec![skynet_core::DeviceId::new("cam-1")],
    });
    // The pipeline records round 5 again and then round 6: not shown twice.
    let mut again = patrol_round(5, "checked", "offline");
    again.patrol = "p2".into();
    f.console.record_patrol_round(&again);
    let mut next = patrol_round(6, "offline", "offline");
    next.patrol = "p2".into();
    f.console.record_patrol_round(&next);
    let admin = f.token(Role::Admin).to_string();
    let (status, body, _) = call(
        &f.app,
        Method::GET,
        "/api/v1/patrols/p2/rounds?limit=100",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rounds: Vec<u64> = body["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [6, 5, 4, 3]);
    let (_, patrols, _) = call(&f.app, Method::GET, "/api/v1/patrols", Some(&admin), None).await;
    let p2 = patrols["patrols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p2")
        .unwrap();
    assert_eq!(p2["cameras"][0]["rounds_since_checked"], 1);
}

#[tokio::test]
async fn the_sources_api_lists_the_video_platforms_with_their_state_and_channels() {
    let f = fixture().await;
    let admin = f.token(Role::Admin).to_string();
    let (status, body, _) =
        call(&f.app, Method::GET, "/api/v1/platforms", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let platform = &body["platforms"][0];
    assert_eq!(platform["id"], "34020000002000000001");
    assert_eq!(platform["kind"], "gb28181");
    assert_eq!(platform["owner"], "police");
    // No health entry yet (the pipeline registers `platform <id>`): starting.
    assert_eq!(platform["state"], "starting");
    assert_eq!(
        platform["lower_platforms_online"],
        json!(["34020000002000000002"])
    );
    assert_eq!(platform["channels_listed"], 3);
    assert_eq!(platform["channels_analysed"], 1);
    let doc: Value = serde_json::from_str(include_str!("../src/console/openapi.json")).unwrap();
    check_documented(&doc, "/api/v1/platforms", "get", status, &body);
}
