//! A camera decoded by GStreamer:
//!
//! ```text
//! uridecodebin ─► [videorate ─► framerate caps] ─► queue ─► videoconvertscale ─► BGR (scaled) ─► appsink
//! ```
//!
//! - The decoder is picked by `uridecodebin` (hardware first when one is installed), unless the
//!   camera's `decoder` says otherwise; a hardware decoder that fails gives way to software.
//! - `videorate` passes on at most the camera's analysis `fps`, before any conversion, so frames
//!   that are not analysed cost no colour conversion.
//! - With `keyframes_only` on (or `auto` deciding so), only key frames reach the decoder: a
//!   probe on its sink pad drops delta frames ([`keyframes`]).
//! - `videoconvertscale` converts and scales in one step to what the detector needs: frames
//!   larger than that are scaled down keeping their aspect ratio. It runs on its own thread
//!   (after a two-buffer queue), beside the decoder.
//! - The appsink's buffers go on without a copy: a [`Frame`] holds the mapped buffer itself.
//!
//! The pipeline never sees credentials: they are cut out of the URI and set as properties
//! on the source element, so nothing GStreamer logs or reports can contain them.
//!
//! The source is split by job: [`graph`] builds a connection's pipeline, [`decoder`] steers
//! the choice of decoder and reports it, [`keyframes`] thins what reaches it, [`clock`] gives frames their event time, and
//! [`uri`] turns the configured URI into what GStreamer and the source element get.

mod clock;
mod decoder;
mod graph;
mod keyframes;
#[cfg(test)]
mod tests;
mod uri;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use skynet_core::{
    Credentials, DeviceId, Frame, FrameData, FrameImage, FrameInfo, PixelOrder, Shutdown,
    redact_uri,
};

use crate::config::{DecoderChoice, KeyframesOnly, Transport, is_network_uri};
use crate::{FrameOutput, FrameSource, IngestError, SourceExit, SourceStats};
use clock::{FileClock, reference_time, running_zero};
pub(crate) use clock::{live_event_time, running_zero as clock_running_zero};
use decoder::DecoderInUse;
use graph::{Connection, native_size};

#[derive(Clone)]
pub struct GstSourceOptions {
    /// A URI (`file://`, `rtsp://`, `http://`, `v4l2://`) or a local path. May hold credentials
    /// (`rtsp://user:pass@host/...`); they go to the source element, never into the pipeline.
    pub uri: String,
    /// Stop after this many frames, counted over the source's whole life (restarts included).
    pub max_frames: Option<u64>,
    /// Pace a file at its own frame rate, as a live camera would deliver it.
    pub realtime: bool,
    /// Threads for colour conversion and scaling.
    pub convert_threads: u32,
    /// Event time of a file's first frame (paced or not); default: the file's modification
    /// time. Network streams follow the wall clock instead.
    pub start_at: Option<DateTime<Utc>>,
    /// Restart when no frame comes for this long (network streams).
    pub stall_timeout: Option<Duration>,
    /// Play a file again when it ends, its timeline going on.
    pub loop_file: bool,
    /// RTSP lower transport.
    pub transport: Transport,
    /// RTSP jitter buffer.
    pub latency_ms: u32,
    /// Connection and read timeout of network sources.
    pub timeout: Duration,
    /// Credentials for the source element; overrides any in `uri`.
    pub credentials: Option<Credentials>,
    pub decoder: DecoderChoice,
    /// At most this many frames per second passed on; `None`: all.
    pub fps: Option<f64>,
    /// Threads of a software decoder; 0: as many as it likes.
    pub decode_threads: u32,
    /// Frames larger than this are scaled down to fit, keeping their aspect ratio.
    pub max_size: Option<(u32, u32)>,
    /// Event clips: a live H.264/H.265 stream's encoded access units, teed off before the
    /// decoder, fill this ring (`clips.rs`). `None`: the decode path alone, as without clips.
    pub clip_ring: Option<crate::clips::EncodedRing>,
    /// Only key frames reach the decoder: on, off, or `auto` (on while `fps` is at or below
    /// the stream's key-frame rate). See `keyframes.rs`.
    pub keyframes_only: KeyframesOnly,
}

impl GstSourceOptions {
    /// Options with every default: no frame limit, as fast as possible, one conversion thread,
    /// every frame at its own size.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            max_frames: None,
            realtime: false,
            convert_threads: 1,
            start_at: None,
            stall_timeout: None,
            loop_file: false,
            transport: Transport::default(),
            latency_ms: 200,
            timeout: Duration::from_secs(10),
            credentials: None,
            decoder: DecoderChoice::default(),
            fps: None,
            max_size: None,
            decode_threads: 0,
            clip_ring: None,
            keyframes_only: KeyframesOnly::default(),
        }
    }
}

