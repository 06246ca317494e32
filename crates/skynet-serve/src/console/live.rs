//! The console's hub: what the pipeline feeds in, what the API reads out.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use skynet_core::{
    CaseStatus, DeviceId, GridRisk, Health, Incident, IncidentChange, IncidentState,
    LiveThresholds, OwnerKind, RiskEvent,
};
use skynet_emit::Outbox;
use tokio::sync::broadcast;

use super::auth::LoginLimiter;
use super::settings::ApiConfig;
use super::store::{Ack, ConsoleStore, StoreError};
use super::views::{
    AckView, CameraView, IncidentView, Reading, SensorView, SourceMessage, json_text,
};

/// Hands a person's status change to the risk stage, which applies it exactly as a case
/// system's status event. `Err` when it cannot be taken now (the stage is gone or full).
pub type SubmitStatus = Box<dyn Fn(CaseStatus) -> Result<(), String> + Send + Sync>;

/// A camera's decoded count, when it was read, and the frame rate from the reading before.
type RateSample = (u64, std::time::Instant, Option<f64>);

/// One message for the browsers: already serialised once for every client.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    /// The SSE event name: `incident`, `grid`, `source` or `detections`.
    pub kind: &'static str,
    /// For incidents: who may see it (for `detections`: the camera's owner).
    pub department: Option<String>,
    pub owner: Option<String>,
    /// For incidents: its id and revision (so a request can wait for its own change).
    pub incident: Option<(String, u32)>,
    /// For incidents: the lifecycle state a status change moved it to (`None` for any
    /// other revision).
    pub applied_status: Option<IncidentState>,
    pub data: Arc<str>,
    /// For cell changes: the change and who may see each of its incidents, so a stream of a
    /// narrower scope sends it narrowed (see [`GridScope::narrowed`]).
    pub grid: Option<Arc<GridScope>>,
}

/// A cell change with the scope of each incident it lists.
#[derive(Debug, Clone)]
pub struct GridScope {
    pub change: GridRisk,
    /// Per incident id: its department, owner and category; an id not found (no longer in
    /// the outbox) is in nobody's narrowed scope.
    pub incidents: HashMap<String, (String, String, String)>,
}

impl GridScope {
    /// The change as a caller of `scope` sees it. The cell's level and fused score are the
    /// city's (every map shows them, as `GET /grids` does); the incident detail is the
    /// caller's: only the incidents in scope, and only the category scores of their
    /// categories, so neither an out-of-scope id nor what kind of incident it is shows.
    pub fn narrowed(&self, scope: &super::Scope) -> GridRisk {
        narrow_grid(self.change.clone(), scope, |id| {
            self.incidents.get(id).cloned()
        })
    }
}

/// `change` narrowed to `scope` (see [`GridScope::narrowed`]); `lookup` gives an incident's
/// department, owner and category.
pub(crate) fn narrow_grid(
    mut change: GridRisk,
    scope: &super::Scope,
    lookup: impl Fn(&str) -> Option<(String, String, String)>,
) -> GridRisk {
    if scope.department.is_none() && scope.owner.is_none() {
        return change;
    }
    let mut categories = std::collections::BTreeSet::new();
    change.incidents.retain(|id| match lookup(id) {
        Some((department, owner, category)) if scope.allows(&department, &owner) => {
            categories.insert(category);
            true
        }
        _ => false,
    });
    change
        .categories
        .retain(|category, _| categories.contains(category));
    change
}

/// SSE `detections`: a camera's boxes at one analysed frame, as fractions of the frame.
#[derive(serde::Serialize)]
struct DetectionsMessage<'a> {
    camera: &'a str,
    at: DateTime<Utc>,
    width: u32,
    height: u32,
    boxes: Vec<LiveBox<'a>>,
}

/// One box of [`DetectionsMessage`]: corners as fractions (0..1) of the frame.
#[derive(serde::Serialize)]
struct LiveBox<'a> {
    label: &'a str,
    score: f32,
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    track: Option<u64>,
}

/// A camera as the console shows it.
pub struct CameraRegistration {
    pub id: DeviceId,
    pub grid: String,
    pub owner: OwnerKind,
    pub thresholds: Arc<LiveThresholds>,
}

/// A sensor as the console shows it.
pub struct SensorRegistration {
    pub id: String,
    pub grid: String,
    pub owner: OwnerKind,
    pub quantity: String,
    pub unit: Option<String>,
}

