//! The running pipeline: threads joined by bounded queues.
//!
//! ```text
//!  camera source ─┐ (per-camera queue: drop-oldest when live, wait when replaying a file)
//!  camera source ─┼─► detect workers (N ONNX sessions) ─► rules + risk ─► outbox ─► sinks
//!  camera source ─┘                                     (in order per camera)  (never drops)
//! ```
//!
//! A failing camera ends only its own thread. Shutdown stops the sources; every later stage
//! then drains what is in flight, the risk engine flushes, and the outbox relay delivers
//! everything before `run` returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::Select;
use skynet_core::{
    AnalysedFrame, CameraId, Frame, Incident, OverloadPolicy, QueueClosed, Shutdown, StageQueue,
    StageReceiver, stage_queue,
};
use skynet_detect::{
    CameraRules, DetectError, Detector, ImageView, OnnxDetector, OnnxRuntime, ZoneIntrusionRule,
};
use skynet_emit::{EmitError, IncidentSink, JsonLinesSink, Outbox, Relay, StdoutSink};
use skynet_ingest::{FrameSource, GstSource, GstSourceOptions, IngestError};
use skynet_risk::{GridRiskEngine, RiskEngine};

use crate::config::{CameraSpec, PipelineConfig, RuleSpec, SinkKind};
use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("could not start the {stage} thread: {source}")]
    Spawn {
        stage: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} stage panicked")]
    Panicked(String),
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Triggered to stop; sources stop first and everything in flight is flushed.
    pub shutdown: Shutdown,
}

/// What a run did, for the CLI's last log line, tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub frames_decoded: u64,
    pub frames_analysed: u64,
    pub frames_dropped: u64,
    pub observations: u64,
    pub incident_revisions: u64,
    pub failed_cameras: Vec<CameraId>,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    decoded: AtomicU64,
    analysed: AtomicU64,
    dropped: AtomicU64,
    observations: AtomicU64,
    incidents: AtomicU64,
}

const POLL: Duration = Duration::from_millis(100);
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Everything that can fail before a frame flows: runtime, model sessions, outbox, sinks.
/// Built first so a bad set-up fails fast with one clear error.
struct Prepared {
    detectors: Vec<OnnxDetector>,
    relay: Relay,
}

