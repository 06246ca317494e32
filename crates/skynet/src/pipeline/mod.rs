//! The running pipeline: stage threads joined by bounded queues, sinks on the I/O runtime.
//!
//! ```text
//!  camera source ─┐ (per-camera queue: drop-oldest when live, wait when replaying a file)
//!  camera source ─┼─► detect workers ─► rules + risk ─► commit ─► outbox (SQLite)
//!  camera source ─┘   (N sessions)     (per camera,    (one tx: revisions + state)
//!     supervised,                       in order,              │ wakes
//!     restarted with backoff            event time)            ▼
//!                                               sink tasks on tokio, one per sink,
//!                                               each with its own cursor and retry
//! ```
//!
//! Sources are supervised and restarted. A stage whose loss would lose data (detect, risk,
//! commit) makes the whole pipeline drain what it can and `run` return
//! [`PipelineError::StageFailed`], so the process exits non-zero and its supervisor
//! restarts it; the state committed with the last revision lets it go on from there.

mod cases;
mod catalog;
mod city_console;
mod clips;
mod cluster;
mod commit;
mod console;
mod detect;
mod edge;
mod live;
mod patrol;
mod platforms;
mod readings;
mod reload;
mod rules;
mod scorer;
pub mod sensors;
mod services;
mod state;

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use skynet_core::{ComponentHealth, DeviceId, OverloadPolicy, Shutdown, stage_queue};
use skynet_detect::{DetectError, Detector, OnnxDetector, OnnxRuntime};
use skynet_emit::{Committer, EmitError, Outbox};
use skynet_ingest::{
    CameraEvent, CameraHealth, FrameDelivery, FrameOutput, IngestError, MotionGate, ObjectsInView,
};

pub use services::Services;

use crate::config::PipelineConfig;
use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Serve(#[from] skynet_serve::ServeError),
    #[error("sensor ingest: {0}")]
    Sensors(String),
    #[error("the console: {0}")]
    Console(String),
    /// `[cluster]`: the NATS could not be reached, or a bucket or stream not opened.
    #[error("the cluster: {0}")]
    Cluster(String),
    #[error("could not start the {stage} thread: {source}")]
    Spawn {
        stage: String,
        #[source]
        source: std::io::Error,
    },
    /// The saved state cannot be read: nothing starts (starting from nothing would leave the
    /// incidents it held open downstream for ever).
    #[error(
        "the saved state in {} cannot be read: {cause}. Nothing was started. Run `skynet state \
         recover --config FILE` (FILE: this config) to close the incidents it held, with a \
         `state_lost` revision to every sink, and start afresh",
        path.display()
    )]
    State { path: PathBuf, cause: String },
    /// A stage whose loss would lose data failed; what could be drained was.
    #[error("the {stage} stage failed: {cause}")]
    StageFailed { stage: String, cause: String },
}

/// How to run: the stop signal, and optional parts to plug in.
#[derive(Default)]
pub struct RunOptions {
    /// Triggered to stop; sources stop first and everything in flight is flushed.
    pub shutdown: Shutdown,
    /// The I/O runtime, the health table and the metrics; `run` starts its own when absent.
    pub services: Option<Arc<Services>>,
    /// Detectors to use instead of ONNX sessions of the configured model, one per worker
    /// (tests plug in their own implementation of the stage trait here).
    pub detectors: Option<Vec<Box<dyn Detector>>>,
    /// Once every source has ended, keep delivering to the sinks until `shutdown` is
    /// triggered, as a service does (a sink that is down catches up when it comes back).
    /// Without it, `run` returns as soon as everything is drained (`--until-eof`).
    pub wait_for_shutdown: bool,
    /// What this process does in a city of many nodes (`skynet run --role`); `All`, the
    /// default, is the single node and never touches `[cluster]`.
    pub role: skynet_cluster::Role,
    /// Hot reload (`skynet run`): SIGHUP, and with `watch` a change of the file, reloads
    /// the config from `config_path`. `None` (tests, `skynet eval`): the config is fixed.
    pub reload: Option<ReloadOptions>,
}

/// Where a running pipeline reloads its config from (see [`RunOptions::reload`]).
#[derive(Clone)]
pub struct ReloadOptions {
    pub config_path: PathBuf,
    /// Also reload when the file changes, not only on SIGHUP.
    pub watch: bool,
    /// The text the running config was parsed from, which the first reload diffs against;
    /// `None`: the file as it is when the pipeline starts.
    pub running_text: Option<String>,
}

impl std::fmt::Debug for ReloadOptions {
    /// Without the text: it may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadOptions")
            .field("config_path", &self.config_path)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// The event times of a camera's first and last frame.
pub type FrameSpan = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);

/// What a run did, for the CLI's last log line, tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub frames_decoded: u64,
    pub frames_analysed: u64,
    /// Analysed frames the detector ran on (the rest: the inference interval skipped them).
    pub frames_inferred: u64,
    pub frames_dropped: u64,
    /// Frames not applied because they were older than what the camera had already applied.
    pub frames_late: u64,
    pub observations: u64,
    pub incident_revisions: u64,
    pub failed_cameras: Vec<DeviceId>,
    /// Each camera's first and last frame in event time (`None`: no frame came).
    pub camera_frames: Vec<(DeviceId, Option<FrameSpan>)>,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    decoded: AtomicU64,
    analysed: AtomicU64,
    inferred: AtomicU64,
    dropped: AtomicU64,
    late: AtomicU64,
    observations: AtomicU64,
    incidents: AtomicU64,
}

