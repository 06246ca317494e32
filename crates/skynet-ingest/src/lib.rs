//! Ingest stage: sources that turn camera streams into [`Frame`](skynet_core::Frame)s.
//!
//! A [`FrameSource`] runs on its own thread and pushes frames into its camera's bounded
//! queue through a [`FrameOutput`], which also moves the source's [`Watermark`].
//! [`GstSource`] decodes anything GStreamer can open: files, `http(s)://`, `rtsp://`.
//! [`run_supervised`] restarts a failing source with backoff and reports its health.
//! [`GstSourceConfig`] is the source's part of a `[[cameras]]` table.

mod camera;
pub mod clips;
mod config;
mod describe;
mod error;
pub mod gb28181;
mod gst_source;
pub mod live;
pub mod liveness;
mod motion;
pub mod onvif;
pub mod patrol;
pub mod sensor;
mod supervise;

pub use camera::{CameraEvent, CameraHealth, CameraState, CameraStatus};
pub use config::{
    BuildSource, CameraSourceFamily, DecoderChoice, FrameDelivery, GstSourceConfig,
    ReconnectConfig, SourceBuildContext, Transport,
};
pub use describe::describe_metrics;
pub use error::IngestError;
pub use gst_source::{GstSource, GstSourceOptions};
pub use motion::{GateDecision, MotionConfig, MotionGate, ObjectsInView};
pub use supervise::{RetryPolicy, run_supervised};

/// Every component kind of the ingest stage, for the binary's registry.
pub fn register(registry: &mut skynet_core::Registry) {
    config::register(registry);
    // After the default kind (`gstreamer`), which `register` above lists first.
    registry.register::<CameraSourceFamily, onvif::OnvifSourceConfig>();
    sensor::formats::register(registry);
    registry.register::<gb28181::PlatformFamily, gb28181::Gb28181PlatformConfig>();
}

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// `FrameOutput::queued` before any frame.
const NONE_QUEUED: i64 = i64::MIN;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use skynet_core::{DeviceId, Frame, QueueClosed, Shutdown, StageQueue, Watermark};

/// Why a source stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceExit {
    /// The stream ended (a file ran out).
    EndOfStream,
    /// It produced the configured maximum number of frames.
    FrameLimit,
    /// Shutdown was requested.
    Stopped,
}

/// What a source has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub decoded: u64,
    /// Frames dropped, oldest first, because detection could not keep up.
    pub dropped: u64,
}

/// Where a source sends its frames: the camera's queue, and the watermark that tells later
/// stages how far the camera's event time has got. On the way it reports the frame to the
/// camera's health and lets the camera's motion gate keep frames of a static scene from the
/// detector (counted in `skynet_frames_skipped_total{camera,reason="static"}`); frames that the
/// queue drops to make room for newer ones are counted in
/// `skynet_frames_dropped_total{camera,reason="overload"}`.
///
/// The supervisor hands each connection a copy made by [`for_connection`](Self::for_connection)
/// that tells whether that connection delivered anything.
#[derive(Debug)]
pub struct FrameOutput {
    frames: StageQueue<Frame>,
    watermark: Watermark,
    health: Option<CameraHealth>,
    gate: Option<Arc<Mutex<MotionGate>>>,
    /// Frames the gate kept from the detector so far; stamped on each frame sent, so that
    /// later stages tell skipped frames from dropped ones.
    skipped: Arc<AtomicU64>,
    counters: Arc<OnceLock<OutputCounters>>,
    sent: AtomicBool,
    /// Event time, in microseconds since the epoch, of the newest frame queued for detection
    /// (not one the gate skipped); `NONE_QUEUED` before any. An atomic: it is set per frame.
    queued: Arc<AtomicI64>,
}

#[derive(Debug)]
struct OutputCounters {
    skipped_static: metrics::Counter,
    dropped_overload: metrics::Counter,
}

impl FrameOutput {
    /// `watermark` should be `Watermark::new(true)` for a live source, so that it moves with the
    /// wall clock while the camera is quiet or reconnecting, and `Watermark::new(false)` for a
    /// file, whose event time moves only with its frames.
    pub fn new(frames: StageQueue<Frame>, watermark: Watermark) -> Self {
        Self {
            frames,
            watermark,
            health: None,
            gate: None,
            skipped: Arc::default(),
            counters: Arc::default(),
            sent: AtomicBool::new(false),
            queued: Arc::new(AtomicI64::new(NONE_QUEUED)),
        }
    }