/// A platform's live figures (`[[platforms]]`), read when the console is asked.
#[derive(Debug, Clone, Default)]
pub struct PlatformFigures {
    /// The lower platforms registered and online now.
    pub lower_online: Vec<String>,
    /// Camera channels in the lower platforms' latest catalogs.
    pub channels_listed: usize,
    /// Channels placed while running by their catalog position (analysed, as those the
    /// config places).
    pub channels_placed: usize,
}

/// A video platform (`[[platforms]]`, GB/T 28181) as the console shows it. Its state is
/// its health entry `platform <id>` (kind `platform`).
pub struct PlatformRegistration {
    pub id: String,
    /// `gb28181`.
    pub kind: String,
    pub listen: String,
    pub owner: OwnerKind,
    /// The configured channels that are analysed (placed by `grid` or `location`).
    pub channels_analysed: usize,
    /// `channels = "all"`.
    pub all_channels: bool,
    /// The figures now.
    pub live: Box<dyn Fn() -> PlatformFigures + Send + Sync>,
}

pub(crate) struct CameraEntry {
    pub grid: String,
    pub owner: OwnerKind,
    pub thresholds: Arc<LiveThresholds>,
    pub frame: Option<(Arc<[u8]>, DateTime<Utc>)>,
}

pub(crate) struct SensorEntry {
    pub grid: String,
    pub owner: OwnerKind,
    pub quantity: String,
    pub unit: Option<String>,
    pub last: Option<(f64, String, DateTime<Utc>)>,
    pub offline_since: Option<DateTime<Utc>>,
}

/// Outbox connections for the API's reads (one per concurrent request, kept for reuse).
pub(crate) struct OutboxPool {
    path: PathBuf,
    idle: Mutex<Vec<Outbox>>,
}

impl OutboxPool {
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Outbox) -> Result<R, skynet_emit::EmitError>,
    ) -> Result<R, skynet_emit::EmitError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let outbox = match pooled {
            Some(outbox) => outbox,
            None => Outbox::open(&self.path)?,
        };
        let result = f(&outbox);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < 8 {
            idle.push(outbox);
        }
        result
    }
}

/// The hub. Built by the binary, fed by the pipeline's stages, read by the API.
pub struct Console {
    pub(crate) config: ApiConfig,
    pub(crate) store: Arc<ConsoleStore>,
    /// Password checks at once (argon2 takes 19 MiB and tens of milliseconds each): a flood
    /// of logins waits here instead of exhausting memory.
    pub(crate) password_checks: tokio::sync::Semaphore,
    /// Threshold changes one at a time: applied, saved and audited in the same order.
    pub(crate) threshold_writes: Mutex<()>,
    pub(crate) outbox: OutboxPool,
    pub(crate) evidence_dir: Option<PathBuf>,
    pub(crate) health: Health,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) limiter: LoginLimiter,
    /// The grid cells as GeoJSON features (geometry and static properties).
    pub(crate) grids: RwLock<Vec<Value>>,
    pub(crate) cameras: RwLock<BTreeMap<DeviceId, CameraEntry>>,
    pub(crate) sensors: RwLock<BTreeMap<String, SensorEntry>>,
    pub(crate) platforms: RwLock<BTreeMap<String, PlatformRegistration>>,
    pub(crate) acks: Mutex<HashMap<String, Ack>>,
    submit: RwLock<Option<SubmitStatus>>,
    pub(crate) events: broadcast::Sender<LiveMessage>,
    /// Live-stream slots (`[api] max_streams_per_user`, `max_streams`).
    pub(crate) streams: super::streams::StreamSlots,
    /// Per camera: the decoded count and when it was read, and the frame rate from the
    /// reading before.
    rates: Mutex<HashMap<String, RateSample>>,
    /// The cluster's health, in a console of a cluster (`None` on a single node).
    pub(crate) cluster: RwLock<Option<super::city::ClusterHealth>>,
    /// Threshold what-ifs on the recorded observations (`None`: nothing recorded).
    what_if: RwLock<Option<Arc<dyn super::what_if::WhatIf>>>,
    /// What-ifs one at a time: each replays a day twice.
    pub(crate) what_if_running: Mutex<()>,
    /// Live view of the cameras' video (`None`: off).
    live_video: RwLock<Option<Arc<dyn super::live_view::LiveVideo>>>,
    /// The patrols and their recent rounds (issue 26).
    pub(crate) patrols: super::patrol::PatrolBoard,
}

