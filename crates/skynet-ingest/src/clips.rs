//! Event clips (issue 25): a rolling buffer of a camera's *encoded* stream, and MP4 files
//! cut from it without re-encoding.
//!
//! ```text
//! uridecodebin (caps: raw or H.264/H.265) ─► h26Xparse ─► tee ─► decodebin ─► (the decode path)
//!                                                           └──► appsink ─► EncodedRing
//! ```
//!
//! The ring keeps whole GOPs: access units with their event time (the same clock as the
//! decoded frames), keyframe flag and caps, at least `keep` of them behind the newest, and at
//! most `max_bytes`. A clip starts at the keyframe at or before the asked start, so it always
//! decodes. [`write_clip`] muxes the units into MP4 (`mp4mux faststart=true`); with privacy
//! masks it decodes, blurs and re-encodes (x264) instead, so no masked pixel leaves the node.
//!
//! Rings are found by camera id in a process-wide table ([`EncodedRing::for_camera`]): the
//! source that fills a ring and the rules stage that cuts clips from it are started apart.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use skynet_core::DeviceId;

/// Why a clip could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("the camera's buffer holds nothing from {start} to {end}")]
    NoData {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One encoded access unit.
#[derive(Debug, Clone)]
pub struct Unit {
    pub at: DateTime<Utc>,
    pub key: bool,
    pub buffer: gst::Buffer,
}

#[derive(Debug, Default)]
struct Inner {
    caps: Option<gst::Caps>,
    units: VecDeque<Unit>,
    bytes: usize,
    /// A file camera: its file, and the event time of the file's position 0.
    file: Option<(PathBuf, DateTime<Utc>)>,
    /// A file camera: the newest decoded frame's event time.
    file_newest: Option<DateTime<Utc>>,
}

/// A camera's rolling buffer of encoded access units; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct EncodedRing {
    inner: Arc<Mutex<Inner>>,
    keep: Arc<Mutex<Duration>>,
    max_bytes: usize,
    /// Live viewers of the stream (`crate::live`).
    live: crate::live::Fanout,
}

impl PartialEq for EncodedRing {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Bytes a camera's ring may hold at most (a 4 Mbit/s camera fills it in about 4 minutes).
pub const RING_MAX_BYTES: usize = 128 << 20;

fn rings() -> &'static Mutex<BTreeMap<DeviceId, EncodedRing>> {
    static RINGS: OnceLock<Mutex<BTreeMap<DeviceId, EncodedRing>>> = OnceLock::new();
    RINGS.get_or_init(Default::default)
}