pub(crate) const POLL: Duration = Duration::from_millis(100);
/// How long sinks get at shutdown to take what is committed; the rest waits in the outbox.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The first failure of a stage that cannot be lost; it stops the pipeline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fatal {
    first: Arc<Mutex<Option<(String, String)>>>,
    shutdown: Shutdown,
}

impl Fatal {
    fn new(shutdown: Shutdown) -> Self {
        Self {
            first: Arc::default(),
            shutdown,
        }
    }

    pub(crate) fn report(&self, stage: &str, cause: String) {
        tracing::error!(stage, cause = %cause, "stage failed; draining what can be drained, then exiting");
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some((stage.to_string(), cause));
        }
        self.shutdown.trigger();
    }

    fn take(&self) -> Option<(String, String)> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// Triggers its signal when dropped: a helper thread stops on every way out of [`run`].
struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// Spawns a stage thread whose panic is a fatal failure of that stage.
fn spawn_stage(
    name: &str,
    health: ComponentHealth,
    fatal: &Fatal,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, PipelineError> {
    let (stage, fatal) = (name.to_string(), fatal.clone());
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            health.up();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(()) => {
                    if health.status().is_some_and(|s| {
                        s.state.is_ok() || s.state == skynet_core::ComponentState::Starting
                    }) {
                        health.finished();
                    }
                }
                Err(panic) => {
                    let cause = format!("panicked: {}", panic_message(panic.as_ref()));
                    health.down(cause.clone());
                    fatal.report(&stage, cause);
                }
            }
        })
        .map_err(|source| PipelineError::Spawn {
            stage: name.to_string(),
            source,
        })
}

fn build_detectors(config: &PipelineConfig) -> Result<Vec<Box<dyn Detector>>, PipelineError> {
    let runtime = OnnxRuntime::init(config.onnxruntime.as_deref(), &[paths::data_dir()])?;
    (0..config.workers)
        .map(|_| -> Result<Box<dyn Detector>, PipelineError> {
            Ok(Box::new(OnnxDetector::new(
                &runtime,
                Arc::clone(&config.model),
                config.detector.clone(),
            )?))
        })
        .collect()
}

