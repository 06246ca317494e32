//! Frames and what the detector finds in them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BBox, CameraId};

/// Channel order of a packed 8-bit, 3-channel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOrder {
    Bgr,
    Rgb,
}

/// What is known about a frame besides its pixels; it travels on after detection.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub camera: CameraId,
    /// Counts frames from this camera's source, from 0, with no gaps; a gap downstream is a drop.
    pub seq: u64,
    /// Event time: when the frame was captured (live) or the source's start plus the
    /// frame's timestamp (files), so replaying a file gives the same timeline at any speed.
    pub captured_at: DateTime<Utc>,
    /// When this process decoded it, for latency metrics.
    pub decoded_at: Instant,
    pub width: u32,
    pub height: u32,
}

/// One decoded video frame: packed 8-bit, 3 channels, rows `stride` bytes apart.
#[derive(Clone)]
pub struct Frame {
    pub info: FrameInfo,
    pub stride: usize,
    pub order: PixelOrder,
    pub data: Arc<[u8]>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// One object the model found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// A frame after detection: the pixels are gone, the findings remain.
#[derive(Debug, Clone)]
pub struct AnalysedFrame {
    pub info: FrameInfo,
    pub detections: Vec<Detection>,
    pub inference: Duration,
}