fn prepare(config: &PipelineConfig) -> Result<Prepared, PipelineError> {
    let runtime = OnnxRuntime::init(config.onnxruntime.as_deref(), &[paths::data_dir()])?;
    let detectors = (0..config.workers)
        .map(|_| OnnxDetector::new(&runtime, Arc::clone(&config.model), config.detector.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let outbox = Outbox::open(&config.outbox)?;
    let sinks: Vec<Box<dyn IncidentSink>> = config
        .sinks
        .iter()
        .map(|s| -> Box<dyn IncidentSink> {
            match (s.kind, &s.path) {
                (SinkKind::Jsonl, Some(path)) => Box::new(JsonLinesSink::new(&s.name, path)),
                _ => Box::new(StdoutSink::new(&s.name)),
            }
        })
        .collect();
    Ok(Prepared {
        detectors,
        relay: Relay::new(&config.node, outbox, sinks).with_retention(config.outbox_retention),
    })
}

/// Runs until every source has ended or `options.shutdown` is triggered, then drains.
pub fn run(config: &PipelineConfig, options: RunOptions) -> Result<RunSummary, PipelineError> {
    let started = std::time::Instant::now();
    let Prepared { detectors, relay } = prepare(config)?;
    skynet_ingest::init()?;
    let counters = Arc::new(Counters::default());
    let shutdown = options.shutdown;
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(|source| PipelineError::Spawn {
                stage: name,
                source,
            })
    };

    // Emit: the outbox owns incidents from here on.
    let (incident_queue, incidents_rx) =
        stage_queue::<Incident>("incidents", "risk", 64, OverloadPolicy::Block);
    let emit = spawn(
        "emit".into(),
        Box::new(move || emit_stage(relay, incidents_rx)),
    )?;

    // Rules and risk: one thread, so every camera's frames are seen in order.
    let (analysed_queue, analysed_rx) =
        stage_queue::<AnalysedFrame>("analysed", "detect", 64, OverloadPolicy::Block);
    let mut rules_and_risk = RulesAndRisk::new(
        config,
        incident_queue,
        detectors.len(),
        Arc::clone(&counters),
    );
    let risk = spawn(
        "rules-risk".into(),
        Box::new(move || {
            // Err only means the emit stage is gone; it reports its own failure.
            let _ = rules_and_risk.run(&analysed_rx);
        }),
    )?;

    // Sources: one thread and one queue per camera.
    let mut frame_receivers = Vec::new();
    let mut sources: Vec<(CameraId, JoinHandle<bool>)> = Vec::new();
    for camera in &config.cameras {
        let policy = if camera.is_live() {
            OverloadPolicy::DropOldest
        } else {
            OverloadPolicy::Block
        };
        let (queue, rx) =
            stage_queue::<Frame>("frames", camera.id.to_string(), config.queue, policy);
        frame_receivers.push(CameraInput::new(&camera.id, rx));
        let mut source = GstSource::new(
            camera.id.clone(),
            GstSourceOptions {
                uri: camera.uri.clone(),
                max_frames: camera.max_frames,
                realtime: camera.realtime,
                convert_threads: 1,
            },
        );
        let (stop, counters) = (shutdown.clone(), Arc::clone(&counters));
        let handle = std::thread::Builder::new()
            .name(format!("source-{}", camera.id))
            .spawn(move || source_stage(&mut source, &queue, &stop, &counters))
            .map_err(|source| PipelineError::Spawn {
                stage: format!("source {}", camera.id),
                source,
            })?;
        sources.push((camera.id.clone(), handle));
    }

    // Detection: each worker serves every camera queue, fairly.
    let mut detect_handles = Vec::new();
    for (i, detector) in detectors.into_iter().enumerate() {
        let (receivers, out, counters) = (
            frame_receivers.clone(),
            analysed_queue.clone(),
            Arc::clone(&counters),
        );
        detect_handles.push(spawn(
            format!("detect-{i}"),
            Box::new(move || detect_stage(detector, receivers, out, &counters)),
        )?);
    }
    drop((frame_receivers, analysed_queue));

    let mut failed_cameras = Vec::new();
    for (camera, handle) in sources {
        match handle.join() {
            Ok(true) => {}
            Ok(false) => failed_cameras.push(camera),
            Err(_) => {
                tracing::error!(camera = %camera, "source thread panicked");
                failed_cameras.push(camera);
            }
        }
    }
    tracing::info!("all sources ended; draining the pipeline");
    for (i, handle) in detect_handles.into_iter().enumerate() {
        handle
            .join()
            .map_err(|_| PipelineError::Panicked(format!("detect-{i}")))?;
    }
    risk.join()
        .map_err(|_| PipelineError::Panicked("rules-risk".into()))?;
    emit.join()
        .map_err(|_| PipelineError::Panicked("emit".into()))?;

    Ok(RunSummary {
        frames_decoded: counters.decoded.load(Ordering::Relaxed),
        frames_analysed: counters.analysed.load(Ordering::Relaxed),
        frames_dropped: counters.dropped.load(Ordering::Relaxed),
        observations: counters.observations.load(Ordering::Relaxed),
        incident_revisions: counters.incidents.load(Ordering::Relaxed),
        failed_cameras,
        elapsed: started.elapsed(),
    })
}

fn build_rules(camera: &CameraSpec) -> CameraRules {
    let rules = camera
        .rules
        .iter()
        .map(|r| -> Box<dyn skynet_detect::Rule> {
            match r {
                RuleSpec::ZoneIntrusion(spec) => Box::new(ZoneIntrusionRule::new(spec.clone())),
            }
        })
        .collect();
    CameraRules {
        camera: camera.id.clone(),
        grid: camera.grid.clone(),
        owner: camera.owner,
        rules,
    }
}

/// Returns false when the camera failed.
fn source_stage(
    source: &mut dyn FrameSource,
    queue: &StageQueue<Frame>,
    stop: &Shutdown,
    counters: &Counters,
) -> bool {
    let camera = source.camera().clone();
    let result = source.run(queue, stop);
    let stats = source.stats();
    counters.decoded.fetch_add(stats.decoded, Ordering::Relaxed);
    counters.dropped.fetch_add(stats.dropped, Ordering::Relaxed);
    match result {
        Ok(exit) => {
            tracing::info!(camera = %camera, ?exit, decoded = stats.decoded, dropped = stats.dropped, "source finished");
            true
        }
        Err(e) => {
            metrics::counter!("skynet_source_errors_total", "camera" => camera.to_string())
                .increment(1);
            tracing::error!(camera = %camera, error = %e, "camera failed; the other cameras go on");
            false
        }
    }
}

/// A camera's frame queue and the metric handles of its detection, resolved once.
#[derive(Clone)]
struct CameraInput {
    frames: StageReceiver<Frame>,
    analysed: metrics::Counter,
    errors: metrics::Counter,
}

impl CameraInput {
    fn new(camera: &CameraId, frames: StageReceiver<Frame>) -> Self {
        let label = camera.to_string();
        Self {
            frames,
            analysed: metrics::counter!("skynet_frames_analysed_total", "camera" => label.clone()),
            errors: metrics::counter!("skynet_detect_errors_total", "camera" => label),
        }
    }
}

fn detect_stage(
    mut detector: OnnxDetector,
    mut receivers: Vec<CameraInput>,
    out: StageQueue<AnalysedFrame>,
    counters: &Counters,
) {
    while !receivers.is_empty() {
        let mut select = Select::new();
        for input in &receivers {
            select.recv(input.frames.channel());
        }
        let Ok(op) = select.select_timeout(POLL) else {
            continue;
        };
        let index = op.index();
        let input = &receivers[index];
        let frame = match op.recv(input.frames.channel()) {
            Ok(frame) => {
                input.frames.took();
                frame
            }
            Err(_) => {
                // That camera's source has ended and its queue is empty.
                receivers.swap_remove(index);
                continue;
            }
        };
        let span =
            tracing::debug_span!("detect", camera = %frame.info.camera, seq = frame.info.seq);
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let detections = match ImageView::of_frame(&frame).and_then(|image| detector.detect(&image))
        {
            Ok(d) => d,
            Err(e) => {
                input.errors.increment(1);
                tracing::warn!(camera = %frame.info.camera, seq = frame.info.seq, error = %e, "frame skipped");
                continue;
            }
        };
        counters.analysed.fetch_add(1, Ordering::Relaxed);
        input.analysed.increment(1);
        let analysed = AnalysedFrame {
            info: frame.info.clone(),
            detections,
            inference: started.elapsed(),
        };
        if out.send(analysed).is_err() {
            return;
        }
    }
}

/// Restores each camera's frame order after parallel detection. A sequence number missing
/// while more frames than there are workers wait behind it was dropped upstream.
struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, AnalysedFrame>,
}

