//! Rules and risk: each camera's frames in order, on that camera's own event clock.
//!
//! - Order: frames come back from parallel detection in any order; each camera's dense
//!   dispatch numbers put them back. Nothing is guessed: a frame the detector could not
//!   process still arrives (empty), and frames dropped under overload arrive as a counted gap.
//! - Time: a camera's clock is the event time of its last applied frame. A frame older than
//!   that is late: dropped and counted. While a live camera is quiet (or gone), its
//!   watermark moves with the wall clock, so its incidents still close on time; a file's
//!   clock moves only with its frames, so a replay gives the same result at any speed. One
//!   camera's clock never closes another camera's incidents.
//! - State: the engine's state and each camera's clock go to the commit stage with every
//!   batch of revisions (and every few seconds while evidence changes), committed in the same
//!   transaction as the revisions. After a restart, even after SIGKILL, the engine goes on
//!   from the last committed state, and frames at or before a camera's committed clock are
//!   not applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{
    DeviceFault, DeviceId, GridId, QueueClosed, RiskEvent, Shutdown, StageQueue, StageReceiver,
    Watermark,
};
use skynet_detect::CameraRules;
use skynet_detect::reorder::Reorder;
use skynet_detect::tracker::Tracker;
use skynet_ingest::CameraEvent;
use skynet_ingest::liveness::{CAMERA_OFFLINE, OfflineWatch};
use skynet_risk::{GridRiskEngine, RiskEngine};

use super::cases::CaseDesk;
use skynet_detect::SENSOR_OFFLINE;
use skynet_risk::recorder::ObservationRecorder;
use skynet_snapshot::SnapshotStage;

// The persisted state schema, read by `run` at start.
pub(crate) use skynet_risk::state::PipelineState;

use super::commit::Commit;
use super::detect::Detected;
use super::sensors::SensorEvent;
use super::{Counters, POLL};
use crate::config::PipelineConfig;

/// How often evidence that changed no incident is still saved.
const STATE_EVERY: Duration = Duration::from_secs(2);
/// Sensor messages wait at most about this long for a commit to acknowledge them (when no
/// revision makes one sooner); the broker sends no more than its in-flight window meanwhile.
const SENSOR_ACKS_EVERY: Duration = Duration::from_millis(20);
/// ... or once this many messages wait: well inside the broker's in-flight window (10,000 in
/// deploy/mosquitto.conf), so acks flow before it fills, yet a commit covers many messages
/// (counted in messages, not checkpoints: a checkpoint may hold one message or hundreds).
const SENSOR_ACK_MESSAGES: usize = 4096;
/// A live camera with no frame for this long is quiet: its watermark drives its clock.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// One camera's state in the rules stage.
struct CameraStage {
    /// Follows the camera's objects from frame to frame, before the rules look at them.
    tracker: Tracker,
    rules: CameraRules,
    order: Reorder,
    watermark: Watermark,
    /// Event time of the last applied frame.
    clock: Option<DateTime<Utc>>,
    /// The clock committed before a restart: frames at or before it were applied then.
    restored: Option<DateTime<Utc>>,
    last_frame: Instant,
    latency: metrics::Histogram,
    late: metrics::Counter,
    gaps: metrics::Counter,
    /// Live cameras only: when frames stopped, for the `camera_offline` incident.
    offline: Option<OfflineWatch>,
    /// `offline_after_s`: how a fresh watch is made (an edge's camera claimed again).
    offline_after: chrono::Duration,
    /// A patrol's camera (`patrol = "NAME"`): its visits and offline rounds.
    patrol: Option<super::patrol::PatrolLooks>,
}

/// A config reload's change to the rules stage (`reload.rs`), applied between frames.
pub(crate) enum RulesControl {
    /// A camera's rules (and the zones they use) rebuilt from the reloaded config. Its
    /// tracker goes on, and each rule whose name stays keeps its memory (streaks, cooldowns).
    Rebuild {
        camera: DeviceId,
        rules: Vec<Arc<dyn skynet_detect::BuildRule>>,
    },
    /// A camera that joined while running (a platform channel placed by its catalog
    /// position), sent before its source starts.
    AddCamera {
        spec: Box<crate::config::CameraSpec>,
        watermark: Watermark,
    },
    /// The catalog does not place this channel (no position, outside every cell, over its
    /// platform's limit), or its camera's source did not start: a camera of it (before a
    /// restart, or just added) is gone, its offline incident closes and its rules' memory is
    /// dropped.
    NotPlaced { camera: DeviceId },
}

