//! The city and its sources: grid cells with their levels and history, cameras (frames,
//! thresholds), sensors, and the tickets (the active incidents by deadline).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use skynet_core::{GridRisk, Incident, IncidentState, LiveThresholds, RiskLevel};
use skynet_emit::IncidentQuery;

use super::error::{ApiError, ApiResult, Reply, blocking, body, jpeg};
use super::session::Caller;
use crate::console::auth::Permission;
use crate::console::live::{Console, narrow_grid, round4};
use crate::console::views::{CameraView, IncidentView, PlatformView, SensorView};
use crate::console::what_if::{WhatIfError, WhatIfReport};

/// The grid cells as GeoJSON.
#[derive(Serialize)]
pub(super) struct FeatureCollection {
    /// Always `FeatureCollection`.
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<GridFeature>,
}

/// A cell: its feature as configured, with its id and its live properties.
#[derive(Serialize)]
pub(super) struct GridFeature {
    /// The rest of the configured feature (`type`, `geometry`, …).
    #[serde(flatten)]
    rest: Map<String, Value>,
    id: String,
    properties: GridProperties,
}

#[derive(Serialize)]
pub(super) struct GridProperties {
    /// The configured properties (`id`, `name`, …).
    #[serde(flatten)]
    statics: Map<String, Value>,
    level: Option<RiskLevel>,
    colour: Option<&'static str>,
    score: f32,
    /// Active incidents in the caller's scope.
    open_incidents: u64,
    /// Device ids; empty for those who may not see the sources.
    cameras: Vec<String>,
    sensors: Vec<String>,
}

impl GridProperties {
    /// The properties set here, over any configured ones of the same name.
    const SET_HERE: [&str; 6] = [
        "level",
        "colour",
        "score",
        "open_incidents",
        "cameras",
        "sensors",
    ];
}

#[derive(Serialize)]
pub(super) struct GridHistory {
    grid: String,
    history: Vec<GridRisk>,
}

#[derive(Serialize)]
pub(super) struct Cameras {
    cameras: Vec<CameraView>,
    /// In a cluster's console: the live members per role and which node runs each camera.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::console::ClusterHealth>,
}

#[derive(Serialize)]
pub(super) struct Sensors {
    sensors: Vec<SensorView>,
}

#[derive(Serialize)]
pub(super) struct Platforms {
    platforms: Vec<PlatformView>,
}

/// A camera's thresholds after a change, per label.
#[derive(Serialize)]
pub(super) struct Thresholds {
    thresholds: BTreeMap<String, f64>,
}

#[derive(Serialize)]
pub(super) struct Tickets {
    tickets: Vec<Ticket>,
}

/// An incident with the deadline it must meet next.
#[derive(Serialize)]
pub(super) struct Ticket {
    #[serde(flatten)]
    incident: IncidentView,
    next_deadline: Option<DateTime<Utc>>,
}

/// Scores per label as the audit log keeps them.
fn audit_json(scores: &BTreeMap<String, f64>) -> Value {
    scores
        .iter()
        .map(|(label, score)| (label.clone(), Value::from(*score)))
        .collect::<Map<_, _>>()
        .into()
}

pub(super) async fn grids(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<FeatureCollection>> {
    let c = Arc::clone(&console);
    // Cell levels are the city's; incident counts are the caller's scope's.
    let scope = caller.user.scope();
    let (latest, active) = blocking(move || {
        c.outbox
            .with(|o| {
                Ok((
                    o.latest_grid_risk()?,
                    o.active_incidents_by_grid(
                        scope.department.as_deref(),
                        scope.owner.as_deref(),
                    )?,
                ))
            })
            .map_err(ApiError::internal)
    })
    .await?;
    let sources = caller.user.may(Permission::SourcesRead);
    let cameras: Vec<(String, String)> = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(id, c)| (id.to_string(), c.grid.clone()))
        .collect();
    let sensors: Vec<(String, String)> = console
        .sensors
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(id, s)| (id.clone(), s.grid.clone()))
        .collect();
    let features = console
        .grids
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|feature| {
            // The feature as configured (geometry, static properties), less what is set here.
            let mut rest = feature.as_object().cloned().unwrap_or_default();
            let mut statics = match rest.remove("properties") {
                Some(Value::Object(properties)) => properties,
                _ => Map::new(),
            };
            let id = statics
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            rest.remove("id");
            for key in GridProperties::SET_HERE {
                statics.remove(key);
            }
            let risk = latest.iter().find(|r| r.grid.as_str() == id);
            // Which devices sit where is for those who may see the sources.
            let in_cell = |devices: &[(String, String)]| -> Vec<String> {
                if !sources {
                    return Vec::new();
                }
                devices
                    .iter()
                    .filter(|(_, g)| *g == id)
                    .map(|(d, _)| d.clone())
                    .collect()
            };
            let properties = GridProperties {
                statics,
                level: risk.and_then(|r| r.level),
                colour: risk.and_then(|r| r.level).map(|l| l.colour()),
                score: risk.map_or(0.0, |r| r.score),
                open_incidents: active.iter().find(|(g, _)| *g == id).map_or(0, |(_, n)| *n),
                cameras: in_cell(&cameras),
                sensors: in_cell(&sensors),
            };
            GridFeature {
                rest,
                id,
                properties,
            }
        })
        .collect();
    Ok(Reply(FeatureCollection {
        kind: "FeatureCollection",
        features,
    }))
}