impl EncodedRing {
    pub fn new(keep: Duration, max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            keep: Arc::new(Mutex::new(keep)),
            max_bytes,
            live: Default::default(),
        }
    }

    /// The process-wide ring of `camera`, made on first use; `keep` grows to the longest
    /// asked for.
    pub fn for_camera(camera: &DeviceId, keep: Duration) -> Self {
        let mut table = rings().lock().unwrap_or_else(PoisonError::into_inner);
        let ring = table
            .entry(camera.clone())
            .or_insert_with(|| Self::new(keep, RING_MAX_BYTES))
            .clone();
        let mut held = ring.keep.lock().unwrap_or_else(PoisonError::into_inner);
        *held = (*held).max(keep);
        drop(held);
        ring
    }

    /// The ring of `camera` if a source made one.
    pub fn existing(camera: &DeviceId) -> Option<Self> {
        rings()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(camera)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a unit; a change of caps (a new stream) starts the ring afresh. Whole GOPs are
    /// dropped from the front while the next GOP still starts `keep` behind the newest, or
    /// while over `max_bytes`.
    pub fn push(&self, caps: &gst::CapsRef, unit: Unit) {
        let keep = *self.keep.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let mut inner = self.lock();
        // A new stream (other caps, or times going back by more than any frame reordering:
        // a new connection) starts afresh.
        let time = |u: &Unit| u.buffer.dts_or_pts().map(|t| t.nseconds());
        let went_back = inner.units.back().is_some_and(|last| {
            matches!((time(last), time(&unit)), (Some(a), Some(b)) if a > b.saturating_add(1_000_000_000))
        });
        if went_back || inner.caps.as_deref() != Some(caps) {
            inner.units.clear();
            inner.bytes = 0;
            inner.caps = Some(caps.to_owned());
        }
        if inner.units.is_empty() && !unit.key {
            // Nothing decodes before the first keyframe.
            return;
        }
        let newest = unit.at;
        // Under the ring's lock, so a new viewer's backlog and its live units never overlap.
        self.live.send(caps, &unit);
        inner.bytes += unit.buffer.size();
        inner.units.push_back(unit);
        while let Some(next_key) = inner
            .units
            .iter()
            .skip(1)
            .position(|u| u.key)
            .map(|i| i + 1)
        {
            let old_enough = inner.units[next_key].at <= newest - keep;
            if !(old_enough || inner.bytes > self.max_bytes) {
                break;
            }
            for unit in inner.units.drain(..next_key).collect::<Vec<_>>() {
                inner.bytes = inner.bytes.saturating_sub(unit.buffer.size());
            }
        }
    }

    pub(crate) fn fanout(&self) -> &crate::live::Fanout {
        &self.live
    }

    /// Registers a live viewer and gives it the units from the newest keyframe on, with
    /// their caps; `None` when the ring holds no stream.
    pub(crate) fn subscribe_live(
        &self,
        viewer: crate::live::ViewerTx,
    ) -> Option<(gst::Caps, Vec<Unit>)> {
        let inner = self.lock();
        let caps = inner.caps.clone()?;
        let key = inner.units.iter().rposition(|u| u.key)?;
        let backlog = inner.units.iter().skip(key).cloned().collect();
        self.live.add(viewer);
        Some((caps, backlog))
    }

    /// The newest unit's time (a file camera's: its newest decoded frame's).
    pub fn newest(&self) -> Option<DateTime<Utc>> {
        let inner = self.lock();
        inner.units.back().map(|u| u.at).max(inner.file_newest)
    }

    /// A file camera's frame: clips are cut from `path` itself, whose position 0 is at
    /// event time `origin` (the frame's time less its position). Cheap: set per frame.
    pub fn file_frame(&self, path: &Path, origin: DateTime<Utc>, at: DateTime<Utc>) {
        let mut inner = self.lock();
        if inner
            .file
            .as_ref()
            .is_none_or(|(p, o)| p != path || *o != origin)
        {
            inner.file = Some((path.to_path_buf(), origin));
        }
        inner.file_newest = Some(at);
    }

    /// A file camera's file and the event time of its position 0.
    pub fn file(&self) -> Option<(PathBuf, DateTime<Utc>)> {
        self.lock().file.clone()
    }

    /// The units from the keyframe at or before `start` (or the first held) up to `end`,
    /// with their caps.
    pub fn extract(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<(gst::Caps, Vec<Unit>)> {
        let inner = self.lock();
        let caps = inner.caps.clone()?;
        let first = inner
            .units
            .iter()
            .rposition(|u| u.key && u.at <= start)
            .or_else(|| inner.units.iter().position(|u| u.key))?;
        let units: Vec<Unit> = inner
            .units
            .iter()
            .skip(first)
            .take_while(|u| u.at <= end)
            .cloned()
            .collect();
        (!units.is_empty()).then_some((caps, units))
    }
}

/// Blurs a frame's privacy masks in place: `(width, height, stride, RGB bytes)`.
pub type MaskBlur = Arc<dyn Fn(u32, u32, usize, &mut [u8]) + Send + Sync>;

/// A written clip.
#[derive(Debug, Clone)]
pub struct ClipFile {
    pub path: PathBuf,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub width: u32,
    pub height: u32,
}

/// Decoded, blurred in the masks (by a probe on the identity named `blur`) and encoded again:
/// a masked camera's clip, and a file camera's (cut from the file, whatever its codec).
const BLUR_AND_ENCODE: &str = "decodebin ! videoconvert ! video/x-raw,format=RGB ! identity name=blur \
     ! videoconvert ! x264enc speed-preset=veryfast key-int-max=30 bframes=0 ! h264parse";

/// [`BLUR_AND_ENCODE`] for live view: scaled to `width` (its aspect kept) before the blur, and
/// encoded for low latency (a keyframe about every second).
pub(crate) fn blur_and_encode_live(width: u32) -> String {
    BLUR_AND_ENCODE
        .replacen(
            "decodebin !",
            &format!(
                "decodebin ! videoconvert ! videoscale ! video/x-raw,width={width},pixel-aspect-ratio=1/1 !"
            ),
            1,
        )
        .replacen("x264enc", "x264enc tune=zerolatency", 1)
}

/// A clip writer's GStreamer pipeline from its description.
fn launch(description: &str) -> Result<gst::Pipeline, ClipError> {
    gst::parse::launch(description)
        .map_err(|e| ClipError::Gst(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| ClipError::Gst("not a pipeline".into()))
}

/// One of its named elements.
fn element(pipeline: &gst::Pipeline, name: &str) -> Result<gst::Element, ClipError> {
    pipeline
        .by_name(name)
        .ok_or_else(|| ClipError::Gst(format!("no element {name}")))
}

/// Writes `units` as MP4 at `path` (atomically: a temporary file beside it, then renamed).
/// With `blur`, the frames are decoded, blurred and re-encoded with x264.
pub fn write_clip(
    caps: &gst::Caps,
    units: &[Unit],
    path: &Path,
    blur: Option<MaskBlur>,
) -> Result<ClipFile, ClipError> {
    let (Some(first), Some(last)) = (units.first(), units.last()) else {
        return Err(ClipError::Gst("no units to write".into()));
    };
    crate::init().map_err(|e| ClipError::Gst(e.to_string()))?;
    let gst_err = |e: &dyn std::fmt::Display| ClipError::Gst(e.to_string());
    let tmp = path.with_extension(format!("mp4.{}.tmp", std::process::id()));
    let parser = match caps.structure(0).map(|s| s.name().as_str()) {
        Some("video/x-h265") => "h265parse",
        _ => "h264parse",
    };
    let middle = if blur.is_some() {
        BLUR_AND_ENCODE
    } else {
        parser
    };
    let pipeline = launch(&format!(
        "appsrc name=src format=time ! {parser} ! {middle} ! mp4mux name=mux faststart=true ! filesink name=sink"
    ))?;
    let by_name = |name: &str| element(&pipeline, name);
    by_name("sink")?.set_property("location", tmp.to_string_lossy().as_ref());
    let src = by_name("src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| ClipError::Gst("appsrc".into()))?;
    src.set_caps(Some(caps));
    src.set_property("block", true);
    src.set_property("max-bytes", 8u64 << 20);
    let size = Arc::new(Mutex::new((0u32, 0u32)));
    if let Some(blur) = blur {
        let pad = by_name("blur")?
            .static_pad("src")
            .ok_or_else(|| ClipError::Gst("identity without a src pad".into()))?;
        let size = Arc::clone(&size);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(caps) = pad.current_caps() else {
                return gst::PadProbeReturn::Ok;
            };
            let Ok(video) = gstreamer_video::VideoInfo::from_caps(&caps) else {
                return gst::PadProbeReturn::Ok;
            };
            *size.lock().unwrap_or_else(PoisonError::into_inner) = (video.width(), video.height());
            if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
                let stride = video.stride()[0].max(0) as usize;
                let buffer = buffer.make_mut();
                if let Ok(mut map) = buffer.map_writable() {
                    blur(video.width(), video.height(), stride, map.as_mut_slice());
                }
            }
            gst::PadProbeReturn::Ok
        });
    } else if let Some(s) = caps.structure(0) {
        let w = s.get::<i32>("width").unwrap_or(0).max(0) as u32;
        let h = s.get::<i32>("height").unwrap_or(0).max(0) as u32;
        *size.lock().unwrap_or_else(PoisonError::into_inner) = (w, h);
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| gst_err(&e))?;
    // Times from zero: the first unit's decode time.
    let zero = first.buffer.dts_or_pts().unwrap_or(gst::ClockTime::ZERO);
    let mut result = Ok(());
    for unit in units {
        let mut buffer = unit.buffer.copy();
        {
            let b = buffer.make_mut();
            b.set_pts(b.pts().map(|t| t.saturating_sub(zero)));
            b.set_dts(b.dts().map(|t| t.saturating_sub(zero)));
        }
        if let Err(e) = src.push_buffer(buffer) {
            result = Err(ClipError::Gst(format!("pushing a buffer: {e:?}")));
            break;
        }
    }
    let _ = src.end_of_stream();
    if result.is_ok() {
        let bus = pipeline
            .bus()
            .ok_or_else(|| ClipError::Gst("no bus".into()))?;
        let timeout = gst::ClockTime::from_seconds(120);
        match bus.timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error]) {
            Some(msg) => {
                if let gst::MessageView::Error(err) = msg.view() {
                    result = Err(ClipError::Gst(err.error().to_string()));
                }
            }
            None => result = Err(ClipError::Gst("muxing did not finish in 120 s".into())),
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let io = |source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    };
    skynet_core::private_fs::restrict(&tmp).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    let (width, height) = *size.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(ClipFile {
        path: path.to_path_buf(),
        start: first.at,
        end: last.at,
        width,
        height,
    })
}