/// Applies each camera's rules in frame order and feeds the evidence to the risk engine.
pub(crate) struct RulesAndRisk {
    cameras: BTreeMap<DeviceId, CameraStage>,
    engine: Box<dyn RiskEngine>,
    commits: StageQueue<Commit>,
    counters: Arc<Counters>,
    /// Cameras in the restored state that the config no longer has: their incidents close
    /// by the wall clock, since no frame of theirs will come.
    gone: BTreeMap<DeviceId, DateTime<Utc>>,
    /// The rules' memory of the cameras in `gone`, kept (and saved) for a camera that joins
    /// again while running (a platform channel placed by its catalog position).
    gone_rules: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The cameras that may join while running (platform channels a catalog may place): one
    /// of the state before a restart, not yet placed again, keeps its offline incident open
    /// and its rules' memory until the catalog says it is not placed.
    late_cameras: Option<LateCameras>,
    /// What the control's changes caused, committed with the loop's next revisions.
    control_revisions: Vec<RiskEvent>,
    /// Set when the process keeps running after its sources end (a service): the stop signal.
    keep_running: Option<Shutdown>,
    /// Evidence or clocks changed since the state was last sent.
    dirty: bool,
    last_state: Instant,
    /// Camera state changes (running, stalled, retrying, ...).
    camera_events: Option<crossbeam_channel::Receiver<CameraEvent>>,
    /// Evidence and faults from the sensor stage.
    sensor_events: Option<crossbeam_channel::Receiver<SensorEvent>>,
    /// Acks of sensor messages whose effect the next commit holds (in receipt order).
    sensor_acks: Vec<skynet_ingest::sensor::ReadingAcks>,
    /// How many messages `sensor_acks` acknowledges.
    sensor_acked: usize,
    /// Each sensor's rules' memory as of the last checkpoint, saved with the state.
    sensor_rules: BTreeMap<String, super::sensors::SensorRulesState>,
    /// The configured sensors' keys in the engine: live devices whose clock is the wall clock.
    sensors: Vec<DeviceId>,
    /// `[risk] record`: every observation the engine takes, for `skynet replay`.
    recorder: Option<ObservationRecorder>,
    /// Status changes (the case system's and the console's), and what of them the next
    /// commit answers and records.
    cases: Option<CaseDesk>,
    /// Snapshots for revisions with new detections; `None` when `[evidence]` is off.
    evidence: Option<SnapshotStage>,
    /// Event clips of cameras with `clips` on (`clips.rs`).
    clips: Option<super::clips::ClipStage>,
    /// The console's camera tiles; `None` without `[api]`.
    preview: Option<super::console::Preview>,
    /// At an edge: the lease keys of the cameras this node runs now. A camera run elsewhere
    /// is not offline here.
    claims: Option<tokio::sync::watch::Receiver<BTreeSet<String>>>,
    /// At a scorer: observations from the bus (owned cells and their neighbours) and
    /// ownership changes, and the owned cells' state for KV (`scorer.rs`).
    bus: Option<super::scorer::BusIntake>,
    /// A config reload's changes (`None` without hot reload).
    control: Option<crossbeam_channel::Receiver<RulesControl>>,
    /// The patrols' visits and finished rounds (`None` without `[[patrols]]`).
    patrols: Option<crossbeam_channel::Receiver<super::patrol::PatrolToRules>>,
}

impl CameraStage {
    /// A camera's state from its spec: `restored`, the clock committed before a restart.
    fn new(
        c: &crate::config::CameraSpec,
        watermark: &Watermark,
        restored: Option<DateTime<Utc>>,
        patrol: Option<super::patrol::PatrolLooks>,
    ) -> Self {
        let label = c.id.to_string();
        Self {
            tracker: Tracker::new(c.tracker.clone()),
            rules: CameraRules {
                camera: c.id.clone(),
                grid: c.grid.clone(),
                owner: c.owner,
                rules: c
                    .rules
                    .iter()
                    .map(|r| r.build(&skynet_detect::RuleBuildContext { camera: &c.id }))
                    .collect(),
            },
            order: Reorder::default(),
            watermark: watermark.clone(),
            clock: None,
            restored,
            last_frame: Instant::now(),
            latency: metrics::histogram!("skynet_frame_latency_seconds", "camera" => label.clone()),
            late: metrics::counter!("skynet_frames_late_total", "camera" => label.clone()),
            gaps: metrics::counter!("skynet_frame_gaps_total", "camera" => label),
            // A patrol's camera is closed between visits: its offline rounds, not its quiet
            // time, tell whether it is offline.
            offline: (watermark.is_live() && c.patrol.is_none())
                .then(|| OfflineWatch::new(offline_after(c), c.grid.clone(), c.owner)),
            offline_after: offline_after(c),
            patrol,
        }
    }
}

/// Whether a camera id may join while running (a platform channel its catalog may place).
pub(crate) type LateCameras = Box<dyn Fn(&str) -> bool + Send>;

fn offline_after(camera: &crate::config::CameraSpec) -> chrono::Duration {
    chrono::Duration::from_std(camera.offline_after).unwrap_or(chrono::Duration::seconds(30))
}