pub(super) async fn grid_history(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Reply<GridHistory>> {
    let known = console
        .grids
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|f| f["properties"]["id"] == id.as_str());
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let scope = caller.user.scope();
    let history = blocking(move || {
        c.outbox
            .with(|o| {
                let history = o.grid_risk_history(&lookup)?;
                if scope.department.is_none() && scope.owner.is_none() {
                    return Ok(history);
                }
                // Each incident the history lists, looked up once: who may see it and its
                // category (see `GridScope::narrowed` for what a narrower scope is shown).
                let mut seen: HashMap<String, Option<(String, String, String)>> = HashMap::new();
                for id in history.iter().flat_map(|h| &h.incidents) {
                    if !seen.contains_key(id) {
                        let found = o
                            .incident(id)?
                            .map(|i| (i.department, i.owner.as_str().to_string(), i.category));
                        seen.insert(id.clone(), found);
                    }
                }
                Ok(history
                    .into_iter()
                    .map(|h| narrow_grid(h, &scope, |id| seen.get(id).cloned().flatten()))
                    .collect())
            })
            .map_err(ApiError::internal)
    })
    .await?;
    if !known && history.is_empty() {
        return Err(ApiError::not_found("grid cell"));
    }
    Ok(Reply(GridHistory { grid: id, history }))
}

pub(super) async fn cameras(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Cameras>> {
    caller.require(Permission::SourcesRead)?;
    Ok(Reply(Cameras {
        cameras: console.camera_views(),
        cluster: console.cluster(),
    }))
}

pub(super) async fn camera_frame(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Permission::SourcesRead)?;
    let frame = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&skynet_core::DeviceId::new(id.as_str()))
        .and_then(|c| c.frame.as_ref().map(|(jpeg, _)| Arc::clone(jpeg)));
    match frame {
        Some(frame) => Ok(jpeg(frame.to_vec())),
        None => Err(ApiError::not_found("frame for this camera yet")),
    }
}

/// A camera's live video as fragmented MP4 (issue 25): `sources.read`, or an inspector whose
/// owner is the camera's; anyone else learns nothing of the camera (404).
pub(super) async fn camera_live(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let camera = skynet_core::DeviceId::new(id.as_str());
    let owner = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&camera)
        .map(|c| c.owner);
    let allowed = caller.require(Permission::SourcesRead).is_ok()
        || owner.is_some_and(|owner| {
            caller.require(Permission::IncidentsRead).is_ok()
                && caller.user.scope().owner.as_deref() == Some(owner.as_str())
        });
    if owner.is_none() || !allowed {
        return Err(ApiError::not_found("camera"));
    }
    let Some(live) = console.live_video() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "live view is off on this node ([api] live = { enabled = true })",
        ));
    };
    use crate::console::LiveRefusal;
    let full = |message: &str| {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_viewers", message);
        e.retry_after = Some(10);
        e
    };
    let rx = match live.open(&camera) {
        Ok(rx) => rx,
        Err(LiveRefusal::NotStreaming) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_streaming",
                "the camera sends no video to serve yet (or live view is off for it)",
            ));
        }
        Err(LiveRefusal::CameraFull) => {
            return Err(full(
                "this camera has its most viewers ([api] live.max_viewers_per_camera)",
            ));
        }
        Err(LiveRefusal::NodeFull) => {
            return Err(full(
                "this node has its most viewers ([api] live.max_viewers)",
            ));
        }
        Err(LiveRefusal::Masked) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "masked",
                "this camera has privacy masks: its live video is not served (no blurred transcode yet)",
            ));
        }
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "video/mp4")
        .header(axum::http::header::CACHE_CONTROL, "no-store")
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

pub(super) async fn set_thresholds(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<BTreeMap<String, f32>>, JsonRejection>,
) -> ApiResult<Reply<Thresholds>> {
    caller.require(Permission::ThresholdsWrite)?;
    let changes = body(request)?;
    if changes.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one label and its score, like {\"person\": 0.45}",
        ));
    }
    let thresholds = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&skynet_core::DeviceId::new(id.as_str()))
        .map(|c| Arc::clone(&c.thresholds))
        .ok_or_else(|| ApiError::not_found("camera"))?;
    let rounded = |scores: BTreeMap<String, f32>| -> BTreeMap<String, f64> {
        scores
            .into_iter()
            .map(|(label, score)| (label, round4(score)))
            .collect()
    };
    let c = Arc::clone(&console);
    let target = id.clone();
    let after = blocking(move || {
        // Applied, saved and audited as one step, one change at a time, so what runs, what
        // a restart applies and what the audit log says never differ.
        let _one_at_a_time = c
            .threshold_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = thresholds
            .set(&changes)
            .map_err(|e| ApiError::bad_request(format!("camera {target}: {e}")))?;
        // Saved and audited in one transaction: both, or neither.
        let saved = c.store.audited(|| {
            c.store.save_thresholds(&target, &changes)?;
            let entry = caller.entry(
                "camera.thresholds",
                &target,
                Some(audit_json(&rounded(before.clone()))),
                Some(audit_json(&rounded(thresholds.snapshot()))),
            );
            Ok::<_, crate::console::store::StoreError>(((), Some(entry)))
        });
        if let Err(e) = saved {
            // Not kept, not audited: not applied either.
            let _ = thresholds.set(&before);
            return Err(ApiError::internal(e));
        }
        Ok(rounded(thresholds.snapshot()))
    })
    .await?;
    tracing::info!(camera = %id, thresholds = ?after, "detection thresholds changed from the console");
    Ok(Reply(Thresholds { thresholds: after }))
}