    /// Reports every frame to `health` (running, last frame time).
    pub fn with_health(mut self, health: CameraHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Passes frames through `gate` first.
    pub fn with_gate(mut self, gate: MotionGate) -> Self {
        self.gate = Some(Arc::new(Mutex::new(gate)));
        self
    }

    /// A copy feeding the same queue, watermark, health and gate, whose
    /// [`has_sent`](Self::has_sent) starts false: the supervisor makes one per connection.
    pub fn for_connection(&self) -> Self {
        Self {
            frames: self.frames.clone(),
            watermark: self.watermark.clone(),
            health: self.health.clone(),
            gate: self.gate.clone(),
            skipped: Arc::clone(&self.skipped),
            counters: Arc::clone(&self.counters),
            sent: AtomicBool::new(false),
            queued: Arc::clone(&self.queued),
        }
    }

    /// Sends `frame` and moves the watermark to its event time; returns how many old frames
    /// were dropped to make room. A frame the motion gate skips is not queued (0 dropped).
    pub fn send(&self, mut frame: Frame) -> Result<usize, QueueClosed> {
        // Observed before the frame is queued: a stage that reads the watermark after taking
        // a frame never sees it behind that frame.
        self.watermark.observe(frame.info.captured_at);
        self.sent.store(true, Ordering::Relaxed);
        if let Some(health) = &self.health {
            health.frame();
        }
        let counters = self.counters.get_or_init(|| {
            let camera = frame.info.camera.to_string();
            OutputCounters {
                skipped_static: metrics::counter!("skynet_frames_skipped_total", "camera" => camera.clone(), "reason" => "static"),
                dropped_overload: metrics::counter!("skynet_frames_dropped_total", "camera" => camera, "reason" => "overload"),
            }
        });
        if let Some(gate) = &self.gate {
            let decision = gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decide(&frame.image, frame.info.captured_at);
            if !decision.passes() {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                counters.skipped_static.increment(1);
                // Nothing reads this camera any more: say so even for skipped frames.
                if !self.frames.has_consumers() {
                    return Err(QueueClosed);
                }
                return Ok(0);
            }
        }
        frame.info.skipped = self.skipped.load(Ordering::Relaxed);
        let at = frame.info.captured_at;
        let dropped = self.frames.send(frame)?;
        self.queued.store(at.timestamp_micros(), Ordering::Relaxed);
        if dropped > 0 {
            counters.dropped_overload.increment(dropped as u64);
        }
        Ok(dropped)
    }

    /// Reports that a connected stream has delivered nothing for a while.
    pub fn stalled(&self, reason: impl Into<String>) {
        if let Some(health) = &self.health {
            health.stalled(reason);
        }
    }

    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    pub fn health(&self) -> Option<&CameraHealth> {
        self.health.as_ref()
    }

    /// Event time of the newest frame queued for detection through any copy (a patrol waits
    /// for the rules stage to reach it before it closes a camera's look).
    pub fn last_queued(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.queued.load(Ordering::Relaxed) {
            NONE_QUEUED => None,
            micros => chrono::DateTime::from_timestamp_micros(micros),
        }
    }

    /// Whether a frame has been sent through this copy.
    pub fn has_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A camera stream.
pub trait FrameSource: Send {
    fn camera(&self) -> &DeviceId;

    /// Produces frames into `out` until the stream ends, the frame limit is reached, or `stop`
    /// is triggered. Returns an error only for failures that end the stream. It may be called
    /// again after it returned (that is how [`run_supervised`] restarts it): frame numbers and
    /// the frame limit carry on across calls.
    fn run(&mut self, out: &FrameOutput, stop: &Shutdown) -> Result<SourceExit, IngestError>;

    fn stats(&self) -> SourceStats;
}

impl From<QueueClosed> for IngestError {
    fn from(_: QueueClosed) -> Self {
        IngestError::DownstreamClosed
    }
}

/// Initialises GStreamer once per process; cheap after the first call.
pub fn init() -> Result<(), IngestError> {
    gstreamer::init().map_err(|e| IngestError::Init(e.to_string()))
}