// By hand, so that a debug print never shows the password.
impl std::fmt::Debug for GstSourceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstSourceOptions")
            .field("uri", &redact_uri(&self.uri))
            .field("max_frames", &self.max_frames)
            .field("realtime", &self.realtime)
            .field("convert_threads", &self.convert_threads)
            .field("start_at", &self.start_at)
            .field("stall_timeout", &self.stall_timeout)
            .field("loop_file", &self.loop_file)
            .field("transport", &self.transport)
            .field("latency_ms", &self.latency_ms)
            .field("timeout", &self.timeout)
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .field("decoder", &self.decoder)
            .field("fps", &self.fps)
            .field("max_size", &self.max_size)
            .field("decode_threads", &self.decode_threads)
            .field("clip_ring", &self.clip_ring.is_some())
            .field("keyframes_only", &self.keyframes_only)
            .finish()
    }
}

pub struct GstSource {
    camera: DeviceId,
    options: GstSourceOptions,
    live: bool,
    stats: SourceStats,
    /// The next frame's number. Kept here, not per connection, so numbers have no gaps and no
    /// repeats across restarts.
    seq: u64,
    /// `None` for a live source, and for a file until its first connection.
    file_clock: Option<FileClock>,
    /// Set once a hardware decoder failed: software from then on.
    force_software: bool,
    /// The decoder the last connection reported, for its gauge.
    reported_decoder: Option<(String, bool)>,
    /// What reached the decoder at the last report, for its gauge.
    reported_decode_mode: Option<keyframes::DecodeMode>,
}

impl std::fmt::Debug for GstSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstSource")
            .field("camera", &self.camera)
            .field("options", &self.options)
            .field("live", &self.live)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The least time a new connection gets for its first frame before the stall watchdog acts.
const FIRST_FRAME_GRACE: Duration = Duration::from_secs(20);
/// A running stream quiet for this long (or half its stall timeout, if shorter) is `stalled`.
const STALLED_AFTER: Duration = Duration::from_secs(2);
const PULL_TIMEOUT: Duration = Duration::from_millis(100);

impl GstSource {
    pub fn new(camera: DeviceId, options: GstSourceOptions) -> Self {
        Self {
            live: options.realtime || is_network_uri(&options.uri),
            camera,
            options,
            stats: SourceStats::default(),
            seq: 0,
            file_clock: None,
            force_software: false,
            reported_decoder: None,
            reported_decode_mode: None,
        }
    }

    /// Network stream or `realtime` file: timed by the wall clock.
    pub fn is_live(&self) -> bool {
        self.live
    }

    fn frame_from(
        &self,
        sample: &gst::Sample,
        captured_at: DateTime<Utc>,
        native: Option<(u32, u32)>,
    ) -> Result<Frame, IngestError> {
        let format_err = |reason: &str| IngestError::Format {
            camera: self.camera.clone(),
            reason: reason.to_string(),
        };
        let caps = sample
            .caps()
            .ok_or_else(|| format_err("sample without caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| format_err("caps that do not describe raw video"))?;
        if info.format() != gst_video::VideoFormat::Bgr {
            return Err(format_err(&format!("{:?} instead of BGR", info.format())));
        }
        let (width, height) = (info.width(), info.height());
        if width == 0 || height == 0 {
            return Err(format_err("zero-sized frame"));
        }
        let buffer = sample
            .buffer_owned()
            .ok_or_else(|| format_err("sample without buffer"))?;
        // Mapping as a video frame honours a buffer's own layout (its video meta) over the
        // default one the caps imply. The mapped frame travels on as it is: no copy.
        let frame = gst_video::VideoFrame::from_buffer_readable(buffer, &info)
            .map_err(|_| format_err("buffer too small for its caps"))?;
        let row = width as usize * 3;
        let stride = frame
            .plane_stride()
            .first()
            .and_then(|s| usize::try_from(*s).ok())
            .filter(|s| *s >= row)
            .ok_or_else(|| format_err("row stride shorter than a row"))?;
        let len = frame
            .plane_data(0)
            .map_err(|_| format_err("unreadable plane"))?
            .len();
        if len < stride * (height as usize - 1) + row {
            return Err(format_err(&format!(
                "{len} bytes for a {width}x{height} BGR frame with stride {stride}"
            )));
        }
        let (native_width, native_height) = native.unwrap_or((width, height));
        Ok(Frame {
            info: FrameInfo {
                camera: self.camera.clone(),
                seq: self.seq,
                captured_at,
                decoded_at: Instant::now(),
                skipped: 0,
                width: native_width,
                height: native_height,
            },
            image: FrameImage {
                width,
                height,
                stride,
                order: PixelOrder::Bgr,
                data: FrameData::new(MappedImage(frame)),
            },
        })
    }

    fn bus_error(&self, pipeline: &gst::Pipeline) -> Option<IngestError> {
        let bus = pipeline.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                let element = err
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_else(|| "pipeline".into());
                // The debug text may quote the URI; the pipeline's URI has no credentials.
                let mut reason = err.error().to_string();
                if let Some(debug) = err.debug() {
                    // One line, for logs and the health reason.
                    reason = format!("{reason} ({})", debug.replace('\n', " "));
                }
                return Some(IngestError::Stream {
                    camera: self.camera.clone(),
                    element,
                    reason,
                });
            }
        }
        None
    }