impl Reorder {
    fn push(&mut self, frame: AnalysedFrame, in_flight: usize) -> Vec<AnalysedFrame> {
        self.waiting.insert(frame.info.seq, frame);
        let mut ready = Vec::new();
        loop {
            if let Some(f) = self.waiting.remove(&self.next) {
                self.next = f.info.seq + 1;
                ready.push(f);
            } else if self.waiting.len() > in_flight {
                // The gap will not be filled: skip to the oldest frame we have.
                if let Some((&seq, _)) = self.waiting.iter().next() {
                    self.next = seq;
                }
            } else {
                return ready;
            }
        }
    }

    fn drain(&mut self) -> Vec<AnalysedFrame> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

/// One camera's state in the rules stage.
struct CameraStage {
    rules: CameraRules,
    order: Reorder,
    latency: metrics::Histogram,
}

/// Applies each camera's rules in frame order and feeds the evidence to the risk engine.
struct RulesAndRisk {
    cameras: BTreeMap<CameraId, CameraStage>,
    engine: GridRiskEngine,
    incidents: StageQueue<Incident>,
    workers: usize,
    /// The latest event time seen.
    clock: Option<DateTime<Utc>>,
    /// Live cameras let the wall clock close incidents while no frames come; a file replay
    /// runs on its own timeline only.
    wall_clock_when_idle: bool,
    counters: Arc<Counters>,
}

impl RulesAndRisk {
    fn new(
        config: &PipelineConfig,
        incidents: StageQueue<Incident>,
        workers: usize,
        counters: Arc<Counters>,
    ) -> Self {
        let cameras = config
            .cameras
            .iter()
            .map(|c| {
                let stage = CameraStage {
                    rules: build_rules(c),
                    order: Reorder { next: 0, waiting: BTreeMap::new() },
                    latency: metrics::histogram!("skynet_frame_latency_seconds", "camera" => c.id.to_string()),
                };
                (c.id.clone(), stage)
            })
            .collect();
        Self {
            cameras,
            engine: GridRiskEngine::new(config.risk.clone()),
            incidents,
            workers,
            clock: None,
            wall_clock_when_idle: config.cameras.iter().any(CameraSpec::is_live),
            counters,
        }
    }