/// Cuts `start..end` (positions in the file) out of a recorded file into MP4 at `path`,
/// transcoded with x264 (a file may hold any codec: vtest.avi is DivX 3), blurred with
/// `blur` where given. `origin` is the event time of the file's position 0.
pub fn write_file_clip(
    file: &Path,
    origin: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    path: &Path,
    blur: Option<MaskBlur>,
) -> Result<ClipFile, ClipError> {
    crate::init().map_err(|e| ClipError::Gst(e.to_string()))?;
    let gst_err = |e: &dyn std::fmt::Display| ClipError::Gst(e.to_string());
    let offset = |t: DateTime<Utc>| {
        let ns = (t - origin).num_nanoseconds().unwrap_or(0).max(0);
        gst::ClockTime::from_nseconds(ns as u64)
    };
    let (from, to) = (offset(start), offset(end));
    if to <= from {
        return Err(ClipError::NoData { start, end });
    }
    let tmp = path.with_extension(format!("mp4.{}.tmp", std::process::id()));
    let pipeline = launch(&format!(
        "filesrc name=file ! {BLUR_AND_ENCODE} ! mp4mux faststart=true ! filesink name=sink"
    ))?;
    let by_name = |name: &str| element(&pipeline, name);
    by_name("file")?.set_property("location", file.to_string_lossy().as_ref());
    by_name("sink")?.set_property("location", tmp.to_string_lossy().as_ref());
    let identity = by_name("blur")?;
    let size = frame_probe(&identity, blur)?;
    let run = || -> Result<(), ClipError> {
        pipeline
            .set_state(gst::State::Paused)
            .map_err(|e| gst_err(&e))?;
        let (state, _, _) = pipeline.state(gst::ClockTime::from_seconds(30));
        state.map_err(|e| gst_err(&e))?;
        // Sent upstream from before the encoder: the muxer and file sink (in bytes) never see
        // a seek in time.
        identity
            .seek(
                1.0,
                gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
                gst::SeekType::Set,
                from,
                gst::SeekType::Set,
                to,
            )
            .map_err(|e| gst_err(&e))?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| gst_err(&e))?;
        wait_eos(&pipeline)
    };
    let result = run();
    let _ = pipeline.set_state(gst::State::Null);
    finish(result, &tmp, path)?;
    let (width, height) = *size.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(ClipFile {
        path: path.to_path_buf(),
        start: origin + chrono::Duration::nanoseconds(from.nseconds() as i64),
        end: origin + chrono::Duration::nanoseconds(to.nseconds() as i64),
        width,
        height,
    })
}

