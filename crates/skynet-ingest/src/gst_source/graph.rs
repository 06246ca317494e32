//! A connection's pipeline: `uridecodebin` (its source element given the camera's network
//! settings and credentials), the analysis rate, a hand-off queue, conversion and scaling to
//! BGR at the detector's size, and the appsink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use skynet_core::{Credentials, DeviceId};

use super::decoder::{DecoderInUse, select_decoder, watch_decoder};
use super::keyframes::KeyframeGate;
use super::{GstSource, GstSourceOptions};
use crate::IngestError;
use crate::config::{Transport, is_network_uri};

impl GstSource {
    /// Builds the pipeline for `uri`, which has no credentials in it.
    pub(super) fn build(
        &self,
        uri: &str,
        credentials: Option<Credentials>,
        decoder_in_use: &DecoderInUse,
    ) -> Result<Connection, IngestError> {
        let make = |factory: &str| {
            gst::ElementFactory::make(factory)
                .build()
                .map_err(|_| IngestError::MissingElement {
                    camera: self.camera.clone(),
                    element: factory.to_string(),
                })
        };
        let decode = make("uridecodebin")?;
        decode.set_property("uri", uri);
        {
            // uridecodebin creates its source element (rtspsrc, souphttpsrc, v4l2src, ...) when
            // it starts and announces it here, before it connects.
            let camera = self.camera.clone();
            let options = self.options.clone();
            decode.connect("source-setup", false, move |args| {
                if let Some(Ok(element)) = args.get(1).map(|v| v.get::<gst::Element>()) {
                    configure_source(&camera, &element, &options, credentials.as_ref());
                }
                None
            });
        }
        select_decoder(&decode, self.decoder_choice());
        let mut rate_caps = None;
        let rate = match self.options.fps {
            Some(fps) => {
                let rate = make("videorate")?;
                rate.set_property("drop-only", true);
                let filter = make("capsfilter")?;
                let framerate = gst::Fraction::approximate_f64(fps)
                    .filter(|f| f.numer() > 0)
                    .unwrap_or_else(|| gst::Fraction::new(1, 1));
                let caps = gst::Caps::builder("video/x-raw")
                    .field("framerate", framerate)
                    .build();
                filter.set_property("caps", &caps);
                rate_caps = Some(caps);
                Some((rate, filter))
            }
            None => None,
        };
        let convert = match make("videoconvertscale") {
            Ok(element) => element,
            // Before GStreamer 1.22: the two elements, chained.
            Err(_) => {
                let bin = gst::parse::bin_from_description("videoconvert ! videoscale", true)
                    .map_err(|e| IngestError::Start {
                        camera: self.camera.clone(),
                        uri: skynet_core::redact_uri(uri),
                        reason: e.to_string(),
                    })?;
                bin.upcast()
            }
        };
        if convert.has_property("n-threads") {
            convert.set_property("n-threads", self.options.convert_threads.max(1));
        }
        if convert.has_property("add-borders") {
            convert.set_property("add-borders", false);
        }
        // What a detector needs, and no more: no dithering (8-bit to 8-bit), chroma taken as
        // it is rather than resampled. Measured on vtest.avi, these halve the conversion's
        // cost (benches/cameras.rs).
        for (property, value) in [("dither", "none"), ("chroma-mode", "none")] {
            if convert.has_property(property) {
                convert.set_property_from_str(property, value);
            }
        }
        // Conversion runs on a thread of its own, beside the decoder: a small queue (it
        // blocks; dropping is the stage queue's job, after the motion gate).
        let handoff = make("queue")?;
        handoff.set_property("max-size-buffers", 2u32);
        handoff.set_property("max-size-bytes", 0u32);
        handoff.set_property("max-size-time", 0u64);
        let scale = make("capsfilter")?;
        scale.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "BGR")
                .build(),
        );
        // A small appsink queue: backpressure (or dropping) is the stage queue's job.
        let sink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "BGR")
                    .build(),
            )
            .sync(self.options.realtime)
            .max_buffers(2)
            .build();

        let pipeline = gst::Pipeline::with_name(&format!("camera-{}", self.camera));
        let start_err = |reason: String| IngestError::Start {
            camera: self.camera.clone(),
            uri: skynet_core::redact_uri(uri),
            reason,
        };
        // Liveness is judged on the stream's frames, decoded or not (key frames only), before
        // the analysis rate thins them: a camera analysed once a minute is not stalled between
        // two analyses.
        let heartbeat = Arc::new(Heartbeat::new());
        let keyframes = Arc::new(KeyframeGate::new(
            self.options.keyframes_only,
            self.options.fps,
            rate.as_ref().map(|(_, filter)| filter).zip(rate_caps),
            Arc::clone(&heartbeat),
        ));
        watch_decoder(
            &pipeline,
            decoder_in_use,
            self.options.decode_threads,
            Arc::clone(&keyframes),
        );
        pipeline
            .add_many([&decode, &handoff, &convert, &scale, sink.upcast_ref()])
            .map_err(|e| start_err(e.to_string()))?;
        gst::Element::link_many([&handoff, &convert, &scale, sink.upcast_ref()])
            .map_err(|e| start_err(e.to_string()))?;
        let first = match &rate {
            Some((rate, filter)) => {
                pipeline
                    .add_many([rate, filter])
                    .map_err(|e| start_err(e.to_string()))?;
                gst::Element::link_many([rate, filter, &handoff])
                    .map_err(|e| start_err(e.to_string()))?;
                rate.clone()
            }
            None => handoff.clone(),
        };

        if let Some(pad) = first.static_pad("sink") {
            let beat = Arc::clone(&heartbeat);
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                beat.beat();
                gst::PadProbeReturn::Ok
            });
        }
        let link = RawLink {
            first: first.downgrade(),
            scale: scale.downgrade(),
            camera: self.camera.clone(),
            max_size: self.options.max_size,
        };
        // Event clips (live streams only): the encoded stream is exposed too, and teed off
        // before a decoder of our own (`clips.rs`). Without clips, the graph is as before.
        let clip_ring = self
            .options
            .clip_ring
            .clone()
            .filter(|_| is_network_uri(uri));
        if clip_ring.is_some() {
            let mut caps = decode
                .property::<Option<gst::Caps>>("caps")
                .unwrap_or_else(gst::Caps::new_empty);
            {
                let caps = caps.make_mut();
                caps.append(gst::Caps::builder("video/x-h264").build());
                caps.append(gst::Caps::builder("video/x-h265").build());
            }
            decode.set_property("caps", &caps);
        }
        let pipeline_weak = pipeline.downgrade();
        let choice = self.decoder_choice();
        let realtime = is_network_uri(uri);
        decode.connect_pad_added(move |_, pad| {
            let caps = pad.current_caps();
            let name = caps
                .as_ref()
                .and_then(|c| c.structure(0))
                .map(|s| s.name().to_string())
                .unwrap_or_default();
            if let Some(ring) = &clip_ring
                && (name == "video/x-h264" || name == "video/x-h265")
            {
                let Some(pipeline) = pipeline_weak.upgrade() else {
                    return;
                };
                if let Err(e) =
                    encoded_branch(&pipeline, pad, &name, ring.clone(), &link, &choice, realtime)
                {
                    tracing::warn!(camera = %link.camera, error = %e, "could not build the clip branch");
                }
                return;
            }
            link.link(pad);
        });
        // A live stream runs on the realtime clock, so running times map to wall-clock times.
        let realtime = is_network_uri(uri);
        if realtime {
            let clock = glib::Object::builder::<gst::SystemClock>()
                .property("clock-type", gst::ClockType::Realtime)
                .build();
            pipeline.use_clock(Some(&clock));
        }
        Ok(Connection {
            pipeline,
            sink,
            convert,
            rate: rate.map(|(rate, _)| rate),
            realtime,
            heartbeat,
            keyframes,
        })
    }
}