impl RulesAndRisk {
    pub(crate) fn new(
        config: &PipelineConfig,
        watermarks: &[Watermark],
        restored: Option<super::state::Restored>,
        commits: StageQueue<Commit>,
        counters: Arc<Counters>,
        keep_running: Option<Shutdown>,
    ) -> Self {
        let mut clocks = BTreeMap::new();
        let mut rule_states = BTreeMap::new();
        let mut sensor_rules = BTreeMap::new();
        // Restored (and checked) before: an unreadable state never gets this far.
        let engine = match restored {
            Some(super::state::Restored { state, engine }) => {
                clocks = state.cameras;
                rule_states = state.rules;
                sensor_rules = state.sensor_rules;
                tracing::info!(
                    cameras = clocks.len(),
                    open_incidents = engine.open_incidents(),
                    "going on from the state committed before the last stop"
                );
                engine
            }
            None => Box::new(GridRiskEngine::new(
                config.risk.clone(),
                config.risk_context(),
            )) as Box<dyn RiskEngine>,
        };
        let gone = clocks
            .iter()
            .filter(|(id, _)| !config.cameras.iter().any(|c| c.id.as_str() == id.as_str()))
            .map(|(id, t)| (DeviceId::new(id), *t))
            .collect();
        let cameras = config
            .cameras
            .iter()
            .zip(watermarks)
            .map(|(c, watermark)| {
                let mut stage = CameraStage::new(
                    c,
                    watermark,
                    clocks.get(c.id.as_str()).copied(),
                    super::patrol::PatrolLooks::for_camera(config, c),
                );
                if let Some(saved) = rule_states.remove(c.id.as_str()) {
                    stage.rules.restore(saved);
                }
                (c.id.clone(), stage)
            })
            .collect();
        Self {
            cameras,
            engine,
            commits,
            counters,
            gone,
            gone_rules: rule_states,
            late_cameras: None,
            control_revisions: Vec::new(),
            keep_running,
            dirty: false,
            last_state: Instant::now(),
            camera_events: None,
            sensor_events: None,
            sensor_acks: Vec::new(),
            sensor_acked: 0,
            sensor_rules,
            sensors: Vec::new(),
            cases: None,
            recorder: config
                .record_observations
                .as_deref()
                .and_then(ObservationRecorder::open),
            evidence: SnapshotStage::for_cameras(
                &config.evidence,
                config
                    .cameras
                    .iter()
                    .map(|c| (c.id.clone(), c.zones.clone(), c.privacy_masks.clone())),
            ),
            clips: super::clips::ClipStage::for_config(config),
            preview: None,
            claims: None,
            bus: None,
            control: None,
            patrols: None,
        }
    }

    /// Takes the patrols' visits and rounds (`patrol.rs`).
    pub(crate) fn with_patrols(
        mut self,
        patrols: crossbeam_channel::Receiver<super::patrol::PatrolToRules>,
    ) -> Self {
        self.patrols = Some(patrols);
        self
    }

    /// Applies what the patrols sent since the last call: a visit begins or ends, a round
    /// finished (into the outbox, with the `camera_offline` incidents its offline rounds
    /// open or close). Then answers the ended visits whose frames are all applied.
    fn take_patrols(&mut self) -> Result<(), QueueClosed> {
        use super::patrol::PatrolToRules;
        let Some(rx) = &self.patrols else {
            return Ok(());
        };
        let messages: Vec<PatrolToRules> = rx.try_iter().collect();
        for message in messages {
            match message {
                PatrolToRules::Begin { camera } => {
                    if let Some(stage) = self.cameras.get_mut(&camera)
                        && let Some(looks) = stage.patrol.as_mut()
                    {
                        looks.begin();
                        // A round later: the objects of the last visit are not this one's
                        // (nor is the minute between an interval between frames).
                        stage.tracker.forget();
                    }
                }
                PatrolToRules::End(end) => {
                    match self
                        .cameras
                        .get_mut(&end.camera)
                        .and_then(|c| c.patrol.as_mut())
                    {
                        Some(looks) => looks.end(end),
                        None => end.answer(Default::default()),
                    }
                }
                PatrolToRules::Round(round) => {
                    let mut revisions = Vec::new();
                    for look in &round.cameras {
                        let change = self
                            .cameras
                            .get_mut(&look.id)
                            .and_then(|c| c.patrol.as_mut())
                            .and_then(|looks| looks.after_round(look.status, round.started));
                        match change {
                            Some(super::patrol::OfflineChange::Declare { since }) => {
                                tracing::warn!(camera = %look.id, patrol = %round.patrol, round = round.round, "camera offline in several patrol rounds in a row");
                                let fault = DeviceFault {
                                    camera: look.id.clone(),
                                    source: skynet_core::SourceKind::Camera,
                                    grid: look.grid.clone(),
                                    owner: look.owner,
                                    category: CAMERA_OFFLINE.into(),
                                    since,
                                    at: round.finished,
                                };
                                revisions.extend(self.observe(&fault.observation()));
                            }
                            Some(super::patrol::OfflineChange::Recover) => {
                                revisions.extend(self.recover(
                                    &look.id,
                                    CAMERA_OFFLINE,
                                    round.finished,
                                ));
                            }
                            None => {}
                        }
                    }
                    revisions.push(RiskEvent::PatrolRound(round));
                    self.commit(revisions)?;
                }
            }
        }
        self.answer_patrol_visits(false);
        Ok(())
    }

    /// Answers each ended visit whose frames have all been applied, or whose wait is over
    /// (all of them when `all`: the pipeline is draining).
    fn answer_patrol_visits(&mut self, all: bool) {
        for camera in self.cameras.values_mut() {
            if let Some(looks) = camera.patrol.as_mut() {
                looks.answer_if_done(camera.clock, all);
            }
        }
    }

    /// Cameras may join while running (platform channels placed by their catalog position).
    pub(crate) fn with_late_cameras(mut self, may_join: LateCameras) -> Self {
        self.late_cameras = Some(may_join);
        self
    }

    /// Whether camera `id` may join while running.
    fn may_join(&self, id: &str) -> bool {
        self.late_cameras.as_ref().is_some_and(|may| may(id))
    }

    /// Takes a config reload's changes (`reload.rs`).
    pub(crate) fn with_control(
        mut self,
        control: crossbeam_channel::Receiver<RulesControl>,
    ) -> Self {
        self.control = Some(control);
        self
    }