/// Runs until every source has ended or `options.shutdown` is triggered, then drains.
pub fn run(config: &PipelineConfig, options: RunOptions) -> Result<RunSummary, PipelineError> {
    let started = std::time::Instant::now();
    let services = match options.services {
        Some(services) => services,
        None => Arc::new(Services::start(None)?),
    };
    let health = services.health.clone();
    let shutdown = options.shutdown;
    let wait_for_shutdown = options.wait_for_shutdown;
    let reload = options.reload;
    let fatal = Fatal::new(shutdown.clone());
    let counters = Arc::new(Counters::default());

    // Everything that can fail before a frame flows, so a bad set-up fails fast and clearly.
    if options.role == skynet_cluster::Role::Console {
        city_console::check_config(config)?;
    }
    let console = console::start(config, &services)?;
    // In a city of many nodes (`--role`): connected and a live member of the role.
    let cluster = cluster::join(config, options.role, &services)?;
    if options.role == skynet_cluster::Role::Console
        && let Some(cluster) = cluster
    {
        // The city's console: the incidents stream and the cluster's health, nothing else.
        city_console::run(config, &services, console, cluster, &shutdown)?;
        return Ok(RunSummary {
            elapsed: started.elapsed(),
            ..RunSummary::default()
        });
    }
    // An edge publishes its observations on the bus instead of scoring them itself.
    let is_edge = options.role == skynet_cluster::Role::Edge;
    // Refused before anything starts (endpoints bound, the outbox opened).
    if is_edge && config.cameras.iter().any(|c| c.patrol.is_some()) {
        return Err(PipelineError::Cluster(
            "patrol cameras (`patrol = \"NAME\"`) run on a single node for now, not at an edge"
                .into(),
        ));
    }
    // A scorer runs no cameras and no MQTT: its evidence comes from the bus, its state from
    // KV (`scorer.rs`).
    let is_scorer = options.role == skynet_cluster::Role::Scorer;
    let publisher = match &cluster {
        Some(node) if is_edge => Some(edge::ObservationPublisher::start(
            node,
            config,
            shutdown.clone(),
        )?),
        _ => None,
    };
    // Platform channels placed by their catalog position join while running (a single
    // node: an edge runs the cameras it holds the lease of, and a channel has none).
    // A run that ends with its files (`--until-eof`, `skynet eval`) places none: a platform
    // is a live source, and placing would keep it running.
    let catalog_cameras = config.catalog_cameras.as_ref().filter(|_| {
        options.role == skynet_cluster::Role::All
            && cluster.is_none()
            && wait_for_shutdown
            && config
                .platforms
                .iter()
                .any(|p| p.config.places_by_catalog())
    });
    let detectors = match options.detectors {
        Some(d) if !d.is_empty() => d,
        // Sensors only: no model to load.
        _ if (config.cameras.is_empty() && catalog_cameras.is_none()) || is_scorer => Vec::new(),
        _ => build_detectors(config)?,
    };
    skynet_ingest::init()?;
    // Each platform's endpoint listens from the start (lower platforms register, catalogs
    // are listed), whether or not any of its channels is analysed; a failure is logged and
    // its channels' sources retry it.
    // Each is a component of `/readyz` (`platform <id>`, kind `platform`) and a row of the
    // console's Sources view.
    // The channels placed while running by their catalog position (`catalog.rs`).
    let placed_channels = catalog::Placed::default();
    for platform in config.platforms.iter().filter(|_| !is_scorer) {
        let id = platform.config.id().to_string();
        platform
            .config
            .attach_health(health.register(skynet_ingest::gb28181::health_name(&id), "platform"));
        if let Some(console) = &console {
            console::register_platform(console, platform, &placed_channels);
        }
        platforms::register_report(&services, platform, &config.cameras, &placed_channels);
        if let Err(error) = platform.config.start() {
            tracing::error!(platform = %platform.config.id(), %error, "platform endpoint did not start");
        }
    }
    let outbox = Outbox::open(&config.outbox)?;
    // A state this build cannot read (another version, or damaged) stops the start: going on
    // from nothing would leave the incidents it held open downstream for ever.
    // A scorer's cells come from KV `skynet_cells`, whoever owned them before.
    let restored = if is_scorer {
        None
    } else {
        state::restore(config, &outbox)?
    };
    // The cameras of the state before this start, and the devices with an open fault
    // incident (a camera that never gave a frame has no clock): a platform channel placed
    // then may be placed again, or not (`catalog.rs`).
    let restored_cameras: std::collections::BTreeSet<String> = restored
        .as_ref()
        .map(|r| {
            let faulty = r.engine.faulty_devices().into_iter();
            r.state
                .cameras
                .keys()
                .cloned()
                .chain(faulty.map(|(source, _, _)| source.id.to_string()))
                .collect()
        })
        .unwrap_or_default();
    // The sensor stage's rules go on from their saved memory too (streaks across a restart).
    let restored_sensor_rules = restored
        .as_ref()
        .map(|s| s.state.sensor_rules.clone())
        .unwrap_or_default();
    // An edge delivers nothing: its evidence goes to the scorers, which own the sinks.
    let sink_names: Vec<String> = config
        .sinks
        .iter()
        .filter(|_| !is_edge)
        .map(|s| s.name.clone())
        .collect();
    // Retention runs on a thread of its own (never on the commit thread), with the disk watch.
    let pruner = services::start_pruner(config, &health, sink_names)?;
    // The events' source: the node, or in a cluster the cluster (the risk engine's name).
    let committer = Committer::new(&config.risk.node, outbox);
    let deliveries = start_deliveries(config, &services, &committer, !is_edge)?;

    // Evidence retention: old snapshots deleted hourly, on a thread of its own.
    let sweeper = start_sweeper(config)?;

    // Commit: the outbox owns incidents from here on.
    let (commit_queue, commit_rx) =
        stage_queue::<commit::Commit>("commits", "risk", 64, OverloadPolicy::Block);
    let commit_thread = {
        let (stop, fatal, counters) = (shutdown.clone(), fatal.clone(), Arc::clone(&counters));
        let stage_health = health.register("outbox", "stage");
        let reported = stage_health.clone();
        let console = console.clone();
        spawn_stage("outbox", stage_health, &fatal.clone(), move || {
            commit::run(
                committer,
                &commit_rx,
                &reported,
                &stop,
                &fatal,
                &counters,
                console.as_deref(),
            )
        })?
    };

    // Rules and risk: one thread, each camera's frames in order on its own clock.
    let (analysed_queue, analysed_rx) =
        stage_queue::<detect::Detected>("analysed", "detect", 64, OverloadPolicy::Block);
    let mut watermarks = Vec::new();
    for camera in config.cameras.iter().filter(|_| !is_scorer) {
        watermarks.push(camera.source.watermark());
    }
    // Kept to tell what footage each camera gave (the clones share the clock).
    let camera_clocks: Vec<(DeviceId, skynet_core::Watermark)> = config
        .cameras
        .iter()
        .zip(&watermarks)
        .map(|(camera, clock)| (camera.id.clone(), clock.clone()))
        .collect();
    // Camera state changes, for the offline check in the risk stage. Rare: a small queue
    // is plenty, and a full one loses only notifications (the state stays in the table).
    let (camera_events, camera_events_rx) = crossbeam_channel::bounded::<CameraEvent>(1024);
    let mut rules_and_risk = rules::RulesAndRisk::new(
        config,
        &watermarks,
        restored,
        commit_queue,
        Arc::clone(&counters),
        wait_for_shutdown.then(|| shutdown.clone()),
    )
    .with_camera_events(camera_events_rx);
    // Hot reload's rebuilt rules, and cameras that join while running, reach the rules
    // stage between frames.
    let mut rules_control = None;
    if reload.is_some() || catalog_cameras.is_some() {
        let (control, control_rx) = crossbeam_channel::bounded(16);
        rules_and_risk = rules_and_risk.with_control(control_rx);
        rules_control = Some(control);
    }
    if catalog_cameras.is_some() {
        let platforms = config.platforms.clone();
        rules_and_risk = rules_and_risk.with_late_cameras(Box::new(move |id| {
            platforms.iter().any(|p| p.config.may_place(id))
        }));
    }
    // An edge runs a camera only while it holds the camera's lease among the live edges.
    let mut camera_claims = None;
    if let (Some(node), Some(publisher)) = (&cluster, publisher) {
        let claims = edge::CameraClaims::start(node, config)?;
        rules_and_risk = rules_and_risk.for_edge(Box::new(publisher), claims.runnable());
        camera_claims = Some(claims);
    }
    // The console's camera tiles: the latest frames, drawn on a thread of their own.
    let mut preview_thread = None;
    if let Some(console) = &console {
        let (preview, handle) =
            console::spawn_preview(config, Arc::clone(console), shutdown.clone())?;
        rules_and_risk = rules_and_risk.with_preview(preview);
        preview_thread = Some(handle);
    }
    // Sensors: the MQTT connection on the runtime, validation and rules on their own thread.
    let mut sensor_feed = None;
    let mut bus_readings = None;
    if let (Some(mqtt), skynet_cluster::Role::Edge) = (&config.mqtt, options.role) {
        // An edge validates and publishes on the bus; the scorers run the sensor rules.
        let node = cluster.as_ref().ok_or_else(|| {
            PipelineError::Cluster("an edge needs [cluster] url for its sensors".into())
        })?;
        sensor_feed = Some(readings::start_edge(
            mqtt,
            &config.sensors,
            node,
            &config.cluster,
            &health,
            &shutdown,
        )?);
    } else if let (Some(mqtt), true) = (&config.mqtt, is_scorer) {
        // A scorer runs the sensor rules of its cells on the readings the edges published.
        let (sensor_events, sensor_events_rx) =
            crossbeam_channel::bounded::<sensors::SensorEvent>(4096);
        let (readings, feed) = readings::start_from_bus(
            &services.runtime(),
            mqtt,
            &config.sensors,
            &health,
            &shutdown,
            sensor_events,
            console.clone(),
            Default::default(),
        )?;
        bus_readings = Some(readings);
        sensor_feed = Some(feed);
        rules_and_risk = rules_and_risk.with_sensor_events(
            sensor_events_rx,
            config
                .sensors
                .iter()
                .map(|s| DeviceId::new(s.spec.id.as_str()))
                .collect(),
        );
    } else if let Some(mqtt) = &config.mqtt {
        let (sensor_events, sensor_events_rx) =
            crossbeam_channel::bounded::<sensors::SensorEvent>(4096);
        sensor_feed = Some(sensors::start(
            &services.runtime(),
            mqtt,
            &config.sensors,
            &health,
            &shutdown,
            sensor_events,
            console.clone(),
            restored_sensor_rules,
        )?);
        rules_and_risk = rules_and_risk.with_sensor_events(
            sensor_events_rx,
            config
                .sensors
                .iter()
                .map(|s| DeviceId::new(s.spec.id.as_str()))
                .collect(),
        );
    }
    // A scorer: its cells by rendezvous over the live scorers, their evidence from the bus.
    let mut scorer = None;
    if let Some(node) = cluster.as_ref().filter(|_| is_scorer) {
        let (parts, intake) = scorer::start(config, node, &shutdown, bus_readings.take())?;
        rules_and_risk = rules_and_risk.with_bus_observations(intake);
        scorer = Some(parts);
    }
    // Status changes: the case system's events (the consumer on the runtime) and people's
    // (the console), applied alike by the risk stage.
    let mut case_consumer = None;
    if config.cases.is_some() || console.is_some() {
        let (feedback, feedback_rx) = crossbeam_channel::bounded(1024);
        if let Some(cases) = &config.cases {
            let (mut cases, mut to) = (cases.clone(), feedback.clone());
            if let Some(scorer) = &scorer {
                // Every scorer sees every status event (a consumer of its own) and keeps
                // those of the incidents in its cells; the others wait a while for a cell
                // that moves to it. A new scorer's consumer starts at the events to come:
                // those retained are its peers' (and each would wait out its while here).
                cases.durable = format!("{}-{}", cases.durable, config.node);
                cases.deliver_new = true;
                let (filtered, filtered_rx) = crossbeam_channel::bounded(1024);
                let failover =
                    Duration::from_secs_f64(config.cluster.failover_s.clamp(1.0, 3600.0));
                scorer::filter_case_feedback(
                    filtered_rx,
                    to,
                    Arc::clone(&scorer.incidents),
                    scorer::CaseWait::of(failover),
                )?;
                to = filtered;
            }
            case_consumer = Some(skynet_emit::spawn_case_consumer(
                &services.runtime(),
                cases,
                to,
                health.register("cases", "source"),
                shutdown.clone(),
            ));
        }
        if let Some(console) = &console {
            console::connect_status(console, feedback);
        }
        rules_and_risk =
            rules_and_risk.with_case_feedback(cases::CaseDesk::new(config, feedback_rx)?);
    }
    // Patrols: their cameras' visits and rounds reach the rules stage here.
    let (patrol_events, patrol_events_rx) = crossbeam_channel::unbounded();
    let patrol_cameras = config.cameras.iter().any(|c| c.patrol.is_some()) && !is_scorer;
    if patrol_cameras {
        rules_and_risk = rules_and_risk.with_patrols(patrol_events_rx);
        if let Some(console) = &console {
            for patrol in &config.patrols {
                console.register_patrol(skynet_serve::console::PatrolRegistration {
                    name: patrol.name.clone(),
                    every_s: patrol.every_s,
                    dwell_s: patrol.dwell_s,
                    max_concurrent: patrol.max_concurrent,
                    cameras: config
                        .cameras
                        .iter()
                        .filter(|c| c.patrol.as_deref() == Some(patrol.name.as_str()))
                        .map(|c| c.id.clone())
                        .collect(),
                });
            }
        }
    }
    let risk_thread = spawn_stage(
        "risk",
        health.register("risk", "stage"),
        &fatal,
        move || {
            // Err only means the commit stage is gone; it reports its own failure.
            let _ = rules_and_risk.run(&analysed_rx);
        },
    )?;

    // Sources: one supervised thread and one queue per camera. Frames come scaled to the
    // model's input size, at each camera's analysis rate.
    let starter = CameraStarter {
        config: Arc::new(config.clone()),
        console: console.clone(),
        camera_events: camera_events.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
        counters: Arc::clone(&counters),
        restartable: reload.is_some(),
        late: false,
    };
    let (inputs, mut sources, restarts, patrol_runs) =
        start_cameras(&starter, config, watermarks, camera_claims.as_ref())?;
    // Patrols: one thread each, opening their cameras in rounds.
    sources.extend(patrol::start(
        config,
        patrol_runs,
        &patrol_events,
        &shutdown,
        &counters,
    )?);
    drop(patrol_events);
    // Hot reload (`skynet run`): SIGHUP or the watched file; stops with the pipeline, and
    // hands each camera its stop signal (a restartable source has one of its own).
    // Detection workers take the cameras that join while running from here.
    let mut joining_inputs = Vec::new();
    let mut joining = Vec::new();
    if catalog_cameras.is_some() {
        for _ in 0..detectors.len() {
            let (tx, rx) = crossbeam_channel::bounded(64);
            joining_inputs.push(tx);
            joining.push(rx);
        }
    }
    // Channels placed by their catalog position: cameras started while running.
    let catalog = match (catalog_cameras, &rules_control) {
        (Some(cameras), Some(rules)) => Some(catalog::start(catalog::CatalogPlacement {
            platforms: config.platforms.clone(),
            cameras: Arc::clone(cameras),
            configured: config.cameras.iter().map(|c| c.id.clone()).collect(),
            // Hot reload restarts the configured cameras' sources only: a placed camera's
            // source stops with the pipeline's stop signal.
            starter: CameraStarter {
                restartable: false,
                late: true,
                ..starter.clone()
            },
            rules: rules.clone(),
            detectors: joining_inputs,
            placed: placed_channels.clone(),
            restored: restored_cameras,
            shutdown: shutdown.clone(),
        })?),
        _ => None,
    };
    drop(starter);
    let reloader = match (reload, rules_control) {
        (Some(options), Some(rules)) => Some(reload::start(reload::Reloader {
            options,
            running: config.clone(),
            cameras: config
                .cameras
                .iter()
                .zip(&inputs)
                .zip(restarts)
                .map(|((camera, input), restart)| reload::CameraHandle {
                    id: camera.id.clone(),
                    filter: input.filter(),
                    restart,
                })
                .collect(),
            rules,
            console: console.clone(),
            shutdown: shutdown.clone(),
        })?),
        _ => None,
    };

    // Detection: each worker serves every camera queue, fairly.
    let detect_threads = start_detectors(
        config,
        detectors,
        &inputs,
        joining,
        &analysed_queue,
        &health,
        &fatal,
        &counters,
    )?;
    drop((inputs, analysed_queue, camera_events));

    let mut failed_cameras = join_sources(sources);
    if let Some(catalog) = catalog {
        // A platform is a live source: its channels may join until the node is stopped.
        while !shutdown.is_triggered() {
            std::thread::sleep(POLL);
        }
        failed_cameras.extend(join_sources(catalog.stop()));
    }
    if let Some(claims) = camera_claims {
        // No camera runs here any more: the other edges take them at once, not after the
        // leases expire (what is in flight still drains and is published).
        claims.stop();
    }
    if let Some(reloader) = reloader {
        // Every source has ended: nothing is left to reload.
        reloader.stop();
    }
    tracing::info!("all sources ended; draining the pipeline");
    for handle in detect_threads {
        let _ = handle.join();
    }
    if let Some(feed) = &mut sensor_feed {
        // Sensors drain first: the connection stops taking messages at the stop signal (now,
        // when the run ends with its files), and the sensor thread ends once it has handed
        // the risk stage what was queued; risk applies it, and its last commit acknowledges
        // it to the broker. Only then do risk and commit stop.
        if !wait_for_shutdown {
            shutdown.trigger();
        }
        if let Some(thread) = feed.thread.take() {
            let _ = thread.join();
        }
    }
    let _ = risk_thread.join();
    if let Some(consumer) = case_consumer {
        // Status events not yet committed are not acknowledged: they come again next start.
        consumer.abort();
    }
    let _ = commit_thread.join();
    if let Some(scorer) = scorer {
        // The cells the last commits changed go to KV once the sinks have them (bounded).
        scorer.stop();
    }
    if let Some(feed) = sensor_feed {
        // Every commit is stored (or given up): the connection sends the last
        // acknowledgements, says `offline` and disconnects.
        shutdown.trigger();
        if !feed.wait_for_connection(Duration::from_secs(5)) {
            tracing::warn!(
                "the MQTT connection did not finish in time; unacknowledged readings come again on the next start"
            );
        }
    }
    if wait_for_shutdown && !shutdown.is_triggered() {
        tracing::info!("every source has ended; delivering and serving until SIGINT or SIGTERM");
        while !shutdown.is_triggered() {
            std::thread::sleep(POLL);
        }
    }
    for (sink, pending) in deliveries.shutdown(DRAIN_DEADLINE) {
        tracing::warn!(sink = %sink, pending, "sink still behind at shutdown; the events stay in the outbox for the next start");
    }

    if let Some(handle) = preview_thread {
        // It ends with the rules stage's sender, or at the stop signal.
        let _ = handle.join();
    }
    if let Some(console) = &console {
        // Status changes made from now on have no stage to apply them.
        console.disconnect_status();
        // The last anchor for `skynet audit verify --head`, in the shipped log.
        console.log_audit_head("shutdown");
    }
    pruner.stop();
    if let Some(cluster) = cluster {
        // Others take over this node's share at once, not after the expiry.
        cluster.leave();
    }
    if let Some((stop, handle)) = sweeper {
        drop(stop);
        let _ = handle.join();
    }

    if let Some((stage, cause)) = fatal.take() {
        return Err(PipelineError::StageFailed { stage, cause });
    }
    Ok(RunSummary {
        frames_decoded: counters.decoded.load(Ordering::Relaxed),
        frames_analysed: counters.analysed.load(Ordering::Relaxed),
        frames_inferred: counters.inferred.load(Ordering::Relaxed),
        frames_dropped: counters.dropped.load(Ordering::Relaxed),
        frames_late: counters.late.load(Ordering::Relaxed),
        observations: counters.observations.load(Ordering::Relaxed),
        incident_revisions: counters.incidents.load(Ordering::Relaxed),
        failed_cameras,
        camera_frames: camera_clocks
            .into_iter()
            .map(|(camera, clock)| (camera, clock.frames_span()))
            .collect(),
        elapsed: started.elapsed(),
    })
}

