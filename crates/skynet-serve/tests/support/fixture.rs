//! The console fixture that the console's API tests (crates/skynet-serve/tests/console_api.rs)
//! and the attack tests (tests/security: scope.rs, openapi_fuzz.rs) share: a console over a
//! state database in a temporary directory with evidence files, the grid G-0201, the camera
//! `cam-1` with a frame, the sensor `gas-07`, users per role, and a stand-in for the risk
//! stage. Each test keeps its own incidents, users and configuration; only the building is
//! here. The login tests and benchmarks (tests/security/logins.rs, benches/logins.rs,
//! benches/console.rs) take its users and its server. Included with `#[path]`, so it uses
//! only what both packages depend on.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use skynet_core::{CaseStatus, Health, Incident, LiveThresholds, OwnerKind, RiskEvent};
use skynet_emit::{Outbox, OutboxEvent};
use skynet_serve::console::{
    ApiConfig, CameraRegistration, Console, ConsoleStore, PlatformFigures, PlatformRegistration,
    Role, SensorRegistration, User,
};

/// A user: name, role, department, owner kind.
pub type UserSpec = (
    &'static str,
    Role,
    Option<&'static str>,
    Option<&'static str>,
);

/// Revision 1 of incident `id` of `category` at `level`, opened in grid G-0201 by the sensor
/// `gas-07`, for `department` and the owner kind `owner`.
pub fn incident(id: &str, department: &str, owner: &str, category: &str, level: &str) -> Incident {
    serde_json::from_value(json!({
        "id": id, "revision": 1, "status": "opened", "state": "open", "change": "opened",
        "category": category, "level": level, "level_colour": "orange", "risk_score": 0.7,
        "confidence": 0.9, "grid": "G-0201", "department": department,
        "deadlines": {"dispatch_by": "2026-11-27T12:00:00Z", "resolve_by": "2026-11-27T20:00:00Z"},
        "sensor": "gas-07", "owner": owner,
        "first_seen": "2026-11-27T10:00:00Z", "last_seen": "2026-11-27T10:00:00Z",
        "observations": 3, "contributions": [], "detections": [],
        "rule": {"name": "gas-high", "kind": "threshold"}
    }))
    .expect("a valid incident")
}

/// Commits `events` to the outbox at `path` as the risk stage does (node `test`).
pub fn commit(path: &Path, events: &[RiskEvent]) {
    let events: Vec<OutboxEvent> = events.iter().map(|e| OutboxEvent::new("test", e)).collect();
    Outbox::open(path).unwrap().commit(&events, None).unwrap();
}

/// What differs between the tests' consoles.
pub struct Seed<'a> {
    pub config: ApiConfig,
    /// Evidence files: an incident id and the bytes of its `1.jpg`.
    pub evidence: &'a [(&'a str, &'a [u8])],
    /// Whose camera `cam-1` is.
    pub camera_owner: OwnerKind,
}

/// The console over the state database `db` (its incidents already committed), with the
/// evidence of `seed` under `dir/evidence`, the grid G-0201, the camera `cam-1` (with a
/// frame) and the sensor `gas-07` in it.
pub fn console(dir: &Path, db: &Path, seed: Seed<'_>) -> Console {
    let evidence = dir.join("evidence");
    for (id, jpeg) in seed.evidence {
        std::fs::create_dir_all(evidence.join(id)).unwrap();
        std::fs::write(evidence.join(id).join("1.jpg"), jpeg).unwrap();
    }
    let console = Console::open(seed.config, db, Some(evidence), Health::new(), None).unwrap();
    console.set_grids(vec![json!({
        "type": "Feature", "id": "G-0201",
        "geometry": {"type": "Polygon", "coordinates": [[[114.0, 22.0], [114.1, 22.0], [114.1, 22.1], [114.0, 22.0]]]},
        "properties": {"id": "G-0201", "name": "Warehouses"}
    })]);
    console.register_camera(CameraRegistration {
        id: skynet_core::DeviceId::new("cam-1"),
        grid: "G-0201".into(),
        owner: seed.camera_owner,
        thresholds: Arc::new(LiveThresholds::new(
            0.3,
            [("person".to_string(), 0.4)].into(),
        )),
    });
    console.register_sensor(SensorRegistration {
        id: "gas-07".into(),
        grid: "G-0201".into(),
        owner: OwnerKind::SafetyProduction,
        quantity: "ch4".into(),
        unit: Some("%LEL".into()),
    });
    console.register_platform(PlatformRegistration {
        id: "34020000002000000001".into(),
        kind: "gb28181".into(),
        listen: "127.0.0.1:5060".into(),
        owner: OwnerKind::Police,
        channels_analysed: 1,
        all_channels: false,
        live: Box::new(|| PlatformFigures {
            lower_online: vec!["34020000002000000002".into()],
            channels_listed: 3,
            channels_placed: 0,
        }),
    });
    console.set_frame(
        &skynet_core::DeviceId::new("cam-1"),
        b"\xff\xd8frame".to_vec(),
        chrono::Utc::now(),
    );
    console
}

/// The stand-in for the risk stage: a status change it does not `refuse` becomes the next
/// revision, committed to `db` and then published. It is applied on another thread, as the
/// risk stage does: the console hands the change over inside the transaction of its audit
/// entry, and does not wait for it there. A refused change is taken and leaves no revision
/// (another person's change came first).
pub fn connect_risk_stage(console: &Arc<Console>, db: &Path, refuse: fn(&CaseStatus) -> bool) {
    let applier = Arc::downgrade(console);
    let path: PathBuf = db.to_path_buf();
    console.connect_status(Box::new(move |status: CaseStatus| {
        if refuse(&status) {
            return Ok(());
        }
        let (path, applier) = (path.clone(), applier.clone());
        std::thread::spawn(move || {
            let outbox = Outbox::open(&path).unwrap();
            let Some(mut next) = outbox.incident(&status.incident).unwrap() else {
                return;
            };
            next.revision += 1;
            next.state = status.status;
            next.change = skynet_core::IncidentChange::Feedback;
            next.assignee = status.assignee;
            next.note = status.note;
            commit(&path, &[RiskEvent::Incident(next.clone())]);
            if let Some(console) = applier.upgrade() {
                console.publish(&[RiskEvent::Incident(next)]);
            }
        });
        Ok(())
    }));
}

/// Creates `users` in `store`, each with `password`.
pub fn put_users(store: &ConsoleStore, users: &[UserSpec], password: &str) {
    for &(name, role, department, owner) in users {
        store
            .put_user(
                &User {
                    name: name.into(),
                    role,
                    department: department.map(str::to_string),
                    owner: owner.map(str::to_string),
                },
                password,
            )
            .unwrap();
    }
}

/// Serves `console` on a loopback port of its own, on the current tokio runtime, until the
/// runtime ends; returns the address.
pub fn serve(console: Arc<Console>) -> SocketAddr {
    let listener = skynet_serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = skynet_serve::serve_console(listener, console, None, std::future::pending()).await;
    });
    addr
}