    /// Applies the reload's changes that came since the last call.
    fn take_control(&mut self) {
        let Some(rx) = &self.control else { return };
        let changes: Vec<RulesControl> = rx.try_iter().collect();
        for change in changes {
            match change {
                RulesControl::Rebuild { camera, rules } => {
                    let Some(stage) = self.cameras.get_mut(&camera) else {
                        tracing::warn!(camera = %camera, "reloaded rules for a camera this stage does not run; ignored");
                        continue;
                    };
                    let memory = stage.rules.state();
                    stage.rules.rules = rules
                        .iter()
                        .map(|r| r.build(&skynet_detect::RuleBuildContext { camera: &camera }))
                        .collect();
                    stage.rules.restore(memory);
                    self.dirty = true;
                    tracing::info!(camera = %camera, rules = stage.rules.rules.len(), "rules rebuilt from the reloaded config");
                }
                RulesControl::NotPlaced { camera } => {
                    // (A stage of it here is one whose source did not start.)
                    self.cameras.remove(&camera);
                    self.gone_rules.remove(camera.as_str());
                    let now = Utc::now();
                    let faults: Vec<_> = self
                        .engine
                        .faulty_devices()
                        .into_iter()
                        .filter(|(source, _, _)| source.id == camera)
                        .collect();
                    for (source, grid, category) in faults {
                        tracing::info!(device = %source.id, "channel not placed by its catalog; closing its offline incident");
                        let revisions =
                            self.observe(&DeviceFault::recovery(source, grid, &category, now));
                        self.control_revisions.extend(revisions);
                    }
                }
                RulesControl::AddCamera { spec, watermark } => {
                    if self.cameras.contains_key(&spec.id) {
                        continue;
                    }
                    // A camera of the state before a restart goes on from its clock (its
                    // open incidents were closing by the wall clock meanwhile).
                    let restored = self.gone.remove(&spec.id);
                    self.engine.add_device(skynet_risk::DeviceInfo {
                        source: skynet_core::SourceRef::camera(&spec.id),
                        grid: spec.grid.clone(),
                        owner: spec.owner,
                    });
                    if let Some(evidence) = &mut self.evidence {
                        evidence.add_camera(
                            spec.id.clone(),
                            spec.zones.clone(),
                            spec.privacy_masks.clone(),
                        );
                    }
                    if let Some(preview) = &self.preview {
                        preview.add_camera(
                            spec.id.clone(),
                            (spec.zones.clone(), spec.privacy_masks.clone()),
                        );
                    }
                    let mut stage = CameraStage::new(&spec, &watermark, restored, None);
                    if let Some(saved) = self.gone_rules.remove(spec.id.as_str()) {
                        stage.rules.restore(saved);
                    }
                    tracing::info!(camera = %spec.id, grid = %spec.grid, "camera joined the rules stage");
                    self.cameras.insert(spec.id.clone(), stage);
                    self.dirty = true;
                }
            }
        }
    }

    /// At an edge: `engine` (the bus publisher) instead of the grid engine, and cameras
    /// watched for going offline only while this node holds their lease (`claims`: the
    /// runnable lease keys). A saved risk state is not used: the scorers own the cells.
    pub(crate) fn for_edge(
        mut self,
        engine: Box<dyn RiskEngine>,
        claims: tokio::sync::watch::Receiver<BTreeSet<String>>,
    ) -> Self {
        let open = self.engine.open_incidents();
        if open > 0 {
            tracing::warn!(
                open_incidents = open,
                "the saved state holds incidents of a single node; an edge does not go on with them (the scorers own the cells)"
            );
        }
        self.engine = engine;
        self.claims = Some(claims);
        self
    }

    /// At a scorer: takes the bus's observations and ownership changes; emits only for
    /// owned cells, and hands their state to the saver after each commit.
    pub(crate) fn with_bus_observations(mut self, bus: super::scorer::BusIntake) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Applies what the scorer's intake sent since the last call (a bounded batch); returns
    /// the revisions. An ownership change commits what the old engine made, then swaps in
    /// the engine rebuilt for the cells owned now.
    fn take_bus(&mut self, wait: Duration) -> Result<Vec<RiskEvent>, QueueClosed> {
        const BATCH: usize = 4096;
        let Some(bus) = &self.bus else {
            return Ok(Vec::new());
        };
        let first = if wait.is_zero() {
            bus.rx.try_recv().ok()
        } else {
            bus.rx.recv_timeout(wait).ok()
        };
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let inputs: Vec<super::scorer::BusInput> = std::iter::once(first)
            .chain(bus.rx.try_iter().take(BATCH))
            .collect();
        let mut revisions = Vec::new();
        for input in inputs {
            match input {
                super::scorer::BusInput::Observation { seq, observation } => {
                    let Some(bus) = &mut self.bus else { break };
                    let grid = observation.grid.as_str();
                    if !bus.cells.accept(seq, grid) {
                        continue;
                    }
                    if bus.cells.is_owned(grid) {
                        bus.cells.record_lag(grid, observation.at);
                        bus.cells.applied(seq, grid);
                    }
                    self.counters.observations.fetch_add(1, Ordering::Relaxed);
                    self.dirty = true;
                    let _span = tracing::debug_span!("observe", source = %observation.source.id, grid = %observation.grid, seq).entered();
                    revisions.extend(self.observe(&observation));
                }
                super::scorer::BusInput::Position { mark, seq } => {
                    if let Some(bus) = &mut self.bus {
                        bus.cells.position(mark, seq);
                    }
                    // The floor goes out with the next periodic commit.
                    self.dirty = true;
                }
                super::scorer::BusInput::Rebuild { owned, taken, mark } => {
                    self.commit(std::mem::take(&mut revisions))?;
                    let Some(bus) = &mut self.bus else { break };
                    self.engine = bus.cells.rebuild(owned, taken, mark);
                    self.dirty = true;
                }
            }
        }
        Ok(revisions)
    }

