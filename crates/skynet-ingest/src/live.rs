//! Live view (issue 25 part 2): a camera's encoded access units, as the clip ring receives
//! them from the tee before the decoder, fanned out to its viewers and remuxed (not
//! transcoded) to fragmented MP4.
//!
//! ```text
//! tee ─► appsink ─► EncodedRing::push ─► Fanout ─┬─► bounded queue ─► viewer thread:
//!                                                 │     appsrc ! h26Xparse ! mp4mux streamable
//!                                                 │     fragment-duration=1000 ! appsink
//!                                                 │     ─► bounded queue ─► HTTP body
//!                                                 └─► (one per viewer)
//! ```
//!
//! The camera's streaming thread never waits on a viewer: it offers each unit to every
//! viewer's queue with `try_send`, and a viewer whose queue is full (or whose HTTP body
//! queue is full: the client reads too slowly) is dropped and counted in
//! `skynet_live_dropped_viewers_total`. A new viewer starts at the ring's newest keyframe,
//! so its video starts at once and decodes. Each viewer has its own muxer (a remux costs
//! little); the one tee and ring per camera serve them all.
//!
//! A camera with privacy masks is never remuxed: its viewer's pipeline decodes, scales to
//! `[api] live.masked_width`, blurs the masks (the clips' probe) and encodes again with x264
//! (`appsrc ! h26Xparse ! decodebin ! videoscale ! … ! identity name=blur ! x264enc ! h264parse
//! ! mp4mux …`), so no masked pixel leaves the node. That costs a decode and an encode per
//! viewer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use skynet_core::DeviceId;

use crate::clips::{EncodedRing, MaskBlur, Unit};

/// How a masked camera's viewer is transcoded: scaled to `width` and blurred by `blur`.
#[derive(Clone)]
pub struct Transcode {
    pub width: u32,
    pub blur: MaskBlur,
}

/// Units a viewer may fall behind the camera before it is dropped (about 8 s at 30 fps).
const UNIT_BACKLOG: usize = 256;
/// MP4 chunks (a header, a fragment's parts) waiting for the HTTP body.
const BODY_BACKLOG: usize = 16;

/// Viewers on this node, all cameras together.
static VIEWERS: AtomicUsize = AtomicUsize::new(0);

/// How many viewers may watch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_camera: usize,
    pub total: usize,
}

/// Why a viewer was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the camera sends no encoded video yet")]
    NotStreaming,
    #[error("the camera has its most viewers")]
    CameraFull,
    #[error("the node has its most viewers")]
    NodeFull,
}

pub(crate) struct ViewerTx {
    tx: crossbeam_channel::Sender<(gst::Caps, Unit)>,
    /// Set when the viewer is dropped (too slow) or gone.
    dropped: Arc<AtomicBool>,
}

/// A camera's viewers; part of its [`EncodedRing`].
#[derive(Clone, Default)]
pub(crate) struct Fanout {
    viewers: Arc<Mutex<Vec<ViewerTx>>>,
    active: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl Fanout {
    /// Offers `unit` to every viewer, never waiting; a viewer whose queue is full is dropped.
    pub(crate) fn send(&self, caps: &gst::CapsRef, unit: &Unit) {
        let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
        if viewers.is_empty() {
            return;
        }
        let caps = caps.to_owned();
        viewers.retain(|v| {
            if v.dropped.load(Ordering::Relaxed) {
                return false;
            }
            match v.tx.try_send((caps.clone(), unit.clone())) {
                Ok(()) => true,
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    v.dropped.store(true, Ordering::Relaxed);
                    false
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
            }
        });
    }

    pub(crate) fn add(&self, viewer: ViewerTx) {
        self.viewers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(viewer);
    }
}

/// Takes a slot under both caps, or says which is full.
fn reserve(active: &AtomicUsize, limits: Limits) -> Result<(), Refused> {
    VIEWERS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limits.total).then_some(n + 1)
        })
        .map_err(|_| Refused::NodeFull)?;
    if active
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limits.per_camera).then_some(n + 1)
        })
        .is_err()
    {
        VIEWERS.fetch_sub(1, Ordering::SeqCst);
        return Err(Refused::CameraFull);
    }
    Ok(())
}

/// A new viewer of `camera`, whose encoded stream fills `ring`: the fragmented MP4 bytes,
/// from the ring's newest keyframe on.
pub fn open_viewer(
    ring: &EncodedRing,
    camera: &DeviceId,
    limits: Limits,
    transcode: Option<Transcode>,
) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Refused> {
    let fanout = ring.fanout().clone();
    reserve(&fanout.active, limits)?;
    let slot = Slot {
        active: Arc::clone(&fanout.active),
        camera: camera.to_string(),
    };
    let (tx, units) = crossbeam_channel::bounded(UNIT_BACKLOG);
    let dropped = Arc::new(AtomicBool::new(false));
    // The backlog and the registration under the ring's lock: no unit missed or doubled.
    let Some((caps, backlog)) = ring.subscribe_live(ViewerTx {
        tx,
        dropped: Arc::clone(&dropped),
    }) else {
        drop(slot);
        return Err(Refused::NotStreaming);
    };
    metrics::gauge!("skynet_live_viewers", "camera" => camera.to_string())
        .set(fanout.active.load(Ordering::SeqCst) as f64);
    let (out, body) = tokio::sync::mpsc::channel(BODY_BACKLOG);
    let name = camera.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("live-{camera}"))
        .spawn(move || {
            if let Err(e) = run_viewer(&caps, backlog, &units, &out, &dropped, transcode) {
                tracing::warn!(camera = %name, error = %e, "a live viewer's muxer failed");
            }
            dropped.store(true, Ordering::Relaxed);
            drop(slot);
        });
    match spawned {
        Ok(_) => Ok(body),
        Err(_) => Err(Refused::NotStreaming),
    }
}