    fn limit_reached(&self) -> bool {
        self.options.max_frames.is_some_and(|max| self.seq >= max)
    }

    fn pump(
        &mut self,
        connection: &Connection,
        decoder_in_use: &DecoderInUse,
        out: &FrameOutput,
        stop: &Shutdown,
    ) -> Result<SourceExit, IngestError> {
        let running_zero = running_zero(&connection.pipeline, connection.realtime);
        let camera = self.camera.to_string();
        let decoded = metrics::counter!("skynet_frames_decoded_total", "camera" => camera.clone());
        let invalid = metrics::counter!("skynet_frames_invalid_total", "camera" => camera.clone());
        let dropped_invalid = metrics::counter!("skynet_frames_dropped_total", "camera" => camera.clone(), "reason" => "invalid");
        let skipped_rate = metrics::counter!("skynet_frames_skipped_total", "camera" => camera.clone(), "reason" => "rate");
        let skipped_keyframes = metrics::counter!("skynet_frames_skipped_total", "camera" => camera, "reason" => "keyframes");
        let mut rate_dropped_seen = 0u64;
        let mut keyframes_dropped_seen = 0u64;
        let mut last_sample = Instant::now();
        let mut got_frame = false;
        let mut reported_stall = false;
        let stalled_after = self.options.stall_timeout.map(|t| STALLED_AFTER.min(t / 2));
        // Event clips of a file camera are cut from the file itself: the ring learns where the
        // file's position 0 is in event time.
        let clip_file = match (&self.options.clip_ring, &self.file_clock) {
            (Some(ring), Some(_)) => Self::resolve_uri(&self.camera, &self.options.uri)
                .ok()
                .and_then(|uri| gst::glib::filename_from_uri(&uri).ok())
                .map(|(path, _)| (ring.clone(), path)),
            _ => None,
        };
        let Connection {
            pipeline,
            sink,
            convert,
            rate,
            heartbeat,
            keyframes,
            ..
        } = connection;
        loop {
            if stop.is_triggered() {
                return Ok(SourceExit::Stopped);
            }
            self.report_decode_mode(keyframes);
            let dropped = keyframes.dropped();
            skipped_keyframes.increment(dropped.saturating_sub(keyframes_dropped_seen));
            keyframes_dropped_seen = dropped;
            if let Some(err) = self.bus_error(pipeline) {
                return Err(err);
            }
            let Some(sample) =
                sink.try_pull_sample(gst::ClockTime::from_nseconds(PULL_TIMEOUT.as_nanos() as u64))
            else {
                if sink.is_eos() {
                    return Ok(SourceExit::EndOfStream);
                }
                // Quiet since the last frame decoded (or delivered, if that is later).
                let decoded = heartbeat.quiet();
                let quiet = decoded.map_or(last_sample.elapsed(), |d| d.min(last_sample.elapsed()));
                let flowing = got_frame || decoded.is_some();
                if flowing && !reported_stall && stalled_after.is_some_and(|after| quiet >= after) {
                    reported_stall = true;
                    out.stalled(format!("no frame for {:.1} s", quiet.as_secs_f64()));
                }
                // Connecting and waiting for a first key frame may take a while: the first
                // frame of a connection gets at least FIRST_FRAME_GRACE.
                let limit = self
                    .options
                    .stall_timeout
                    .map(|t| if flowing { t } else { t.max(FIRST_FRAME_GRACE) });
                if let Some(limit) = limit
                    && quiet >= limit
                {
                    return Err(IngestError::Stalled {
                        camera: self.camera.clone(),
                        seconds: limit.as_secs_f64(),
                    });
                }
                continue;
            };
            last_sample = Instant::now();
            reported_stall = false;
            if !got_frame {
                got_frame = true;
                self.report_decoder(decoder_in_use);
            }
            if let Some(rate) = rate {
                let dropped = rate.property::<u64>("drop");
                skipped_rate.increment(dropped.saturating_sub(rate_dropped_seen));
                rate_dropped_seen = dropped;
            }
            let buffer = sample.buffer();
            let pts = buffer.and_then(|b| b.pts());
            // A file restarted after a failure decodes from the start again: skip what was
            // delivered already, so no frame (and no event time) comes twice.
            if let (Some(clock), Some(pts)) = (&self.file_clock, pts)
                && clock.last_pts.is_some_and(|last| pts <= last)
            {
                continue;
            }
            let reference = buffer.and_then(reference_time);
            let captured_at = self.event_time(pts, running_zero, reference);
            // One malformed frame is skipped and counted; the stream goes on.
            let frame = match self.frame_from(&sample, captured_at, native_size(convert)) {
                Ok(frame) => frame,
                Err(e) => {
                    invalid.increment(1);
                    dropped_invalid.increment(1);
                    tracing::warn!(error = %e, "frame skipped");
                    continue;
                }
            };
            if let (Some((ring, path)), Some(pts)) = (&clip_file, pts)
                && let Ok(offset) = i64::try_from(pts.nseconds())
            {
                ring.file_frame(
                    path,
                    captured_at - chrono::Duration::nanoseconds(offset),
                    captured_at,
                );
            }
            decoded.increment(1);
            self.stats.decoded += 1;
            self.stats.dropped += out.send(frame)? as u64;
            self.seq += 1;
            if let Some(clock) = &mut self.file_clock {
                if pts.is_some() {
                    clock.last_pts = pts;
                }
                clock.last_time = Some(captured_at);
            }
            if self.limit_reached() {
                return Ok(SourceExit::FrameLimit);
            }
        }
    }