    /// Takes evidence and device faults from the sensor stage. Sensors are live: their
    /// incidents close by the wall clock.
    pub(crate) fn with_sensor_events(
        mut self,
        events: crossbeam_channel::Receiver<SensorEvent>,
        sensors: Vec<DeviceId>,
    ) -> Self {
        self.sensor_events = Some(events);
        self.sensors = sensors;
        self
    }

    /// Offers analysed frames to the console's camera tiles.
    pub(crate) fn with_preview(mut self, preview: super::console::Preview) -> Self {
        self.preview = Some(preview);
        self
    }

    /// Takes status changes: the case system's events and the console's.
    pub(crate) fn with_case_feedback(mut self, cases: CaseDesk) -> Self {
        self.cases = Some(cases);
        self
    }

    /// Applies (or refuses) the status events that came since the last call; returns the
    /// revisions. Each is answered to the case system only once the next commit is made.
    fn take_case_feedback(&mut self) -> Vec<RiskEvent> {
        let Some(desk) = &mut self.cases else {
            return Vec::new();
        };
        let revisions = desk.take(self.engine.as_mut());
        if !revisions.is_empty() {
            self.dirty = true;
        }
        revisions
    }

    /// Whether status events wait for a commit to be answered or recorded.
    fn cases_pending(&self) -> bool {
        self.cases.as_ref().is_some_and(CaseDesk::has_pending)
    }

    /// Waits until the scorer's intake or the sensor stage has something, or `wait` passed.
    fn wait_for_bus_or_sensors(&self, wait: Duration) {
        let started = Instant::now();
        let mut select = crossbeam_channel::Select::new();
        let mut empty = Vec::new();
        if let Some(bus) = &self.bus {
            select.recv(&bus.rx);
            empty.push(Box::new(|| bus.rx.is_empty()) as Box<dyn Fn() -> bool + '_>);
        }
        if let Some(rx) = &self.sensor_events {
            select.recv(rx);
            empty.push(Box::new(|| rx.is_empty()));
        }
        if empty.is_empty() {
            std::thread::sleep(wait);
            return;
        }
        let woke = select.ready_timeout(wait).is_ok();
        // A channel whose sender has gone is always ready: never spin on it.
        if woke
            && empty.iter().all(|e| e())
            && let Some(rest) = wait.checked_sub(started.elapsed())
        {
            std::thread::sleep(rest);
        }
    }

    /// Applies what the sensor stage sent since the last call (at most a bounded batch, so
    /// camera frames are never starved); returns the revisions.
    fn take_sensor_events(&mut self, wait: Duration) -> Vec<RiskEvent> {
        const BATCH: usize = 4096;
        let Some(rx) = &self.sensor_events else {
            return Vec::new();
        };
        let first = if wait.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(wait).ok()
        };
        let Some(first) = first else {
            return Vec::new();
        };
        let events: Vec<SensorEvent> = std::iter::once(first)
            .chain(rx.try_iter().take(BATCH))
            .collect();
        let mut revisions = Vec::new();
        for event in events {
            revisions.extend(self.apply_sensor_event(event));
        }
        revisions
    }

    fn apply_sensor_event(&mut self, event: SensorEvent) -> Vec<RiskEvent> {
        match event {
            SensorEvent::Observation(observation) => {
                self.counters.observations.fetch_add(1, Ordering::Relaxed);
                self.dirty = true;
                let _span = tracing::debug_span!("observe", sensor = %observation.source.id, grid = %observation.grid).entered();
                self.observe(&observation)
            }
            SensorEvent::Fault(fault) => self.observe(&fault.observation()),
            SensorEvent::Recovered { device, at } => self.recover(&device, SENSOR_OFFLINE, at),
            SensorEvent::Checkpoint { acks, rules, bus } => {
                if !rules.is_empty() || !bus.is_empty() {
                    self.dirty = true;
                }
                // At a scorer: the memory goes with its sensor's cell, and the cells'
                // readings count as applied up to what this checkpoint covers.
                if let Some(intake) = &mut self.bus {
                    intake.cells.sensor_checkpoint(&rules, bus);
                }
                for (sensor, state) in rules {
                    if state.is_empty() {
                        self.sensor_rules.remove(&sensor);
                    } else {
                        self.sensor_rules.insert(sensor, state);
                    }
                }
                if let Some(acks) = acks {
                    self.sensor_acked += acks.len();
                    self.sensor_acks.push(acks);
                }
                Vec::new()
            }
        }
    }

    /// Hands one observation to the engine, recording it first when `[risk] record` is set.
    fn observe(&mut self, observation: &skynet_core::Observation) -> Vec<RiskEvent> {
        if let Some(recorder) = &mut self.recorder
            && let Err(e) = recorder.write(observation)
        {
            metrics::counter!("skynet_observations_record_errors_total").increment(1);
            tracing::error!(path = %recorder.path().display(), error = %e, "recording observations failed; stopped recording");
            self.recorder = None;
        }
        self.engine.observe(observation)
    }

