//! Frames and what the detector finds in them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BBox, DeviceId};

/// Channel order of a packed 8-bit, 3-channel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOrder {
    Bgr,
    Rgb,
}

/// What is known about a frame besides its pixels; it travels on after detection.
///
/// `width` and `height` are the camera's own resolution: detection boxes are in those pixels,
/// whatever size the detector was handed.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub camera: DeviceId,
    /// Counts frames from this camera's source, from 0, with no gaps; a gap downstream is a drop.
    pub seq: u64,
    /// Event time: when the frame was captured (live) or the source's start plus the
    /// frame's timestamp (files), so replaying a file gives the same timeline at any speed.
    pub captured_at: DateTime<Utc>,
    /// When this process decoded it, for latency metrics.
    pub decoded_at: Instant,
    /// Frames the source's motion gate kept from the detector before this one, in all: a
    /// gap in `seq` that this does not explain is a drop.
    pub skipped: u64,
    pub width: u32,
    pub height: u32,
}

/// Pixel bytes shared without copying: a decoder's own buffer, or a plain vector.
#[derive(Clone)]
pub struct FrameData(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl FrameData {
    /// Wraps whatever owns the bytes (a mapped GStreamer buffer keeps it alive, unmapped
    /// when the last clone goes).
    pub fn new(owner: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        Self(Arc::new(owner))
    }
}

impl std::ops::Deref for FrameData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl From<Vec<u8>> for FrameData {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

/// The pixels handed to the detector: packed 8-bit, 3 channels, rows `stride` bytes apart.
/// Sources scale them to what the detector needs, so they may be smaller than the camera's
/// resolution ([`FrameInfo::width`]).
#[derive(Clone)]
pub struct FrameImage {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub order: PixelOrder,
    pub data: FrameData,
}

impl std::fmt::Debug for FrameImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The size and layout; the pixels would only flood a log.
        f.debug_struct("FrameImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("stride", &self.stride)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

/// One decoded video frame.
#[derive(Clone)]
pub struct Frame {
    pub info: FrameInfo,
    pub image: FrameImage,
}

impl Frame {
    /// Camera pixels per image pixel, along x and y: what maps a detection on the image back
    /// to the camera's resolution.
    pub fn image_scale(&self) -> (f32, f32) {
        (
            self.info.width as f32 / self.image.width.max(1) as f32,
            self.info.height as f32 / self.image.height.max(1) as f32,
        )
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("info", &self.info)
            .field("image", &(self.image.width, self.image.height))
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
    /// The tracker's id for this object on its camera, once tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
}

impl Detection {
    pub fn new(label: impl Into<String>, score: f32, bbox: BBox) -> Self {
        Self {
            label: label.into(),
            score,
            bbox,
            track: None,
        }
    }
}

/// An object the tracker follows on one camera, as it stands at one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedObject {
    /// Stable while the object stays in view; never reused on the camera during a run.
    pub id: u64,
    pub label: String,
    /// The score of the detection that last confirmed the track.
    pub score: f32,
    /// Where the object is at this frame, in the camera's pixels: the tracker's estimate (its
    /// motion model corrected by the matched detection, or predicted alone when the object
    /// was not detected in this frame).
    #[serde(rename = "box")]
    pub bbox: BBox,
    /// When the track was first confirmed (event time).
    pub first_seen: DateTime<Utc>,
    /// Since when the object has stood still, if it does.
    pub stationary_since: Option<DateTime<Utc>>,
    /// Whether a detection confirmed the track at this frame (false: predicted only).
    pub detected: bool,
}

impl TrackedObject {
    /// The object as evidence: its box and label with its track id.
    pub fn as_detection(&self) -> Detection {
        Detection {
            label: self.label.clone(),
            score: self.score,
            bbox: self.bbox,
            track: Some(self.id),
        }
    }
}

/// A frame after detection: the pixels are gone, the findings remain.
#[derive(Debug, Clone)]
pub struct AnalysedFrame {
    pub info: FrameInfo,
    /// What the detector found in this frame; empty when it did not run on it (see `inferred`).
    pub detections: Vec<Detection>,
    pub inference: Duration,
    /// Whether the detector ran on this frame. Frames it skipped (the inference interval)
    /// still reach the tracker, which predicts where its objects are.
    pub inferred: bool,
    /// The camera's tracked objects at this frame, filled by the tracker before the rules run.
    pub tracks: Vec<TrackedObject>,
}

/// Tells a camera's motion gate whether the last detection on its camera found anything.
/// The detection stage holds one end, the camera's gate the other.
#[derive(Debug, Clone, Default)]
pub struct ObjectsInView(Arc<std::sync::atomic::AtomicBool>);

impl ObjectsInView {
    pub fn set(&self, present: bool) {
        self.0.store(present, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
