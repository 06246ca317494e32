//! Ingest stage: sources that turn camera streams into [`Frame`](skynet_core::Frame)s.
//!
//! A [`FrameSource`] runs on its own thread and pushes frames into its camera's bounded
//! queue. [`GstSource`] decodes anything GStreamer can open: files, `http(s)://`, `rtsp://`.

mod error;
mod gst_source;

pub use error::IngestError;
pub use gst_source::{GstSource, GstSourceOptions};

use skynet_core::{CameraId, Frame, QueueClosed, Shutdown, StageQueue};

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

/// Where a source sends its frames.
pub type FrameOutput = StageQueue<Frame>;

/// A camera stream.
pub trait FrameSource: Send {
    fn camera(&self) -> &CameraId;

    /// Produces frames into `out` until the stream ends, the frame limit is reached, or `stop`
    /// is triggered. Returns an error only for failures that end the stream.
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