/// Builds each sink and starts its delivery task, each from its own outbox cursor.
fn start_deliveries(
    config: &PipelineConfig,
    services: &Services,
    committer: &Committer,
    with_sinks: bool,
) -> Result<skynet_emit::Deliveries, PipelineError> {
    let mut sinks = Vec::with_capacity(config.sinks.len());
    for spec in config.sinks.iter().filter(|_| with_sinks) {
        sinks.push((
            spec.config
                .build(&skynet_emit::SinkBuildContext { name: &spec.name })?,
            services.health.register(&spec.name, "sink"),
        ));
    }
    let deliveries = skynet_emit::spawn_deliveries_with(
        &services.runtime(),
        &config.outbox,
        sinks,
        committer.wake_handle(),
        skynet_emit::DeliveryOptions {
            lag_alarm_events: config.outbox_lag_alarm_events,
        },
    );
    Ok(deliveries)
}

/// The snapshot sweeper's thread and the handle that stops it, when snapshots are kept.
fn start_sweeper(
    config: &PipelineConfig,
) -> Result<Option<(StopOnDrop, JoinHandle<()>)>, PipelineError> {
    if !config.evidence.enabled {
        return Ok(None);
    }
    let stop = StopOnDrop(Shutdown::new());
    let handle = skynet_snapshot::spawn_sweeper_with_budget(
        config.evidence.dir.clone(),
        config.evidence.retain,
        config.evidence.max_bytes,
        stop.0.clone(),
    )
    .map_err(|source| PipelineError::Spawn {
        stage: "evidence-sweep".into(),
        source,
    })?;
    Ok(Some((stop, handle)))
}