/// Records the frames' size at `identity`'s src pad, and blurs them there with `blur`.
pub(crate) fn frame_probe(
    identity: &gst::Element,
    blur: Option<MaskBlur>,
) -> Result<Arc<Mutex<(u32, u32)>>, ClipError> {
    let size = Arc::new(Mutex::new((0u32, 0u32)));
    let pad = identity
        .static_pad("src")
        .ok_or_else(|| ClipError::Gst("identity without a src pad".into()))?;
    let seen = Arc::clone(&size);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        // With masks, a frame that cannot be blurred is dropped: no masked pixel leaves the
        // node, whatever went wrong.
        let unblurred = if blur.is_some() {
            gst::PadProbeReturn::Drop
        } else {
            gst::PadProbeReturn::Ok
        };
        let Some(caps) = pad.current_caps() else {
            return unblurred;
        };
        let Ok(video) = gstreamer_video::VideoInfo::from_caps(&caps) else {
            return unblurred;
        };
        *seen.lock().unwrap_or_else(PoisonError::into_inner) = (video.width(), video.height());
        let Some(blur) = &blur else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data else {
            return unblurred;
        };
        let stride = video.stride()[0].max(0) as usize;
        let buffer = buffer.make_mut();
        match buffer.map_writable() {
            Ok(mut map) => {
                blur(video.width(), video.height(), stride, map.as_mut_slice());
                gst::PadProbeReturn::Ok
            }
            Err(_) => unblurred,
        }
    });
    Ok(size)
}