/// How many live messages a slow browser may fall behind before it is told to reload.
const LIVE_BACKLOG: usize = 4096;

impl Console {
    /// `state_db`: the outbox's SQLite file, which also holds the console's tables.
    pub fn open(
        config: ApiConfig,
        state_db: &std::path::Path,
        evidence_dir: Option<PathBuf>,
        health: Health,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StoreError> {
        let store = ConsoleStore::open(state_db)?;
        let acks = store.acks()?.into_iter().collect();
        let limiter = LoginLimiter::new(store.secret_key("device_cookie")?);
        let streams =
            super::streams::StreamSlots::new(config.max_streams_per_user, config.max_streams);
        Ok(Self {
            config,
            store: Arc::new(store),
            password_checks: tokio::sync::Semaphore::new(2),
            threshold_writes: Mutex::new(()),
            outbox: OutboxPool {
                path: state_db.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            },
            evidence_dir,
            health,
            metrics,
            limiter,
            grids: RwLock::new(Vec::new()),
            cameras: RwLock::new(BTreeMap::new()),
            sensors: RwLock::new(BTreeMap::new()),
            platforms: RwLock::new(BTreeMap::new()),
            acks: Mutex::new(acks),
            submit: RwLock::new(None),
            events: broadcast::channel(LIVE_BACKLOG).0,
            streams,
            rates: Mutex::new(HashMap::new()),
            cluster: RwLock::new(None),
            what_if: RwLock::new(None),
            what_if_running: Mutex::new(()),
            live_video: RwLock::new(None),
            patrols: super::patrol::PatrolBoard::default(),
        })
    }

    /// Gives the console the pipeline's threshold what-if (when observations are recorded).
    pub fn set_what_if(&self, what_if: Arc<dyn super::what_if::WhatIf>) {
        *self.what_if.write().unwrap_or_else(PoisonError::into_inner) = Some(what_if);
    }

    /// Gives the console the pipeline's live view (`[api] live.enabled`).
    pub fn set_live_video(&self, live: Arc<dyn super::live_view::LiveVideo>) {
        *self
            .live_video
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(live);
    }

    pub(crate) fn live_video(&self) -> Option<Arc<dyn super::live_view::LiveVideo>> {
        self.live_video
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn what_if(&self) -> Option<Arc<dyn super::what_if::WhatIf>> {
        self.what_if
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    pub fn store(&self) -> &ConsoleStore {
        &self.store
    }

    /// Runs `f` while no console threshold change can be applied, saved or audited (a
    /// config reload reads the saved changes and applies the file's thresholds with them
    /// over, as one step: a change saved meanwhile is never lost from the running filter).
    pub fn with_threshold_writes<R>(&self, f: impl FnOnce() -> R) -> R {
        let _one_at_a_time = self
            .threshold_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f()
    }

    /// The grid cells, as GeoJSON features whose properties carry at least `id`.
    pub fn set_grids(&self, features: Vec<Value>) {
        *self.grids.write().unwrap_or_else(PoisonError::into_inner) = features;
    }

    /// Adds a camera; a threshold change saved earlier is applied to it again.
    pub fn register_camera(&self, camera: CameraRegistration) {
        if let Ok(saved) = self.store.saved_thresholds() {
            for (id, scores) in saved {
                if id == camera.id.as_str()
                    && let Err(e) = camera.thresholds.set(&scores)
                {
                    tracing::warn!(camera = %camera.id, error = %e, "a saved threshold change no longer applies; kept the configured thresholds");
                }
            }
        }
        self.cameras
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                camera.id,
                CameraEntry {
                    grid: camera.grid,
                    owner: camera.owner,
                    thresholds: camera.thresholds,
                    frame: None,
                },
            );
    }

    pub fn register_sensor(&self, sensor: SensorRegistration) {
        self.sensors
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                sensor.id,
                SensorEntry {
                    grid: sensor.grid,
                    owner: sensor.owner,
                    quantity: sensor.quantity,
                    unit: sensor.unit,
                    last: None,
                    offline_since: None,
                },
            );
    }

    /// Adds a video platform (`[[platforms]]`) to the Sources view.
    pub fn register_platform(&self, platform: PlatformRegistration) {
        self.platforms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(platform.id.clone(), platform);
    }

    /// Every platform with its health and figures.
    pub(crate) fn platform_views(&self) -> Vec<super::views::PlatformView> {
        let platforms = self
            .platforms
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        platforms
            .values()
            .map(|p| {
                let status = self.health.state(&format!("platform {}", p.id), "platform");
                let figures = (p.live)();
                super::views::PlatformView {
                    id: p.id.clone(),
                    kind: p.kind.clone(),
                    listen: p.listen.clone(),
                    owner: p.owner,
                    state: status
                        .as_ref()
                        .map_or(skynet_core::ComponentState::Starting, |s| s.state),
                    reason: status.and_then(|s| s.reason),
                    lower_platforms_online: figures.lower_online,
                    channels_listed: figures.channels_listed,
                    channels_analysed: p.channels_analysed + figures.channels_placed,
                    all_channels: p.all_channels,
                }
            })
            .collect()
    }

    /// Connects status changes made in the console to the risk stage.
    pub fn connect_status(&self, submit: SubmitStatus) {
        *self.submit.write().unwrap_or_else(PoisonError::into_inner) = Some(submit);
    }

    /// The pipeline has stopped: status changes can no longer be applied.
    pub fn disconnect_status(&self) {
        *self.submit.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub(crate) fn submit_status(&self, status: CaseStatus) -> Result<(), String> {
        match &*self.submit.read().unwrap_or_else(PoisonError::into_inner) {
            Some(submit) => submit(status),
            None => Err("no pipeline is running to apply it".into()),
        }
    }

    /// A receiver of everything published to the browsers (benchmarks, tests).
    pub fn subscribe_live(&self) -> broadcast::Receiver<LiveMessage> {
        self.events.subscribe()
    }

    /// A camera's latest annotated frame (JPEG).
    pub fn set_frame(&self, camera: &DeviceId, jpeg: Vec<u8>, at: DateTime<Utc>) {
        if let Some(entry) = self
            .cameras
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(camera)
        {
            entry.frame = Some((jpeg.into(), at));
        }
    }

    /// A camera's boxes at one analysed frame, for the boxes drawn over its live video
    /// (issue 25): SSE event `detections`, seen by `sources.read` or an inspector whose owner
    /// is the camera's (as its live video). `size` is the camera's resolution, which the
    /// boxes are in; they are sent as fractions of it. Never waits: the broadcast is bounded
    /// and lossy, and nothing is built when no browser is connected.
    pub fn publish_detections(
        &self,
        camera: &DeviceId,
        at: DateTime<Utc>,
        size: (u32, u32),
        detections: &[skynet_core::Detection],
    ) {
        if self.events.receiver_count() == 0 || size.0 == 0 || size.1 == 0 {
            return;
        }
        let Some(owner) = self
            .cameras
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(camera)
            .map(|c| c.owner)
        else {
            return;
        };
        let (w, h) = (size.0 as f32, size.1 as f32);
        let fraction = |v: f32, of: f32| (v / of).clamp(0.0, 1.0);
        let message = DetectionsMessage {
            camera: camera.as_str(),
            at,
            width: size.0,
            height: size.1,
            boxes: detections
                .iter()
                .map(|d| LiveBox {
                    label: &d.label,
                    score: d.score,
                    x1: fraction(d.bbox.x1, w),
                    y1: fraction(d.bbox.y1, h),
                    x2: fraction(d.bbox.x2, w),
                    y2: fraction(d.bbox.y2, h),
                    track: d.track,
                })
                .collect(),
        };
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(LiveMessage {
            kind: "detections",
            department: None,
            owner: Some(owner.as_str().to_string()),
            incident: None,
            applied_status: None,
            data: json_text(&message).into(),
            grid: None,
        });
    }

    /// A sensor's latest valid reading.
    pub fn sensor_reading(&self, sensor: &str, value: f64, unit: &str, at: DateTime<Utc>) {
        let mut sensors = self.sensors.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = sensors.get_mut(sensor) {
            let newer = entry.last.as_ref().is_none_or(|(_, _, last)| at >= *last);
            if newer {
                entry.last = Some((value, unit.to_string(), at));
            }
            if entry.offline_since.take().is_some() {
                drop(sensors);
                self.publish_source("sensor", sensor);
            }
        }
    }

    /// A sensor declared offline (`Some(since)`) or working again (`None`).
    pub fn sensor_offline(&self, sensor: &str, since: Option<DateTime<Utc>>) {
        let changed = {
            let mut sensors = self.sensors.write().unwrap_or_else(PoisonError::into_inner);
            sensors
                .get_mut(sensor)
                .is_some_and(|entry| std::mem::replace(&mut entry.offline_since, since) != since)
        };
        if changed {
            self.publish_source("sensor", sensor);
        }
    }

    /// Pushes committed revisions and cell changes to the browsers. Called by the commit
    /// stage once they are stored.
    pub fn publish(&self, events: &[RiskEvent]) {
        for event in events {
            if let RiskEvent::Incident(incident) = event
                && incident.change == IncidentChange::Reopened
            {
                self.forget_ack(&incident.id);
            }
        }
        if self.events.receiver_count() == 0 {
            return;
        }
        for event in events {
            let message = match event {
                RiskEvent::Incident(incident) => self.incident_message(incident),
                RiskEvent::GridRisk(change) => {
                    grid_message(change, self.grid_scope(change, events))
                }
                // The patrol page reads rounds from `record_patrol_round`.
                RiskEvent::PatrolRound(_) => continue,
            };
            // No receiver is not an error: nobody is watching.
            let _ = self.events.send(message);
        }
    }

    /// Who may see each incident a cell change lists: from the revisions committed with it,
    /// else from the outbox (a cell lists the few incidents open in it).
    fn grid_scope(&self, change: &GridRisk, batch: &[RiskEvent]) -> GridScope {
        let mut incidents = HashMap::new();
        for id in &change.incidents {
            let scope_of = |i: &Incident| {
                (
                    i.department.clone(),
                    i.owner.as_str().to_string(),
                    i.category.clone(),
                )
            };
            let known = batch
                .iter()
                .filter_map(RiskEvent::as_incident)
                .find(|i| i.id == *id)
                .map(scope_of);
            let found = match known {
                Some(found) => Some(found),
                None => match self.outbox.with(|o| o.incident(id)) {
                    Ok(incident) => incident.as_ref().map(scope_of),
                    Err(e) => {
                        tracing::warn!(incident = %id, error = %e, "a cell's incident could not be read; left out of scoped streams");
                        None
                    }
                },
            };
            if let Some(found) = found {
                incidents.insert(id.clone(), found);
            }
        }
        GridScope {
            change: change.clone(),
            incidents,
        }
    }

    /// An incident open again needs acknowledging again: its alarm must sound.
    fn forget_ack(&self, incident: &str) {
        let now = Utc::now();
        let forgotten = self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(incident)
            .is_some();
        if forgotten {
            // Off the commit stage's thread: the database may be busy for a moment.
            let (store, id) = (Arc::clone(&self.store), incident.to_string());
            let _ = std::thread::Builder::new()
                .name("console-ack".into())
                .spawn(move || {
                    if let Err(e) = store.clear_ack_before(&id, now) {
                        tracing::warn!(incident = %id, error = %e, "the acknowledgement of a reopened incident could not be cleared");
                    }
                });
        }
    }

    pub(crate) fn incident_message(&self, incident: &Incident) -> LiveMessage {
        LiveMessage {
            kind: "incident",
            department: Some(incident.department.clone()),
            owner: Some(incident.owner.as_str().to_string()),
            incident: Some((incident.id.clone(), incident.revision)),
            applied_status: (incident.change == IncidentChange::Feedback).then_some(incident.state),
            data: json_text(&self.incident_view(incident)).into(),
            grid: None,
        }
    }

    pub(crate) fn publish_source(&self, kind: &'static str, id: &str) {
        let data = match kind {
            "camera" => self
                .camera_views()
                .into_iter()
                .find(|c| c.id.as_str() == id)
                .map(|view| json_text(&SourceMessage { view, kind })),
            _ => self
                .sensor_views()
                .into_iter()
                .find(|s| s.id == id)
                .map(|view| json_text(&SourceMessage { view, kind })),
        };
        if let Some(data) = data {
            let _ = self.events.send(LiveMessage {
                kind: "source",
                department: None,
                owner: None,
                incident: None,
                applied_status: None,
                data: data.into(),
                grid: None,
            });
        }
    }

    /// An incident as the API shows it: the revision, with who acknowledged it and where
    /// its evidence images are served.
    pub(crate) fn incident_view(&self, incident: &Incident) -> IncidentView {
        self.incident_view_in(incident, self.district_of(&incident.id))
    }

    /// [`Self::incident_view`] with the incident's district already read.
    pub(crate) fn incident_view_in(
        &self,
        incident: &Incident,
        district: Option<String>,
    ) -> IncidentView {
        let ack = self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&incident.id)
            .cloned();
        let acknowledged = match ack {
            Some(ack) => Some(AckView {
                by: Some(ack.by),
                at: Some(ack.at),
            }),
            // The case system took it over: nobody need be woken for it any more.
            None if incident.state != IncidentState::Open => Some(AckView {
                by: incident.assignee.clone(),
                at: None,
            }),
            None => None,
        };
        let evidence_urls = incident
            .evidence
            .iter()
            .filter_map(|e| e.url.rsplit('/').next())
            .map(|file| format!("/api/v1/evidence/{}/{file}", incident.id))
            .collect();
        IncidentView {
            incident: incident.clone(),
            acknowledged,
            evidence_urls,
            district,
        }
    }

    pub(crate) fn remember_ack(&self, incident: &str, ack: Ack) {
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(incident.to_string(), ack);
    }

    /// Every camera with its health, counters and thresholds.
    pub(crate) fn camera_views(&self) -> Vec<CameraView> {
        let counters = self
            .metrics
            .as_ref()
            .map(|m| CameraCounters::parse(&m.render()))
            .unwrap_or_default();
        let live = self.live_video().is_some();
        let cameras = self.cameras.read().unwrap_or_else(PoisonError::into_inner);
        cameras
            .iter()
            .map(|(id, entry)| {
                let status = self.health.state(id.as_str(), "source");
                let state = status.as_ref().map_or("starting".to_string(), camera_state);
                let count = |name: &str| counters.get(id.as_str(), name);
                let fps = self.frame_rate(id.as_str(), count("skynet_frames_decoded_total"));
                CameraView {
                    fps,
                    id: id.clone(),
                    grid: entry.grid.clone(),
                    owner: entry.owner,
                    state,
                    reason: status.as_ref().and_then(|s| s.reason.clone()),
                    retries: status.as_ref().map_or(0, |s| s.retries),
                    since: status.as_ref().map(|s| s.since),
                    last_frame_at: status.as_ref().and_then(|s| s.last_frame_at),
                    frames_decoded: count("skynet_frames_decoded_total"),
                    frames_dropped: count("skynet_frames_dropped_total"),
                    frames_skipped: count("skynet_frames_skipped_total"),
                    frames_analysed: count("skynet_frames_analysed_total"),
                    frame_url: entry
                        .frame
                        .as_ref()
                        .map(|_| format!("/api/v1/cameras/{id}/frame")),
                    frame_at: entry.frame.as_ref().map(|(_, at)| *at),
                    live,
                    thresholds: entry
                        .thresholds
                        .snapshot()
                        .into_iter()
                        .map(|(label, score)| (label, round4(score)))
                        .collect(),
                    threshold_floor: round4(entry.thresholds.floor()),
                    node: self
                        .cluster
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_some()
                        .then(|| self.camera_node(id.as_str())),
                }
            })
            .collect()
    }

    /// Decoded frames per second since the reading before (taken at least 2 s apart, so
    /// a page refreshed often still sees a steady figure).
    fn frame_rate(&self, camera: &str, decoded: u64) -> Option<f64> {
        let now = std::time::Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        match rates.get_mut(camera) {
            None => {
                rates.insert(camera.to_string(), (decoded, now, None));
                None
            }
            Some((count, at, rate)) => {
                let dt = now.duration_since(*at).as_secs_f64();
                if dt >= 2.0 {
                    *rate =
                        Some(((decoded.saturating_sub(*count)) as f64 / dt * 10.0).round() / 10.0);
                    *count = decoded;
                    *at = now;
                }
                *rate
            }
        }
    }

    pub(crate) fn sensor_views(&self) -> Vec<SensorView> {
        let sensors = self.sensors.read().unwrap_or_else(PoisonError::into_inner);
        sensors
            .iter()
            .map(|(id, s)| {
                let state = match (&s.offline_since, &s.last) {
                    (Some(_), _) => "offline",
                    (None, Some(_)) => "ok",
                    (None, None) => "waiting",
                };
                SensorView {
                    id: id.clone(),
                    grid: s.grid.clone(),
                    owner: s.owner,
                    quantity: s.quantity.clone(),
                    unit: s.unit.clone(),
                    state,
                    offline_since: s.offline_since,
                    last_reading: s.last.as_ref().map(|(value, unit, at)| Reading {
                        value: *value,
                        unit: unit.clone(),
                        at: *at,
                    }),
                }
            })
            .collect()
    }

    /// Each camera's state and reason, cheaply (no counters): what the health watch compares.
    fn camera_states(&self) -> Vec<(String, (String, Option<String>))> {
        let cameras = self.cameras.read().unwrap_or_else(PoisonError::into_inner);
        cameras
            .keys()
            .map(|id| {
                let status = self.health.state(id.as_str(), "source");
                let state = status.as_ref().map_or("starting".to_string(), camera_state);
                (id.to_string(), (state, status.and_then(|s| s.reason)))
            })
            .collect()
    }

    /// Logs the audit chain head (newest row id and hash) at INFO as `audit chain head`, so
    /// the log shipper keeps anchors outside the database for `skynet audit verify --head`:
    /// whoever can write the database can recompute the chain, not the shipped log. One
    /// lookup by primary key. `when` says why (start, moved, shutdown). The id logged.
    pub fn log_audit_head(&self, when: &str) -> Option<i64> {
        match self.store.audit_head() {
            Ok(Some((id, hash))) => {
                tracing::info!(row = id, hash = %hash, when, "audit chain head");
                Some(id)
            }
            Ok(None) => {
                tracing::info!(
                    row = 0,
                    hash = super::store::AUDIT_GENESIS,
                    when,
                    "audit chain head"
                );
                Some(0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit chain head: cannot read it");
                None
            }
        }
    }

    /// Logs the audit chain head at start and then every [`AUDIT_HEAD_EVERY`] when it has
    /// moved (see [`Self::log_audit_head`]); the pipeline logs it once more at shutdown. Runs
    /// on the I/O runtime until the console is dropped; the query runs off its workers.
    pub fn spawn_audit_head_log(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let console = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut logged: Option<i64> = None;
            let mut tick = tokio::time::interval(AUDIT_HEAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(console) = console.upgrade() else {
                    return;
                };
                let before = logged;
                let head = tokio::task::spawn_blocking(move || {
                    let head = console.store.audit_head().ok().flatten().map(|(id, _)| id);
                    // Logged at start, and after that only when rows were added.
                    if before.is_none() || (head.is_some() && head != before) {
                        console.log_audit_head(if before.is_none() { "start" } else { "moved" })
                    } else {
                        before
                    }
                })
                .await;
                if let Ok(head) = head {
                    logged = head.or(logged);
                }
            }
        });
    }