/// Each camera's source thread; `false` from it: the camera failed for good.
type SourceThreads = Vec<(DeviceId, JoinHandle<bool>)>;

/// Waits for each source thread to end; returns the cameras that failed for good.
fn join_sources(sources: SourceThreads) -> Vec<DeviceId> {
    let mut failed = Vec::new();
    for (camera, handle) in sources {
        match handle.join() {
            Ok(true) => {}
            Ok(false) => failed.push(camera),
            Err(panic) => {
                tracing::error!(camera = %camera, cause = %panic_message(panic.as_ref()), "source thread panicked");
                failed.push(camera);
            }
        }
    }
    failed
}

/// The detect stage's inputs, the source threads, and (with hot reload) how to restart each
/// camera's source on its own.
type Cameras = (
    Vec<detect::CameraInput>,
    SourceThreads,
    Vec<Option<reload::SourceRestart>>,
    Vec<patrol::PatrolCameraRun>,
);

/// Sources: one supervised thread and one queue per camera. Frames come scaled to the
/// model's input size, at each camera's analysis rate. Returns the detect stage's inputs and
/// the source threads.
fn start_cameras(
    starter: &CameraStarter,
    config: &PipelineConfig,
    watermarks: Vec<skynet_core::Watermark>,
    claims: Option<&edge::CameraClaims>,
) -> Result<Cameras, PipelineError> {
    let mut inputs = Vec::new();
    let mut sources: SourceThreads = Vec::new();
    let mut restarts = Vec::new();
    let mut patrol_runs = Vec::new();
    for (camera, watermark) in config.cameras.iter().zip(watermarks) {
        let gate = claims.map(|c| c.gate(camera.id.as_str()));
        let started = starter.start(camera, watermark, gate)?;
        inputs.push(started.input);
        restarts.push(started.restart);
        sources.extend(started.source);
        patrol_runs.extend(started.patrol);
    }
    Ok((inputs, sources, restarts, patrol_runs))
}