/// A viewer's place under the caps, given back when it ends.
struct Slot {
    active: Arc<AtomicUsize>,
    camera: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.active.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        VIEWERS.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("skynet_live_viewers", "camera" => self.camera.clone()).set(left as f64);
    }
}

/// Why a viewer's loop ended.
#[derive(PartialEq, Eq)]
enum End {
    /// The client went away.
    Left,
    /// The client (or the muxer's input) fell too far behind.
    TooSlow,
    /// The camera's stream ended or changed.
    Stream,
}

fn run_viewer(
    caps: &gst::Caps,
    backlog: Vec<Unit>,
    units: &crossbeam_channel::Receiver<(gst::Caps, Unit)>,
    out: &tokio::sync::mpsc::Sender<Vec<u8>>,
    dropped: &Arc<AtomicBool>,
    transcode: Option<Transcode>,
) -> Result<(), String> {
    let parser = match caps.structure(0).map(|s| s.name().as_str()) {
        Some("video/x-h265") => "h265parse",
        _ => "h264parse",
    };
    // A masked camera: decoded, scaled, blurred and encoded again; never remuxed.
    let middle = match &transcode {
        Some(t) => format!("! {} ", crate::clips::blur_and_encode_live(t.width)),
        None => String::new(),
    };
    let description = format!(
        "appsrc name=src format=time ! {parser} {middle}! mp4mux streamable=true \
         fragment-duration=1000 ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let by_name = |name: &str| pipeline.by_name(name).ok_or(format!("no element {name}"));
    if let Some(t) = transcode {
        crate::clips::frame_probe(&by_name("blur")?, Some(t.blur)).map_err(|e| e.to_string())?;
    }
    let src = by_name("src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| "appsrc".to_string())?;
    src.set_caps(Some(caps));
    src.set_property("max-bytes", 64u64 << 20);
    let sink = by_name("sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "appsink".to_string())?;
    let end = Arc::new(Mutex::new(None::<End>));
    {
        let out = out.clone();
        let end = Arc::clone(&end);
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let bytes = buffer
                        .map_readable()
                        .map_err(|_| gst::FlowError::Error)?
                        .to_vec();
                    match out.try_send(bytes) {
                        Ok(()) => Ok(gst::FlowSuccess::Ok),
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            *end.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(End::TooSlow);
                            Err(gst::FlowError::Eos)
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                            *end.lock().unwrap_or_else(PoisonError::into_inner) = Some(End::Left);
                            Err(gst::FlowError::Eos)
                        }
                    }
                })
                .build(),
        );
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus();
    let zero = backlog
        .first()
        .and_then(|u| u.buffer.dts_or_pts())
        .unwrap_or(gst::ClockTime::ZERO);
    let push = |unit: Unit| -> bool {
        let mut buffer = unit.buffer;
        {
            let b = buffer.make_mut();
            b.set_pts(b.pts().map(|t| t.saturating_sub(zero)));
            b.set_dts(b.dts().map(|t| t.saturating_sub(zero)));
        }
        src.push_buffer(buffer).is_ok()
    };
    let mut result = Ok(());
    let mut ended = None;
    for unit in backlog {
        if !push(unit) {
            ended = Some(End::Stream);
            break;
        }
    }
    while ended.is_none() {
        if let Some(e) = end.lock().unwrap_or_else(PoisonError::into_inner).take() {
            ended = Some(e);
            break;
        }
        if dropped.load(Ordering::Relaxed) {
            ended = Some(End::TooSlow);
            break;
        }
        if out.is_closed() {
            ended = Some(End::Left);
            break;
        }
        if let Some(msg) = bus
            .as_ref()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
            && let gst::MessageView::Error(err) = msg.view()
        {
            result = Err(err.error().to_string());
            ended = Some(End::Stream);
            break;
        }
        match units.recv_timeout(Duration::from_millis(200)) {
            Ok((unit_caps, unit)) => {
                if unit_caps != *caps || !push(unit) {
                    ended = Some(End::Stream);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                ended = Some(End::Stream);
            }
        }
    }
    if ended == Some(End::TooSlow) {
        tracing::info!("a live viewer was dropped: it fell too far behind");
        metrics::counter!("skynet_live_dropped_viewers_total").increment(1);
    }
    dropped.store(true, Ordering::Relaxed);
    let _ = pipeline.set_state(gst::State::Null);
    result
}