    /// One connection: builds, plays and pumps a pipeline until it ends.
    fn connect(
        &mut self,
        uri: &str,
        credentials: Option<Credentials>,
        out: &FrameOutput,
        stop: &Shutdown,
    ) -> Result<SourceExit, IngestError> {
        let decoder_in_use = DecoderInUse::default();
        let connection = self.build(uri, credentials, &decoder_in_use)?;
        let pipeline = &connection.pipeline;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let reason = self
                .bus_error(pipeline)
                .map(|e| e.to_string())
                .unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(IngestError::Start {
                camera: self.camera.clone(),
                uri: skynet_core::redact_uri(uri),
                reason,
            });
        }
        tracing::info!(seq = self.seq, "stream started");
        let result = self.pump(&connection, &decoder_in_use, out, stop);
        let _ = pipeline.set_state(gst::State::Null);
        if result.is_err()
            && !self.force_software
            && let Some((name, true)) = decoder_in_use.get()
        {
            // The hardware path may be what failed (a driver, a lost GPU): software next time.
            tracing::warn!(camera = %self.camera, decoder = %name, "the hardware decoder's stream failed; falling back to software decoding");
            self.force_software = true;
        }
        result
    }
}

/// The pixels of a mapped video frame, held by the [`Frame`] itself until the last stage is
/// done with it.
struct MappedImage(gst_video::VideoFrame<gst_video::video_frame::Readable>);

impl AsRef<[u8]> for MappedImage {
    fn as_ref(&self) -> &[u8] {
        self.0.plane_data(0).unwrap_or(&[])
    }
}

impl FrameSource for GstSource {
    fn camera(&self) -> &DeviceId {
        &self.camera
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn run(&mut self, out: &FrameOutput, stop: &Shutdown) -> Result<SourceExit, IngestError> {
        if self.limit_reached() {
            return Ok(SourceExit::FrameLimit);
        }
        crate::init()?;
        let (uri, credentials) = self.pipeline_uri()?;
        self.start_file_clock(&uri);
        // `uri` is without user:password@ but may still hold `?password=`: logged redacted.
        let span = tracing::info_span!(
            "source",
            camera = %self.camera,
            uri = %skynet_core::redact_uri(&uri)
        );
        let _enter = span.enter();
        loop {
            let result = self.connect(&uri, credentials.clone(), out, stop);
            match &result {
                Ok(SourceExit::EndOfStream) if self.options.loop_file && !stop.is_triggered() => {
                    if let Some(clock) = &mut self.file_clock {
                        clock.next_pass();
                    }
                    tracing::info!(seq = self.seq, "file ended; playing it again");
                    continue;
                }
                Ok(exit) => tracing::info!(?exit, seq = self.seq, "stream ended"),
                Err(e) => tracing::debug!(error = %e, "stream failed"),
            }
            return result;
        }
    }
}