/// One camera started: the detect stage's input, and its source thread, or its patrol's
/// run (opened for each visit).
struct StartedCamera {
    input: detect::CameraInput,
    source: Option<(DeviceId, JoinHandle<bool>)>,
    restart: Option<reload::SourceRestart>,
    patrol: Option<patrol::PatrolCameraRun>,
}

/// What starting a camera needs: the configured cameras at the start, and a platform
/// channel placed while running (`catalog.rs`).
#[derive(Clone)]
struct CameraStarter {
    config: Arc<PipelineConfig>,
    console: Option<Arc<skynet_serve::console::Console>>,
    camera_events: crossbeam_channel::Sender<CameraEvent>,
    health: skynet_core::Health,
    shutdown: Shutdown,
    counters: Arc<Counters>,
    /// With hot reload: a camera's source may be restarted on its own.
    restartable: bool,
    /// Starts cameras that join while running (`catalog.rs`), not those of the config.
    late: bool,
}

impl CameraStarter {
    fn start(
        &self,
        camera: &crate::config::CameraSpec,
        watermark: skynet_core::Watermark,
        gate: Option<edge::CameraGate>,
    ) -> Result<StartedCamera, PipelineError> {
        let config = self.config.as_ref();
        let max_size = Some((config.model.input.width, config.model.input.height));
        let policy = if camera.is_live() {
            OverloadPolicy::DropOldest
        } else {
            OverloadPolicy::Block
        };
        let (queue, rx) = stage_queue("frames", camera.id.to_string(), config.queue, policy);
        let objects = ObjectsInView::default();
        let filter = skynet_detect::DetectionFilter::new(
            &camera.id,
            &camera.allowed_classes,
            &config.classes,
            &camera.classes,
            config.detector.threshold,
        );
        if let Some(console) = &self.console {
            console.register_camera(skynet_serve::console::CameraRegistration {
                id: camera.id.clone(),
                grid: camera.grid.to_string(),
                owner: camera.owner,
                thresholds: filter.thresholds(),
            });
        }
        let mut input = detect::CameraInput::new(
            &camera.id,
            rx,
            objects.clone(),
            filter,
            camera.inference_interval.clone(),
        )
        .keeping_images(config.evidence.enabled);
        // A patrol camera's look keeps a frame a second with its pixels (the snapshot).
        if self.console.is_some() || (camera.patrol.is_some() && config.evidence.enabled) {
            input = input.with_preview();
        }
        let camera_health = CameraHealth::new(
            camera.id.clone(),
            self.health.register(camera.id.as_str(), "source"),
            Some(self.camera_events.clone()),
        );
        let mut out = FrameOutput::new(queue, watermark).with_health(camera_health.clone());
        if camera.motion.enabled {
            out = out.with_gate(MotionGate::new(camera.motion.clone(), objects));
        }
        if camera.patrol.is_some() {
            // Opened by its patrol for each visit (`patrol.rs`), not run all the time.
            return Ok(StartedCamera {
                input,
                source: None,
                restart: None,
                patrol: Some(patrol::PatrolCameraRun {
                    spec: camera.clone(),
                    out,
                    health: camera_health,
                }),
            });
        }
        let (stop, counters, spec) = (
            self.shutdown.clone(),
            Arc::clone(&self.counters),
            camera.clone(),
        );
        // Event clips: the ring its encoded stream fills, when clips are on for it.
        // A camera that joined while running has no clips (the clip stage knows the
        // configured cameras), and live view only without privacy masks: the live view's
        // transcoding, which blurs them, is set up for the configured cameras. (A ring is
        // what a viewer opens, so none is made where its stream would go out unmasked.)
        let clip_ring = match self.late {
            false => {
                clips::ring_for(&config.evidence, camera).or_else(|| live::ring_for(config, camera))
            } // live view (issue 25)
            true if camera.privacy_masks.is_empty() => live::ring_for(config, camera),
            true => None,
        };
        // With hot reload, a camera's source may be restarted on its own (a new `uri`), into
        // the same queue and clock; an edge's camera runs under its lease, and is not.
        let (restart, restarted) = match self.restartable && gate.is_none() {
            true => {
                let (restart, restarted) = reload::source_restart(&self.shutdown);
                (Some(restart), Some(restarted))
            }
            false => (None, None),
        };
        let handle = std::thread::Builder::new()
            .name(format!("source-{}", camera.id))
            .spawn(move || {
                let mut spec = spec;
                let mut gate = gate;
                loop {
                    let delivery = FrameDelivery {
                        fps: spec.fps,
                        max_size,
                        clip_ring: clip_ring.clone(),
                    };
                    let stop = restarted.as_ref().map_or(stop.clone(), |r| r.stop());
                    let (ok, built) = source_stage(
                        &spec,
                        &delivery,
                        &out,
                        &stop,
                        &camera_health,
                        &counters,
                        gate.take(),
                    );
                    match restarted.as_ref().and_then(|r| r.next()) {
                        Some(next) => {
                            tracing::info!(camera = %spec.id, uri = %next.source.display_uri(), "source restarted with the reloaded config");
                            spec = next;
                        }
                        None => {
                            // Nothing follows: the camera's clock stops where its frames
                            // stopped.
                            if built {
                                out.watermark().finish();
                            }
                            return ok;
                        }
                    }
                }
            })
            .map_err(|source| PipelineError::Spawn {
                stage: format!("source {}", camera.id),
                source,
            })?;
        Ok(StartedCamera {
            input,
            source: Some((camera.id.clone(), handle)),
            restart,
            patrol: None,
        })
    }
}