    /// Runs until detection has stopped, then applies what waits and flushes the engine.
    /// Stops early, with `Err`, if the emit stage has gone.
    fn run(&mut self, analysed: &StageReceiver<AnalysedFrame>) -> Result<(), QueueClosed> {
        loop {
            match analysed.recv_timeout(POLL) {
                Ok(Some(frame)) => {
                    self.take(frame)?;
                    if let Some(now) = self.clock {
                        let closed = self.engine.advance(now);
                        self.emit(closed)?;
                    }
                }
                Ok(None) if self.wall_clock_when_idle => {
                    let now = self.clock.map_or_else(Utc::now, |c| c.max(Utc::now()));
                    let closed = self.engine.advance(now);
                    self.emit(closed)?;
                }
                Ok(None) => {}
                Err(QueueClosed) => break,
            }
        }
        let waiting: Vec<AnalysedFrame> = self
            .cameras
            .values_mut()
            .flat_map(|c| c.order.drain())
            .collect();
        for frame in waiting {
            self.apply(frame)?;
        }
        let flushed = self.engine.flush();
        self.emit(flushed)
    }

    fn take(&mut self, frame: AnalysedFrame) -> Result<(), QueueClosed> {
        let Some(camera) = self.cameras.get_mut(&frame.info.camera) else {
            return Ok(());
        };
        for ready in camera.order.push(frame, self.workers) {
            self.apply(ready)?;
        }
        Ok(())
    }

    fn apply(&mut self, frame: AnalysedFrame) -> Result<(), QueueClosed> {
        self.clock = Some(
            self.clock
                .map_or(frame.info.captured_at, |c| c.max(frame.info.captured_at)),
        );
        let Some(camera) = self.cameras.get_mut(&frame.info.camera) else {
            return Ok(());
        };
        camera
            .latency
            .record(frame.info.decoded_at.elapsed().as_secs_f64());
        for observation in camera.rules.apply(&frame) {
            self.counters.observations.fetch_add(1, Ordering::Relaxed);
            let _span = tracing::debug_span!("observe", camera = %observation.camera, grid = %observation.grid).entered();
            let revisions = self.engine.observe(&observation);
            self.emit(revisions)?;
        }
        Ok(())
    }

    fn emit(&self, revisions: Vec<Incident>) -> Result<(), QueueClosed> {
        for incident in revisions {
            self.counters.incidents.fetch_add(1, Ordering::Relaxed);
            self.incidents.send(incident)?;
        }
        Ok(())
    }
}

fn emit_stage(mut relay: Relay, incidents: StageReceiver<Incident>) {
    loop {
        match incidents.recv_timeout(POLL) {
            Ok(Some(incident)) => {
                let span = tracing::info_span!("emit", incident = %incident.id, grid = %incident.grid, camera = %incident.camera);
                let _entered = span.enter();
                store_until_committed(&mut relay, &incident);
                relay.pump();
            }
            Ok(None) => {
                relay.pump();
            }
            Err(QueueClosed) => break,
        }
    }
    let behind = relay.drain(DRAIN_DEADLINE);
    for (sink, pending) in behind {
        tracing::warn!(sink = %sink, pending, "sink still behind at shutdown; the events stay in the outbox for the next start");
    }
}

/// An incident is never dropped: if the outbox cannot take it (disk full, locked), retry.
fn store_until_committed(relay: &mut Relay, incident: &Incident) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match relay.store(incident) {
            Ok(_) => return,
            Err(e) => {
                metrics::counter!("skynet_outbox_retries_total").increment(1);
                tracing::error!(error = %e, retry_in = ?backoff, "outbox write failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::FrameInfo;

    fn analysed(seq: u64) -> AnalysedFrame {
        AnalysedFrame {
            info: FrameInfo {
                camera: CameraId::new("c"),
                seq,
                captured_at: DateTime::<Utc>::UNIX_EPOCH,
                decoded_at: std::time::Instant::now(),
                width: 1,
                height: 1,
            },
            detections: Vec::new(),
            inference: Duration::ZERO,
        }
    }

    fn seqs(frames: Vec<AnalysedFrame>) -> Vec<u64> {
        frames.into_iter().map(|f| f.info.seq).collect()
    }

    #[test]
    fn reorder_restores_order_and_skips_gaps_left_by_drops() {
        let mut r = Reorder {
            next: 0,
            waiting: BTreeMap::new(),
        };
        assert_eq!(seqs(r.push(analysed(1), 2)), Vec::<u64>::new());
        assert_eq!(seqs(r.push(analysed(0), 2)), vec![0, 1]);
        // 2 was dropped: once more than `in_flight` frames wait, skip it.
        assert_eq!(seqs(r.push(analysed(4), 2)), Vec::<u64>::new());
        assert_eq!(seqs(r.push(analysed(3), 2)), Vec::<u64>::new());
        assert_eq!(seqs(r.push(analysed(5), 2)), vec![3, 4, 5]);
    }
}
