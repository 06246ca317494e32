//! Ingest stage: sources that turn camera streams into [`Frame`](skynet_core::Frame)s.
//!
//! A [`FrameSource`] runs on its own thread and pushes frames into its camera's bounded
//! queue through a [`FrameOutput`], which also moves the source's [`Watermark`].
//! [`GstSource`] decodes anything GStreamer can open: files, `http(s)://`, `rtsp://`.
//! [`run_supervised`] restarts a failing source with backoff and reports its health.
//! [`GstSourceConfig`] is the source's part of a `[[cameras]]` table.

mod config;
mod error;
mod gst_source;
mod supervise;

pub use config::{GstSourceConfig, ReconnectConfig, SourceConfig};
pub use error::IngestError;
pub use gst_source::{GstSource, GstSourceOptions};
pub use supervise::{RetryPolicy, run_supervised};

use std::sync::atomic::{AtomicBool, Ordering};

use skynet_core::{CameraId, ComponentHealth, Frame, QueueClosed, Shutdown, StageQueue, Watermark};

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
/// stages how far the camera's event time has got.
///
/// It is also how a source reports "up" without knowing about health: the supervisor hands
/// each connection a copy made by [`reporting_up`](Self::reporting_up), whose first frame
/// marks the component up.
#[derive(Debug)]
pub struct FrameOutput {
    frames: StageQueue<Frame>,
    watermark: Watermark,
    up_on_first_frame: Option<ComponentHealth>,
    sent: AtomicBool,
}

impl FrameOutput {
    /// `watermark` should be `Watermark::new(true)` for a live source, so that it moves with the
    /// wall clock while the camera is quiet or reconnecting, and `Watermark::new(false)` for a
    /// file, whose event time moves only with its frames.
    pub fn new(frames: StageQueue<Frame>, watermark: Watermark) -> Self {
        Self {
            frames,
            watermark,
            up_on_first_frame: None,
            sent: AtomicBool::new(false),
        }
    }

    /// A copy feeding the same queue and watermark that marks `health` up when its first frame
    /// is sent. The supervisor makes one per connection, so every reconnection that works is
    /// reported as soon as it delivers.
    pub fn reporting_up(&self, health: &ComponentHealth) -> Self {
        Self {
            frames: self.frames.clone(),
            watermark: self.watermark.clone(),
            up_on_first_frame: Some(health.clone()),
            sent: AtomicBool::new(false),
        }
    }

    /// Sends `frame` and moves the watermark to its event time; returns how many old frames
    /// were dropped to make room.
    pub fn send(&self, frame: Frame) -> Result<usize, QueueClosed> {
        // Observed before the frame is queued: a stage that reads the watermark after taking
        // a frame never sees it behind that frame.
        self.watermark.observe(frame.info.captured_at);
        let dropped = self.frames.send(frame)?;
        if !self.sent.swap(true, Ordering::Relaxed)
            && let Some(health) = &self.up_on_first_frame
        {
            health.up();
        }
        Ok(dropped)
    }

    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// Whether a frame has been sent through this copy.
    pub fn has_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A camera stream.
pub trait FrameSource: Send {
    fn camera(&self) -> &CameraId;

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