/// Detection: each worker serves every camera queue, fairly.
#[allow(clippy::too_many_arguments)]
fn start_detectors(
    config: &PipelineConfig,
    detectors: Vec<Box<dyn Detector>>,
    inputs: &[detect::CameraInput],
    joining: Vec<crossbeam_channel::Receiver<detect::CameraInput>>,
    analysed_queue: &skynet_core::StageQueue<detect::Detected>,
    health: &skynet_core::Health,
    fatal: &Fatal,
    counters: &Arc<Counters>,
) -> Result<Vec<JoinHandle<()>>, PipelineError> {
    let mut detect_threads = Vec::new();
    let mut joining = joining.into_iter();
    for (i, detector) in detectors.into_iter().enumerate() {
        let worker = detect::InferenceWorker {
            name: format!("detect-{i}"),
            detector,
            inputs: inputs.to_vec(),
            out: analysed_queue.clone(),
            counters: Arc::clone(counters),
            max_wait: config.batch_wait,
            joining: joining.next(),
        };
        let stage_health = health.register(format!("detect-{i}"), "stage");
        detect_threads.push(spawn_stage(
            &format!("detect-{i}"),
            stage_health,
            fatal,
            move || worker.run(),
        )?);
    }
    Ok(detect_threads)
}

/// Runs one camera under supervision. Returns false when the camera failed for good, and
/// whether its source could be built at all.
fn source_stage(
    camera: &crate::config::CameraSpec,
    delivery: &FrameDelivery,
    out: &FrameOutput,
    stop: &Shutdown,
    health: &CameraHealth,
    counters: &Counters,
    gate: Option<edge::CameraGate>,
) -> (bool, bool) {
    let span =
        tracing::info_span!("source", camera = %camera.id, uri = %camera.source.display_uri());
    let _entered = span.enter();
    let cx = skynet_ingest::SourceBuildContext {
        camera: &camera.id,
        delivery,
    };
    let mut source = match camera.source.build(&cx) {
        Ok(source) => source,
        Err(e) => {
            health.failed(e.to_string());
            tracing::error!(error = %e, "camera could not be built; the other cameras go on");
            return (false, false);
        }
    };
    let policy = camera.source.retry_policy();
    let result = match gate {
        None => skynet_ingest::run_supervised(source.as_mut(), out, stop, health, &policy),
        // An edge's camera: run while this node holds its lease, stopped when it moves.
        Some(mut gate) => gate.run(
            stop,
            || {
                // Not run here for now: ended as far as this node's health goes.
                if health.state() != skynet_ingest::CameraState::Stopped {
                    health.stopped();
                }
            },
            |camera_stop| {
                skynet_ingest::run_supervised(source.as_mut(), out, camera_stop, health, &policy)
            },
        ),
    };
    let stats = source.stats();
    counters.decoded.fetch_add(stats.decoded, Ordering::Relaxed);
    counters.dropped.fetch_add(stats.dropped, Ordering::Relaxed);
    let ok = match result {
        Ok(exit) => {
            tracing::info!(
                ?exit,
                decoded = stats.decoded,
                dropped = stats.dropped,
                "source finished"
            );
            true
        }
        Err(IngestError::DownstreamClosed) => {
            // A later stage has gone; it reports its own failure.
            tracing::warn!(
                decoded = stats.decoded,
                "source stopped: the detection stage has gone"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "camera failed for good; the other cameras go on");
            false
        }
    };
    (ok, true)
}