/// Links a decoded video pad to the analysis path, setting the scale on the way.
struct RawLink {
    first: glib::WeakRef<gst::Element>,
    scale: glib::WeakRef<gst::Element>,
    camera: DeviceId,
    max_size: Option<(u32, u32)>,
}

impl RawLink {
    fn link(&self, pad: &gst::Pad) {
        let (Some(first), Some(scale)) = (self.first.upgrade(), self.scale.upgrade()) else {
            return;
        };
        let caps = pad.current_caps();
        let structure = caps.as_ref().and_then(|c| c.structure(0));
        if !structure.is_some_and(|s| s.name().starts_with("video/")) {
            return;
        }
        // Scale down to what the detector needs, once, while converting.
        if let (Some((max_w, max_h)), Some(s)) = (self.max_size, structure)
            && let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height"))
            && let Some((w, h)) = fit_within(w, h, max_w, max_h)
        {
            let par = s
                .get::<gst::Fraction>("pixel-aspect-ratio")
                .unwrap_or_else(|_| gst::Fraction::new(1, 1));
            scale.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("format", "BGR")
                    .field("width", w)
                    .field("height", h)
                    .field("pixel-aspect-ratio", par)
                    .build(),
            );
        }
        let Some(sink_pad) = first.static_pad("sink") else {
            return;
        };
        if !sink_pad.is_linked()
            && let Err(e) = pad.link(&sink_pad)
        {
            tracing::warn!(camera = %self.camera, error = ?e, "could not link the decoded video pad");
        }
    }
}