fn wait_eos(pipeline: &gst::Pipeline) -> Result<(), ClipError> {
    let bus = pipeline
        .bus()
        .ok_or_else(|| ClipError::Gst("no bus".into()))?;
    match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(300),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(err) => Err(ClipError::Gst(err.error().to_string())),
            _ => Ok(()),
        },
        None => Err(ClipError::Gst("the clip was not finished in 300 s".into())),
    }
}

/// The temporary file renamed to `path` (owner-only), or removed after a failure.
fn finish(result: Result<(), ClipError>, tmp: &Path, path: &Path) -> Result<(), ClipError> {
    if let Err(e) = result {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    let io = |source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    };
    skynet_core::private_fs::restrict(tmp).map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)
}

/// The tee's encoded branch: a parser that repeats SPS/PPS at every keyframe (so a clip can
/// start at any of them) and an appsink that fills `ring`.
pub(crate) fn ring_sink(
    ring: EncodedRing,
    pipeline: &gst::Pipeline,
    realtime: bool,
) -> gst_app::AppSink {
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(64)
        .drop(true)
        .build();
    let pipeline = pipeline.downgrade();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let running_zero = pipeline
                    .upgrade()
                    .map(|p| super::gst_source::clock_running_zero(&p, realtime))
                    .unwrap_or_else(Utc::now);
                let at = super::gst_source::live_event_time(&buffer, running_zero);
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                ring.push(caps, Unit { at, key, buffer });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    sink
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(ms: i64, key: bool, size: usize) -> Unit {
        let mut buffer = gst::Buffer::with_size(size).unwrap();
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(ms as u64));
        Unit {
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            key,
            buffer,
        }
    }

    #[test]
    fn the_ring_keeps_whole_gops_covering_keep_and_cuts_at_a_keyframe() {
        gst::init().unwrap();
        let caps = gst::Caps::builder("video/x-h264").build();
        let ring = EncodedRing::new(Duration::from_secs(3), 1 << 30);
        // Starts at a keyframe.
        ring.push(&caps, unit(0, false, 10));
        assert!(ring.newest().is_none());
        for ms in (0..10_000).step_by(100) {
            ring.push(&caps, unit(ms, ms % 1000 == 0, 10));
        }
        let (_, units) = ring
            .extract(
                DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(7_500),
                DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(9_000),
            )
            .unwrap();
        assert!(units[0].key);
        assert_eq!(units[0].at.timestamp_millis(), 7_000);
        assert_eq!(units.last().unwrap().at.timestamp_millis(), 9_000);
        // At least 3 s behind the newest (9.9 s) are held: from 6 s.
        let inner = ring.lock();
        assert_eq!(inner.units[0].at.timestamp_millis(), 6_000);
        drop(inner);
        // The byte bound drops whole GOPs too.
        let small = EncodedRing::new(Duration::from_secs(60), 250);
        for ms in (0..3_000).step_by(100) {
            small.push(&caps, unit(ms, ms % 1000 == 0, 10));
        }
        assert_eq!(small.lock().units[0].at.timestamp_millis(), 1_000);
        // A new connection: times start again from zero, so the ring starts afresh (from
        // its first keyframe).
        let mut late = unit(20_000, false, 10);
        late.buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(100));
        small.push(&caps, late);
        assert!(small.newest().is_none());
    }
}