    /// The device works again: the observation that closes its open `category` fault.
    fn recover(&mut self, device: &DeviceId, category: &str, at: DateTime<Utc>) -> Vec<RiskEvent> {
        let faults = self.engine.faulty_devices();
        let found = faults
            .into_iter()
            .find(|(source, _, c)| &source.id == device && c == category)
            .map(|(source, grid, _)| (source, grid));
        let Some((source, grid)) = found.or_else(|| self.edge_camera(device)) else {
            return Vec::new();
        };
        self.observe(&DeviceFault::recovery(source, grid, category, at))
    }

    /// At an edge, a camera of this config with its cell: the engine that knows its faults
    /// is a scorer's, so every recovery goes out (one closing no fault changes nothing).
    fn edge_camera(&self, device: &DeviceId) -> Option<(skynet_core::SourceRef, GridId)> {
        self.claims.as_ref()?;
        let camera = self.cameras.get(device)?;
        Some((
            skynet_core::SourceRef::camera(device),
            camera.rules.grid.clone(),
        ))
    }

    /// Whether sensor messages wait for a commit to be acknowledged, and it is time for one:
    /// promptly, even when they changed nothing, or the broker's in-flight window fills.
    fn sensor_acks_due(&self) -> bool {
        !self.sensor_acks.is_empty()
            && (self.last_state.elapsed() >= SENSOR_ACKS_EVERY
                || self.sensor_acked >= SENSOR_ACK_MESSAGES)
    }