/// `pad` (H.264 or H.265) ─► parser (SPS/PPS at every keyframe) ─► tee ─► decodebin ─► analysis
///                                                                    └─► appsink (ring)
fn encoded_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    name: &str,
    ring: crate::clips::EncodedRing,
    link: &RawLink,
    choice: &crate::config::DecoderChoice,
    realtime: bool,
) -> Result<(), String> {
    let make = |factory: &str| {
        gst::ElementFactory::make(factory)
            .build()
            .map_err(|_| format!("missing element {factory}"))
    };
    let parse = make(if name == "video/x-h265" {
        "h265parse"
    } else {
        "h264parse"
    })?;
    parse.set_property("config-interval", -1i32);
    let filter = make("capsfilter")?;
    filter.set_property(
        "caps",
        gst::Caps::builder(name)
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
    );
    let tee = make("tee")?;
    let decoder = make("decodebin")?;
    select_decoder(&decoder, choice.clone());
    // No queues: the decoder runs in the streaming thread as it does without clips, and the
    // ring's appsink never blocks (it drops rather than wait, and does not sync).
    let sink = crate::clips::ring_sink(ring, pipeline, realtime);
    let elements = [&parse, &filter, &tee, &decoder, sink.upcast_ref()];
    pipeline.add_many(elements).map_err(|e| e.to_string())?;
    gst::Element::link_many([&parse, &filter, &tee]).map_err(|e| e.to_string())?;
    gst::Element::link_many([&tee, &decoder]).map_err(|e| e.to_string())?;
    gst::Element::link_many([&tee, sink.upcast_ref()]).map_err(|e| e.to_string())?;
    let raw = RawLink {
        first: link.first.clone(),
        scale: link.scale.clone(),
        camera: link.camera.clone(),
        max_size: link.max_size,
    };
    decoder.connect_pad_added(move |_, pad| raw.link(pad));
    for element in elements {
        element
            .sync_state_with_parent()
            .map_err(|e| e.to_string())?;
    }
    let sink_pad = parse
        .static_pad("sink")
        .ok_or_else(|| "parser without a sink pad".to_string())?;
    pad.link(&sink_pad).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// A connection's pipeline and the elements the pump reads.
pub(super) struct Connection {
    pub(super) pipeline: gst::Pipeline,
    pub(super) sink: gst_app::AppSink,
    /// Its sink pad's caps give the camera's own resolution.
    pub(super) convert: gst::Element,
    /// Counts the frames it dropped to hold the analysis rate.
    pub(super) rate: Option<gst::Element>,
    /// The pipeline runs on the realtime clock (live streams).
    pub(super) realtime: bool,
    /// When the decoder last delivered a frame (or, key frames only, the stream one).
    pub(super) heartbeat: Arc<Heartbeat>,
    /// What reaches the decoder (`keyframes_only`).
    pub(super) keyframes: Arc<KeyframeGate>,
}

/// When a connection's decoder last delivered a frame, set from its streaming thread.
#[derive(Debug)]
pub(super) struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one; 0 while no frame has come.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Heartbeat {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_ms
            .store(ms.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last decoded frame; `None` before the first.
    pub(super) fn quiet(&self) -> Option<Duration> {
        match self.last_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }
}

/// `(w, h)` scaled down to fit `max_w` x `max_h`, keeping its aspect ratio; `None` when it
/// fits already.
pub(super) fn fit_within(w: i32, h: i32, max_w: u32, max_h: u32) -> Option<(i32, i32)> {
    let (w, h) = (u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    if w == 0 || h == 0 || (w <= max_w && h <= max_h) {
        return None;
    }
    let scale = (f64::from(max_w) / f64::from(w)).min(f64::from(max_h) / f64::from(h));
    let fit = |v: u32| ((f64::from(v) * scale).round() as i32).max(1);
    Some((fit(w), fit(h)))
}

/// The decoded stream's own size, before scaling.
pub(super) fn native_size(convert: &gst::Element) -> Option<(u32, u32)> {
    let caps = convert.static_pad("sink")?.current_caps()?;
    let s = caps.structure(0)?;
    let (w, h) = (s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?);
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

/// Gives the source element the camera's network settings and credentials, where it takes
/// them (rtspsrc, souphttpsrc).
fn configure_source(
    camera: &DeviceId,
    element: &gst::Element,
    options: &GstSourceOptions,
    credentials: Option<&Credentials>,
) {
    let factory = element
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    let micros = u64::try_from(options.timeout.as_micros()).unwrap_or(u64::MAX);
    if factory == "rtspsrc" {
        let protocols = match options.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp+udp-mcast",
            Transport::Auto => "udp+udp-mcast+tcp",
        };
        element.set_property_from_str("protocols", protocols);
        element.set_property("latency", options.latency_ms);
        element.set_property("tcp-timeout", micros);
        element.set_property("timeout", micros);
        // Frame times from the sender's clock (RTCP sender reports), where it is within 3 s of
        // ours; beyond that the arrival time is kept.
        element.set_property("ntp-sync", true);
        element.set_property("max-ts-offset", 3_000_000_000i64);
        if element.has_property("add-reference-timestamp-meta") {
            element.set_property("add-reference-timestamp-meta", true);
        }
    } else if element.has_property_with_type("timeout", u32::static_type()) {
        // souphttpsrc: whole seconds.
        element.set_property("timeout", options.timeout.as_secs().clamp(1, 3600) as u32);
    }
    let Some(credentials) = credentials else {
        return;
    };
    let takes = |name: &str| element.has_property_with_type(name, String::static_type());
    if takes("user-id") && takes("user-pw") {
        element.set_property("user-id", credentials.user.as_str());
        element.set_property("user-pw", credentials.password.expose());
        tracing::debug!(camera = %camera, element = %factory, "credentials set on the source element");
    } else {
        tracing::warn!(camera = %camera, element = %factory, "the source element takes no credentials; the user name and password are not used");
    }
}