/// What a threshold change would have done to the last recorded day's incidents, without
/// applying it: the same body and checks as the change, the same permission.
pub(super) async fn threshold_what_if(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<BTreeMap<String, f32>>, JsonRejection>,
) -> ApiResult<Reply<WhatIfReport>> {
    caller.require(Permission::ThresholdsWrite)?;
    let changes = body(request)?;
    if changes.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one label and its score, like {\"person\": 0.45}",
        ));
    }
    let camera = skynet_core::DeviceId::new(id.as_str());
    let thresholds = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&camera)
        .map(|c| Arc::clone(&c.thresholds))
        .ok_or_else(|| ApiError::not_found("camera"))?;
    // Checked as the change itself would be, on a copy: nothing is applied.
    let current = thresholds.snapshot();
    let trial = LiveThresholds::new(thresholds.floor(), current.clone());
    trial
        .set(&changes)
        .map_err(|e| ApiError::bad_request(format!("camera {id}: {e}")))?;
    let proposed = trial.snapshot();
    let what_if = console.what_if().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_recording",
            "nothing to replay: this node does not record observations (set `[risk] record` in the config)",
        )
    })?;
    let c = Arc::clone(&console);
    let report = blocking(move || {
        let _one_at_a_time = match c.what_if_running.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let mut busy = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    "another what-if is running; try again when it is done",
                );
                busy.retry_after = Some(5);
                return Err(busy);
            }
        };
        what_if
            .thresholds(&camera, &current, &proposed)
            .map_err(|e| match e {
                WhatIfError::NoRecording(message) => {
                    ApiError::new(StatusCode::CONFLICT, "no_recording", message)
                }
                WhatIfError::Failed(message) => ApiError::internal(message),
            })
    })
    .await?;
    tracing::info!(camera = %id, added = report.added, dropped = report.dropped, changed = report.changed, "threshold what-if");
    Ok(Reply(report))
}

pub(super) async fn sensors(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Sensors>> {
    caller.require(Permission::SourcesRead)?;
    Ok(Reply(Sensors {
        sensors: console.sensor_views(),
    }))
}

/// The video platforms (`[[platforms]]`, GB/T 28181) with their state and channels.
pub(super) async fn platforms(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Platforms>> {
    caller.require(Permission::SourcesRead)?;
    Ok(Reply(Platforms {
        platforms: console.platform_views(),
    }))
}

/// The earliest deadline still ahead of the incident: dispatch until dispatched, then
/// resolution.
fn next_deadline(incident: &Incident) -> Option<DateTime<Utc>> {
    let before_dispatch = matches!(
        incident.state,
        IncidentState::Open | IncidentState::Acknowledged
    );
    let dispatch = incident.deadlines.dispatch_by.filter(|_| before_dispatch);
    dispatch.or(incident.deadlines.resolve_by)
}

pub(super) async fn tickets(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Tickets>> {
    caller.require(Permission::TicketsRead)?;
    let scope = caller.user.scope();
    let query = IncidentQuery {
        departments: scope.department.into_iter().collect(),
        owners: scope.owner.into_iter().collect(),
        active_only: true,
        // The most urgent first, also when there are more than a page of them.
        by_deadline: true,
        limit: 1000,
        ..IncidentQuery::default()
    };
    let c = Arc::clone(&console);
    let page = blocking(move || {
        c.outbox
            .with(|o| o.query_incidents(&query))
            .map_err(ApiError::internal)
    })
    .await?;
    let mut incidents: Vec<&Incident> = page
        .incidents
        .iter()
        .filter(|i| i.status != skynet_core::IncidentStatus::Closed)
        .collect();
    incidents.sort_by_key(|i| next_deadline(i).unwrap_or(DateTime::<Utc>::MAX_UTC));
    let deadlines: Vec<_> = incidents.iter().map(|i| next_deadline(i)).collect();
    let incidents: Vec<Incident> = incidents.into_iter().cloned().collect();
    let c = Arc::clone(&console);
    let views = blocking(move || Ok(c.incident_views(&incidents))).await?;
    let tickets = views
        .into_iter()
        .zip(deadlines)
        .map(|(incident, next_deadline)| Ticket {
            incident,
            next_deadline,
        })
        .collect();
    Ok(Reply(Tickets { tickets }))
}