    /// At shutdown: what the sensor stage still sends until it has stopped (it drains its
    /// queue first: the connection stopped taking messages at the stop signal), so every
    /// message it took is applied and acknowledged with the last commit.
    fn drain_sensor_events(&mut self) -> Vec<RiskEvent> {
        let Some(rx) = self.sensor_events.take() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut revisions = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(POLL) {
                Ok(event) => revisions.extend(self.apply_sensor_event(event)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        revisions
    }

    /// Listens to camera state changes: a live camera without frames for its
    /// `offline_after_s` opens a `camera_offline` incident, closed when frames flow again.
    pub(crate) fn with_camera_events(
        mut self,
        events: crossbeam_channel::Receiver<CameraEvent>,
    ) -> Self {
        self.camera_events = Some(events);
        self
    }

    /// Applies camera state changes and declares cameras offline that have been quiet too
    /// long; returns the incident revisions that causes.
    fn watch_cameras(&mut self) -> Vec<RiskEvent> {
        let mut revisions = Vec::new();
        let events: Vec<CameraEvent> = self
            .camera_events
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default();
        for event in events {
            let Some(watch) = self
                .cameras
                .get_mut(&event.camera)
                .and_then(|c| c.offline.as_mut())
            else {
                continue;
            };
            if watch.on_event(&event) {
                // Also after a restart, when the incident was opened by the process before.
                revisions.extend(self.recover(&event.camera, CAMERA_OFFLINE, event.at));
            }
        }
        let now = Utc::now();
        let claimed = self.claims.as_mut().map(|c| c.borrow_and_update().clone());
        let mut faults = Vec::new();
        for (id, camera) in &mut self.cameras {
            if let Some(claimed) = &claimed
                && !claimed.contains(&skynet_cluster::Leases::camera_key(id.as_str()))
            {
                // Run by another edge, or by none yet: not offline here. Its watch starts
                // afresh whenever it is claimed again.
                if camera.offline.is_some() {
                    camera.offline = Some(OfflineWatch::new(
                        camera.offline_after,
                        camera.rules.grid.clone(),
                        camera.rules.owner,
                    ));
                }
                continue;
            }
            if let Some(fault) = camera.offline.as_mut().and_then(|w| w.due(id, now)) {
                faults.push(fault.observation());
            }
        }
        for fault in faults {
            revisions.extend(self.observe(&fault));
        }
        revisions
    }

    /// Runs until detection has stopped, then applies what waits and flushes the engine.
    /// Stops early, with `Err`, if the commit stage has gone.
    pub(crate) fn run(&mut self, detected: &StageReceiver<Detected>) -> Result<(), QueueClosed> {
        // A camera taken out of the config is not offline any more: its fault incident closes.
        let now = Utc::now();
        let gone: Vec<_> = self
            .engine
            .faulty_devices()
            .into_iter()
            .filter(|(source, _, _)| {
                !self.cameras.contains_key(&source.id)
                    && !self.sensors.contains(&source.id)
                    && !self.may_join(source.id.as_str())
            })
            .collect();
        // The rules' memory of a camera gone for good is dropped with it.
        let keep: Vec<String> = self
            .gone_rules
            .keys()
            .filter(|id| self.may_join(id))
            .cloned()
            .collect();
        self.gone_rules.retain(|id, _| keep.contains(id));
        let mut closed = Vec::new();
        for (source, grid, category) in gone {
            tracing::info!(device = %source.id, "device no longer configured; closing its offline incident");
            closed.extend(self.observe(&DeviceFault::recovery(source, grid, &category, now)));
        }
        if !closed.is_empty() {
            self.commit(closed)?;
        }
        let mut last_tick = Instant::now();
        loop {
            match detected.recv_timeout(POLL) {
                Ok(Some(d)) => self.take(d)?,
                Ok(None) => {}
                // Every source has ended. A live camera that was given up on still has open
                // incidents to close by its (wall-clock) watermark: while the process keeps
                // running, keep its clock going.
                Err(QueueClosed) if self.keep_clocks_running() => {
                    if self.bus.is_some() {
                        // A scorer: wait on the bus and the sensor stage together (its
                        // readings reach the engine through the sensor stage); what came is
                        // taken below. Waiting on the bus alone held each reading up to a POLL.
                        self.wait_for_bus_or_sensors(POLL);
                    } else if self.sensor_events.is_some() {
                        // Sensors only from here: wait on them instead of sleeping.
                        let revisions = self.take_sensor_events(POLL);
                        if !revisions.is_empty() {
                            self.commit(revisions)?;
                        }
                    } else {
                        std::thread::sleep(POLL);
                    }
                }
                Err(QueueClosed) => break,
            }
            self.take_control();
            self.take_patrols()?;
            // (The control's own: offline incidents of channels the catalog does not place.)
            let mut revisions = std::mem::take(&mut self.control_revisions);
            revisions.extend(self.take_bus(Duration::ZERO)?);
            revisions.extend(self.take_sensor_events(Duration::ZERO));
            revisions.extend(self.take_case_feedback());
            if !revisions.is_empty() || self.cases_pending() || self.sensor_acks_due() {
                self.commit(revisions)?;
            }
            if last_tick.elapsed() >= POLL {
                last_tick = Instant::now();
                let revisions = self.watch_cameras();
                if !revisions.is_empty() {
                    self.commit(revisions)?;
                }
                self.advance_quiet_cameras()?;
                if self.dirty && self.last_state.elapsed() >= STATE_EVERY {
                    self.commit(Vec::new())?;
                }
            }
        }
        let ids: Vec<DeviceId> = self.cameras.keys().cloned().collect();
        for id in ids {
            let waiting = self
                .cameras
                .get_mut(&id)
                .map(|c| c.order.drain())
                .unwrap_or_default();
            for d in waiting {
                self.apply(&id, d)?;
            }
        }
        // The last rounds of the patrols, and no visit left waiting.
        self.take_patrols()?;
        self.answer_patrol_visits(true);
        let mut flushed = self.take_bus(Duration::ZERO)?;
        flushed.extend(self.drain_sensor_events());
        flushed.extend(self.take_case_feedback());
        flushed.extend(self.engine.flush());
        // The last state goes out even when nothing changed, so a restart goes on from here.
        self.commit(flushed)
    }

    fn keep_clocks_running(&self) -> bool {
        let running = self
            .keep_running
            .as_ref()
            .is_some_and(|stop| !stop.is_triggered());
        // Sensors and the case system keep sending after every camera file has ended.
        if running && (self.sensor_events.is_some() || self.cases.is_some() || self.bus.is_some()) {
            return true;
        }
        running
            && self
                .cameras
                .values()
                .any(|c| c.watermark.is_live() && !c.watermark.is_finished())
            && self.engine.open_incidents() > 0
    }

    fn take(&mut self, detected: Detected) -> Result<(), QueueClosed> {
        let id = detected.camera.clone();
        if !self.cameras.contains_key(&id) {
            // A camera that joined while running: its stage may still be in the control
            // queue (it was sent before its source started).
            self.take_control();
        }
        let Some(camera) = self.cameras.get_mut(&id) else {
            return Ok(());
        };
        camera.last_frame = Instant::now();
        for ready in camera.order.push(detected) {
            self.apply(&id, ready)?;
        }
        Ok(())
    }

    fn apply(&mut self, id: &DeviceId, detected: Detected) -> Result<(), QueueClosed> {
        let Some(camera) = self.cameras.get_mut(id) else {
            return Ok(());
        };
        if detected.gap > 0 {
            camera.gaps.increment(detected.gap);
            tracing::debug!(camera = %id, missing = detected.gap, "frames dropped before detection");
        }
        let Some(mut frame) = detected.frame else {
            return Ok(());
        };
        let t = frame.info.captured_at;
        let late = camera.clock.is_some_and(|c| t < c) || camera.restored.is_some_and(|r| t <= r);
        if late {
            camera.late.increment(1);
            self.counters.late.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        camera.clock = Some(t);
        self.dirty = true;
        camera
            .latency
            .record(frame.info.decoded_at.elapsed().as_secs_f64());
        camera.tracker.update(&mut frame);
        if let (Some(preview), Some(image)) = (&mut self.preview, &detected.image) {
            preview.offer(&frame, image);
        }
        let observations = camera.rules.apply(&frame);
        if let Some(looks) = camera.patrol.as_mut() {
            looks.frame(&frame, detected.image.as_ref(), observations.len());
        }
        // An incident's detections come from an observation: its frame is the one to keep.
        if !observations.is_empty()
            && let (Some(evidence), Some(image)) = (&mut self.evidence, detected.image)
        {
            evidence.remember(&frame, image);
        }
        let mut revisions = Vec::new();
        for observation in observations {
            self.counters.observations.fetch_add(1, Ordering::Relaxed);
            let _span = tracing::debug_span!("observe", camera = %observation.source.id, grid = %observation.grid).entered();
            revisions.extend(self.observe(&observation));
        }
        revisions.extend(self.engine.advance(t));
        if revisions.is_empty() {
            return Ok(());
        }
        self.commit(revisions)
    }

    /// Live cameras with nothing in flight and no frame for a while follow their watermark.
    fn advance_quiet_cameras(&mut self) -> Result<(), QueueClosed> {
        let mut revisions: Vec<RiskEvent> = Vec::new();
        for camera in self.cameras.values() {
            if !camera.watermark.is_live()
                || !camera.order.is_empty()
                || camera.last_frame.elapsed() < QUIET_AFTER
            {
                continue;
            }
            if let Some(now) = camera.watermark.current() {
                revisions.extend(self.engine.advance(now));
            }
        }
        for clock in self.gone.values_mut() {
            *clock = (*clock).max(Utc::now());
            revisions.extend(self.engine.advance(*clock));
        }
        if !self.sensors.is_empty() || self.bus.is_some() {
            // Sensors, and a scorer's bus, are live: their time is the wall clock.
            revisions.extend(self.engine.advance(Utc::now()));
        }
        if revisions.is_empty() {
            return Ok(());
        }
        self.commit(revisions)
    }

    fn state(&mut self) -> Option<skynet_emit::StateChanges> {
        let state = PipelineState {
            version: PipelineState::VERSION,
            cameras: self
                .cameras
                .iter()
                .filter_map(|(id, c)| c.clock.or(c.restored).map(|t| (id.to_string(), t)))
                .chain(self.gone.iter().map(|(id, t)| (id.to_string(), *t)))
                .collect(),
            rules: self
                .cameras
                .iter()
                .map(|(id, c)| (id.to_string(), c.rules.state()))
                .filter(|(_, rules)| !rules.is_empty())
                .chain(self.gone_rules.clone())
                .collect(),
            sensor_rules: self.sensor_rules.clone(),
            // Replaced by the engine's small part: its cells and ids go as changed rows.
            engine: serde_json::value::RawValue::NULL.to_owned(),
        };
        Some(super::state::changes(self.engine.as_mut(), state))
    }

    /// Sends revisions and the state they belong with to the commit stage (which blocks
    /// rather than drop anything).
    fn commit(&mut self, mut incidents: Vec<RiskEvent>) -> Result<(), QueueClosed> {
        if let Some(bus) = &self.bus {
            // A neighbour's cell is its owner's to emit.
            bus.cells.keep_owned(&mut incidents);
        }
        if let Some(evidence) = &mut self.evidence {
            evidence.attach(&mut incidents);
        }
        if let Some(clips) = &mut self.clips {
            clips.attach(&mut incidents);
        }
        if let Some(recorder) = &mut self.recorder
            && let Err(e) = recorder.flush()
        {
            metrics::counter!("skynet_observations_record_errors_total").increment(1);
            tracing::error!(path = %recorder.path().display(), error = %e, "recording observations failed; stopped recording");
            self.recorder = None;
        }
        let state = self.state();
        let cells = match (&mut self.bus, &state) {
            (Some(bus), Some(state)) => bus.cells.record(state, incidents.len()),
            _ => None,
        };
        self.dirty = false;
        self.last_state = Instant::now();
        let (acks, cases) = self
            .cases
            .as_mut()
            .map(CaseDesk::take_commit)
            .unwrap_or_default();
        let sensor_acks = std::mem::take(&mut self.sensor_acks);
        self.sensor_acked = 0;
        self.commits.send(Commit {
            incidents,
            state,
            acks,
            sensor_acks,
            cases,
            cells,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use skynet_core::{OverloadPolicy, stage_queue};
    use skynet_ingest::CameraState;

    use super::*;

    /// At an edge, a camera run elsewhere is never offline here, and once this edge claims it
    /// its offline time counts from the claim, not from its last frame here long ago.
    #[test]
    fn an_edge_watches_a_camera_for_offline_only_while_it_runs_it() {
        let mut config = PipelineConfig::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.toml"),
        )
        .unwrap();
        config.cameras.truncate(1);
        config.cameras[0].offline_after = Duration::from_secs(1);
        let id = config.cameras[0].id.clone();
        let (commits, _commits) =
            stage_queue::<Commit>("commits", "risk", 64, OverloadPolicy::Block);
        let (events, events_rx) = crossbeam_channel::bounded(16);
        let (claims, runnable) = tokio::sync::watch::channel(BTreeSet::new());
        let mut stage = RulesAndRisk::new(
            &config,
            &[Watermark::new(true)],
            None,
            commits,
            Arc::default(),
            None,
        )
        .with_camera_events(events_rx);
        // The edge's claims; the grid engine stays, so a fault shows as an incident.
        stage.claims = Some(runnable);
        let long_ago = Utc::now() - chrono::Duration::hours(1);
        let event = |state, reason: Option<&str>| CameraEvent {
            camera: id.clone(),
            state,
            at: Utc::now(),
            reason: reason.map(str::to_string),
            last_frame_at: Some(long_ago),
        };
        // It ran here an hour ago, and fails now, while another edge runs it.
        events.send(event(CameraState::Running, None)).unwrap();
        events
            .send(event(CameraState::Retrying, Some("refused")))
            .unwrap();
        assert!(
            stage.watch_cameras().is_empty(),
            "not offline: run elsewhere"
        );

        // Claimed: it fails here too, but counts only from the claim.
        let claimed_at = Instant::now();
        claims.send_replace(BTreeSet::from([skynet_cluster::Leases::camera_key(
            id.as_str(),
        )]));
        events
            .send(event(CameraState::Retrying, Some("refused")))
            .unwrap();
        assert!(stage.watch_cameras().is_empty(), "not offline at once");
        let deadline = Instant::now() + Duration::from_secs(30);
        let opened = loop {
            let revisions = stage.watch_cameras();
            if !revisions.is_empty() || Instant::now() > deadline {
                break revisions;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(claimed_at.elapsed() >= Duration::from_secs(1));
        let incident = opened
            .iter()
            .find_map(RiskEvent::as_incident)
            .expect("camera_offline opened");
        assert_eq!(incident.category, CAMERA_OFFLINE);
    }
}