    /// Watches camera health and tells browsers when a camera's state changes. Runs on the
    /// I/O runtime until the console is dropped.
    pub fn spawn_health_watch(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let console = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut last: HashMap<String, (String, Option<String>)> = HashMap::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(console) = console.upgrade() else {
                    return;
                };
                if console.events.receiver_count() == 0 {
                    continue;
                }
                for (id, now) in console.camera_states() {
                    if last.get(&id) != Some(&now) {
                        last.insert(id.clone(), now);
                        console.publish_source("camera", &id);
                    }
                }
            }
        });
    }
}

/// How often the console logs the audit chain head when it has moved.
pub const AUDIT_HEAD_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A score as people write it (0.3, not 0.30000001192092896, the f32's nearest f64).
pub(crate) fn round4(score: f32) -> f64 {
    (f64::from(score) * 10_000.0).round() / 10_000.0
}

/// A camera's state in the console's words: running, stalled, retrying, offline, starting
/// or stopped (a file read to its end).
fn camera_state(status: &skynet_core::ComponentStatus) -> String {
    use skynet_core::ComponentState::*;
    match (status.state, status.detail.as_deref()) {
        (Down, _) => "offline".into(),
        (_, Some(detail)) => detail.to_string(),
        (Up, None) => "running".into(),
        (Starting, None) => "starting".into(),
        (Retrying, None) => "retrying".into(),
        (Finished, None) => "stopped".into(),
    }
}

fn grid_message(change: &GridRisk, scope: GridScope) -> LiveMessage {
    LiveMessage {
        kind: "grid",
        department: None,
        owner: None,
        incident: None,
        applied_status: None,
        data: serde_json::to_string(change)
            .unwrap_or_else(|_| "{}".into())
            .into(),
        grid: Some(Arc::new(scope)),
    }
}

/// Per-camera counters read off the metrics registry: the one place they are counted.
#[derive(Debug, Default)]
struct CameraCounters {
    values: HashMap<(String, String), f64>,
}

impl CameraCounters {
    const NAMES: [&'static str; 4] = [
        "skynet_frames_decoded_total",
        "skynet_frames_dropped_total",
        "skynet_frames_skipped_total",
        "skynet_frames_analysed_total",
    ];

    /// Sums each counter over its other labels (reasons) per camera.
    fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines() {
            let Some(name) = Self::NAMES
                .iter()
                .find(|n| line.starts_with(**n) && line.as_bytes().get(n.len()) == Some(&b'{'))
            else {
                continue;
            };
            let Some(camera) = line
                .split_once("camera=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(camera, _)| camera)
            else {
                continue;
            };
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            *values
                .entry((camera.to_string(), (*name).to_string()))
                .or_insert(0.0) += value;
        }
        Self { values }
    }

    fn get(&self, camera: &str, name: &str) -> u64 {
        self.values
            .get(&(camera.to_string(), name.to_string()))
            .map_or(0, |v| *v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_change_narrowed_keeps_the_citys_score_and_only_the_callers_incidents() {
        let change: GridRisk = serde_json::from_value(serde_json::json!({
            "id": "g-1", "grid": "G-1", "revision": 1, "level": "II", "level_colour": "orange",
            "previous_level": null, "score": 0.7, "at": "2026-11-27T10:00:00Z",
            "categories": {"gas_leak": 0.5, "brawl": 0.7, "smoke": 0.2},
            "incidents": ["mine", "theirs", "gone"]
        }))
        .unwrap();
        let lookup = |id: &str| match id {
            "mine" => Some(("emergency".into(), "police".into(), "gas_leak".into())),
            "theirs" => Some(("police-dept".into(), "police".into(), "brawl".into())),
            _ => None,
        };
        let inspector = super::super::Scope {
            department: Some("emergency".into()),
            owner: None,
        };
        let narrowed = narrow_grid(change.clone(), &inspector, lookup);
        assert_eq!(narrowed.incidents, vec!["mine".to_string()]);
        assert_eq!(narrowed.categories.keys().collect::<Vec<_>>(), ["gas_leak"]);
        assert_eq!(
            (narrowed.level, narrowed.score),
            (change.level, change.score)
        );
        // Everyone's scope: the change as it is.
        let all = narrow_grid(change.clone(), &super::super::Scope::default(), lookup);
        assert_eq!(all, change);
        // An owner scope narrows as well.
        let owner = super::super::Scope {
            department: None,
            owner: Some("city_management".into()),
        };
        assert!(narrow_grid(change, &owner, lookup).incidents.is_empty());
    }

    #[test]
    fn camera_counters_sum_over_reasons() {
        let text = "# HELP x\n\
            skynet_frames_dropped_total{camera=\"cam-1\",reason=\"overload\"} 3\n\
            skynet_frames_dropped_total{camera=\"cam-1\",reason=\"invalid\"} 2\n\
            skynet_frames_decoded_total{camera=\"cam-1\"} 100\n\
            skynet_frames_decoded_total_extra{camera=\"cam-1\"} 7\n";
        let counters = CameraCounters::parse(text);
        assert_eq!(counters.get("cam-1", "skynet_frames_dropped_total"), 5);
        assert_eq!(counters.get("cam-1", "skynet_frames_decoded_total"), 100);
        assert_eq!(counters.get("cam-2", "skynet_frames_decoded_total"), 0);
    }
}

#[cfg(test)]
mod platform_tests {
    use super::*;

    #[test]
    fn a_platforms_state_is_its_health_entry() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::new();
        let console = Console::open(
            ApiConfig::local("127.0.0.1:0".parse().unwrap()),
            &dir.path().join("state.sqlite"),
            None,
            health.clone(),
            None,
        )
        .unwrap();
        console.register_platform(PlatformRegistration {
            id: "34020000002000000001".into(),
            kind: "gb28181".into(),
            listen: "127.0.0.1:5060".into(),
            owner: OwnerKind::Police,
            channels_analysed: 0,
            all_channels: true,
            live: Box::new(PlatformFigures::default),
        });
        let entry = health.register("platform 34020000002000000001", "platform");
        entry.retrying("lower platform 34020000002000000002 offline: keepalive timeout");
        let views = console.platform_views();
        assert_eq!(views[0].state, skynet_core::ComponentState::Retrying);
        assert_eq!(
            views[0].reason.as_deref(),
            Some("lower platform 34020000002000000002 offline: keepalive timeout")
        );
        entry.up();
        assert_eq!(
            console.platform_views()[0].state,
            skynet_core::ComponentState::Up
        );
    }
}
