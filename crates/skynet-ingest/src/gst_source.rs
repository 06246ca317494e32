//! A camera decoded by GStreamer: `uridecodebin ! videoconvert ! BGR appsink`.
//!
//! The pipeline never sees credentials: they are cut out of the URI and set as properties
//! on the source element, so nothing GStreamer logs or reports can contain them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use skynet_core::{
    CameraId, Credentials, Frame, FrameInfo, PixelOrder, Shutdown, redact_uri, split_credentials,
};

use crate::config::{is_network_uri, uri_scheme};
use crate::{FrameOutput, FrameSource, IngestError, SourceExit, SourceStats};

#[derive(Clone)]
pub struct GstSourceOptions {
    /// A URI (`file://`, `rtsp://`, `http://`) or a local path. May hold credentials
    /// (`rtsp://user:pass@host/...`); they go to the source element, never into the pipeline.
    pub uri: String,
    /// Stop after this many frames, counted over the source's whole life (restarts included).
    pub max_frames: Option<u64>,
    /// Pace a file at its own frame rate, as a live camera would deliver it.
    pub realtime: bool,
    /// Threads for colour conversion.
    pub convert_threads: u32,
    /// Event time of a file's first frame (paced or not); default: the file's modification
    /// time. Network streams follow the wall clock instead.
    pub start_at: Option<DateTime<Utc>>,
    /// Restart when no frame comes for this long (network streams).
    pub stall_timeout: Option<Duration>,
}

impl GstSourceOptions {
    /// Options with every default: no frame limit, as fast as possible, one conversion thread.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            max_frames: None,
            realtime: false,
            convert_threads: 1,
            start_at: None,
            stall_timeout: None,
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
            .finish()
    }
}

/// A file's timeline, fixed at its first connection and kept across restarts, so a restart
/// neither moves nor repeats event times.
#[derive(Debug, Clone, Copy)]
struct FileClock {
    /// Event time of the first frame.
    epoch: DateTime<Utc>,
    /// PTS of the first frame: some containers do not start at 0.
    first_pts: Option<gst::ClockTime>,
    /// PTS of the last frame delivered; a restart skips up to it.
    last_pts: Option<gst::ClockTime>,
}

pub struct GstSource {
    camera: CameraId,
    options: GstSourceOptions,
    live: bool,
    stats: SourceStats,
    /// The next frame's number. Kept here, not per connection, so numbers have no gaps and no
    /// repeats across restarts.
    seq: u64,
    /// `None` for a live source, and for a file until its first connection.
    file_clock: Option<FileClock>,
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
const PULL_TIMEOUT: Duration = Duration::from_millis(100);

impl GstSource {
    pub fn new(camera: CameraId, options: GstSourceOptions) -> Self {
        Self {
            live: options.realtime || is_network_uri(&options.uri),
            camera,
            options,
            stats: SourceStats::default(),
            seq: 0,
            file_clock: None,
        }
    }

    /// Network stream or `realtime` file: timed by the wall clock.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Turns a local path into a `file://` URI; leaves URIs alone. Relative paths are taken
    /// from the current directory (a config's paths are already absolute after validation).
    pub fn resolve_uri(camera: &CameraId, uri: &str) -> Result<String, IngestError> {
        if uri_scheme(uri).is_some() {
            return Ok(uri.to_string());
        }
        let path = Path::new(uri);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        };
        gst::glib::filename_to_uri(&absolute, None)
            .map(|u| u.to_string())
            .map_err(|e| IngestError::InvalidUri {
                camera: camera.clone(),
                uri: redact_uri(uri),
                reason: e.to_string(),
            })
    }

    /// Builds the pipeline for `uri`, which has no credentials in it.
    fn build(
        &self,
        uri: &str,
        credentials: Option<Credentials>,
    ) -> Result<(gst::Pipeline, gst_app::AppSink), IngestError> {
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
        if let Some(credentials) = credentials {
            // uridecodebin creates its source element (rtspsrc, souphttpsrc, ...) when it
            // starts and announces it here, before it connects.
            let camera = self.camera.clone();
            decode.connect("source-setup", false, move |args| {
                if let Some(Ok(element)) = args.get(1).map(|v| v.get::<gst::Element>()) {
                    set_credentials(&camera, &element, &credentials);
                }
                None
            });
        }
        let convert = make("videoconvert")?;
        if convert.has_property("n-threads") {
            convert.set_property("n-threads", self.options.convert_threads.max(1));
        }
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "BGR")
            .build();
        // A small appsink queue: backpressure (or dropping) is the stage queue's job.
        let sink = gst_app::AppSink::builder()
            .caps(&caps)
            .sync(self.options.realtime)
            .max_buffers(2)
            .build();

        let pipeline = gst::Pipeline::with_name(&format!("camera-{}", self.camera));
        let start_err = |reason: String| IngestError::Start {
            camera: self.camera.clone(),
            uri: uri.to_string(),
            reason,
        };
        pipeline
            .add_many([&decode, &convert, sink.upcast_ref()])
            .map_err(|e| start_err(e.to_string()))?;
        convert.link(&sink).map_err(|e| start_err(e.to_string()))?;

        let convert_weak = convert.downgrade();
        let camera = self.camera.clone();
        decode.connect_pad_added(move |_, pad| {
            let Some(convert) = convert_weak.upgrade() else {
                return;
            };
            let is_video = pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                .unwrap_or(false);
            let Some(sink_pad) = convert.static_pad("sink") else {
                return;
            };
            if is_video
                && !sink_pad.is_linked()
                && let Err(e) = pad.link(&sink_pad)
            {
                tracing::warn!(camera = %camera, error = ?e, "could not link the decoded video pad");
            }
        });
        Ok((pipeline, sink))
    }

    /// Event time of a frame with timestamp `pts`, from a connection made at `connected_at`.
    fn event_time(
        &mut self,
        pts: Option<gst::ClockTime>,
        connected_at: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let Some(pts) = pts else {
            // Without a timestamp the arrival time is the best there is; a fixed fallback
            // would freeze the camera's time.
            return Utc::now();
        };
        match &mut self.file_clock {
            Some(clock) => {
                let first = *clock.first_pts.get_or_insert(pts);
                offset_time(clock.epoch, pts.saturating_sub(first))
            }
            None => offset_time(connected_at, pts),
        }
    }

    fn frame_from(
        &self,
        sample: &gst::Sample,
        captured_at: DateTime<Utc>,
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
            .buffer()
            .ok_or_else(|| format_err("sample without buffer"))?;
        // Mapping as a video frame honours a buffer's own layout (its video meta) over the
        // default one the caps imply.
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|_| format_err("buffer too small for its caps"))?;
        let row = width as usize * 3;
        let stride = frame
            .plane_stride()
            .first()
            .and_then(|s| usize::try_from(*s).ok())
            .filter(|s| *s >= row)
            .ok_or_else(|| format_err("row stride shorter than a row"))?;
        let data = frame
            .plane_data(0)
            .map_err(|_| format_err("unreadable plane"))?;
        if data.len() < stride * (height as usize - 1) + row {
            return Err(format_err(&format!(
                "{} bytes for a {width}x{height} BGR frame with stride {stride}",
                data.len()
            )));
        }
        Ok(Frame {
            info: FrameInfo {
                camera: self.camera.clone(),
                seq: self.seq,
                captured_at,
                decoded_at: std::time::Instant::now(),
                width,
                height,
            },
            stride,
            order: PixelOrder::Bgr,
            data: Arc::from(data),
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
        pipeline: &gst::Pipeline,
        sink: &gst_app::AppSink,
        out: &FrameOutput,
        stop: &Shutdown,
    ) -> Result<SourceExit, IngestError> {
        let connected_at = Utc::now();
        let camera = self.camera.to_string();
        let decoded = metrics::counter!("skynet_frames_decoded_total", "camera" => camera.clone());
        let invalid = metrics::counter!("skynet_frames_invalid_total", "camera" => camera);
        let mut last_sample = std::time::Instant::now();
        let mut got_frame = false;
        loop {
            if stop.is_triggered() {
                return Ok(SourceExit::Stopped);
            }
            if let Some(err) = self.bus_error(pipeline) {
                return Err(err);
            }
            let Some(sample) =
                sink.try_pull_sample(gst::ClockTime::from_nseconds(PULL_TIMEOUT.as_nanos() as u64))
            else {
                if sink.is_eos() {
                    return Ok(SourceExit::EndOfStream);
                }
                // Connecting and waiting for a first key frame may take a while: the first
                // frame of a connection gets at least FIRST_FRAME_GRACE.
                let limit = self.options.stall_timeout.map(|t| {
                    if got_frame {
                        t
                    } else {
                        t.max(FIRST_FRAME_GRACE)
                    }
                });
                if let Some(limit) = limit
                    && last_sample.elapsed() >= limit
                {
                    return Err(IngestError::Stalled {
                        camera: self.camera.clone(),
                        seconds: limit.as_secs_f64(),
                    });
                }
                continue;
            };
            last_sample = std::time::Instant::now();
            got_frame = true;
            let pts = sample.buffer().and_then(|b| b.pts());
            // A file restarted after a failure decodes from the start again: skip what was
            // delivered already, so no frame (and no event time) comes twice.
            if let (Some(clock), Some(pts)) = (&self.file_clock, pts)
                && clock.last_pts.is_some_and(|last| pts <= last)
            {
                continue;
            }
            let captured_at = self.event_time(pts, connected_at);
            // One malformed frame is skipped and counted; the stream goes on.
            let frame = match self.frame_from(&sample, captured_at) {
                Ok(frame) => frame,
                Err(e) => {
                    invalid.increment(1);
                    tracing::warn!(error = %e, "frame skipped");
                    continue;
                }
            };
            decoded.increment(1);
            self.stats.decoded += 1;
            self.stats.dropped += out.send(frame)? as u64;
            self.seq += 1;
            if let Some(clock) = &mut self.file_clock
                && pts.is_some()
            {
                clock.last_pts = pts;
            }
            if self.limit_reached() {
                return Ok(SourceExit::FrameLimit);
            }
        }
    }
}

/// Gives the source element the credentials, if it takes them (`user-id`/`user-pw`: rtspsrc,
/// souphttpsrc).
fn set_credentials(camera: &CameraId, element: &gst::Element, credentials: &Credentials) {
    let factory = element
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    let takes = |name: &str| element.has_property_with_type(name, String::static_type());
    if takes("user-id") && takes("user-pw") {
        element.set_property("user-id", credentials.user.as_str());
        element.set_property("user-pw", credentials.password.as_str());
        tracing::debug!(camera = %camera, element = %factory, "credentials set on the source element");
    } else {
        tracing::warn!(camera = %camera, element = %factory, "the source element takes no credentials; the URI's user name and password are not used");
    }
}

/// `base + offset`; the wall clock where that is beyond chrono's range (a corrupt timestamp),
/// so time goes on rather than stopping.
fn offset_time(base: DateTime<Utc>, offset: gst::ClockTime) -> DateTime<Utc> {
    chrono::Duration::from_std(Duration::from_nanos(offset.nseconds()))
        .ok()
        .and_then(|d| base.checked_add_signed(d))
        .unwrap_or_else(Utc::now)
}

/// A local file's modification time, when `uri` names one.
fn file_mtime(uri: &str) -> Option<DateTime<Utc>> {
    let (path, _) = gst::glib::filename_from_uri(uri).ok()?;
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.into())
}

impl FrameSource for GstSource {
    fn camera(&self) -> &CameraId {
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
        // GStreamer gets the URI without credentials (they go to the source element as
        // properties); validation refuses URIs whose credentials cannot be split out.
        let (clean, credentials) = split_credentials(&self.options.uri);
        let uri = Self::resolve_uri(&self.camera, &clean)?;
        if !is_network_uri(&self.options.uri) && self.file_clock.is_none() {
            let epoch = self
                .options
                .start_at
                .or_else(|| file_mtime(&uri))
                .unwrap_or_else(Utc::now);
            self.file_clock = Some(FileClock {
                epoch,
                first_pts: None,
                last_pts: None,
            });
        }
        let span = tracing::info_span!("source", camera = %self.camera, uri = %uri);
        let _enter = span.enter();
        let (pipeline, sink) = self.build(&uri, credentials)?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let reason = self
                .bus_error(&pipeline)
                .map(|e| e.to_string())
                .unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(IngestError::Start {
                camera: self.camera.clone(),
                uri,
                reason,
            });
        }
        tracing::info!(seq = self.seq, "stream started");
        let result = self.pump(&pipeline, &sink, out, stop);
        let _ = pipeline.set_state(gst::State::Null);
        match &result {
            Ok(exit) => tracing::info!(?exit, seq = self.seq, "stream ended"),
            Err(e) => tracing::debug!(error = %e, "stream failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceConfig;
    use crate::{GstSourceConfig, run_supervised};
    use skynet_core::{
        ComponentHealth, ComponentState, ConfigContext, OverloadPolicy, StageReceiver, Watermark,
        stage_queue,
    };
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::time::Instant;

    fn vtest() -> PathBuf {
        let path = skynet_core::config::data_dir().join("media/vtest.avi");
        assert!(
            path.exists(),
            "{} is missing: run scripts/setup.sh",
            path.display()
        );
        path
    }

    fn output(live: bool) -> (FrameOutput, StageReceiver<Frame>) {
        let (queue, rx) = stage_queue("frames", "test", 1024, OverloadPolicy::Block);
        (FrameOutput::new(queue, Watermark::new(live)), rx)
    }

    fn tiny_backoff(config: &mut GstSourceConfig, max_attempts: u32) {
        config.reconnect.initial_backoff_s = 0.01;
        config.reconnect.max_backoff_s = 0.02;
        config.reconnect.max_attempts = Some(max_attempts);
    }

    fn validated(mut config: GstSourceConfig) -> GstSourceConfig {
        let cx = ConfigContext::new(Path::new("/nonexistent/site.toml"));
        config.validate(&cx).expect("valid config");
        config
    }

    #[test]
    fn paths_become_file_uris_and_uris_stay() {
        let cam = CameraId::new("c");
        assert_eq!(
            GstSource::resolve_uri(&cam, "rtsp://10.0.0.1/stream").unwrap(),
            "rtsp://10.0.0.1/stream"
        );
        assert_eq!(
            GstSource::resolve_uri(&cam, "/tmp/a b.avi").unwrap(),
            "file:///tmp/a%20b.avi"
        );
        assert!(uri_scheme("C:/video.avi").is_none());
    }

    #[test]
    fn options_never_print_the_password() {
        let options = GstSourceOptions::new("rtsp://admin:s3cret@cam/x");
        assert!(!format!("{options:?}").contains("s3cret"));
        let source = GstSource::new(CameraId::new("c"), options);
        assert!(!format!("{source:?}").contains("s3cret"));
        assert!(source.is_live());
    }

    #[test]
    fn replaying_a_file_with_the_same_start_at_gives_the_same_frame_times() {
        let mut config = GstSourceConfig::new(vtest().display().to_string());
        config.max_frames = Some(10);
        config.start_at = Some("2026-01-01T08:00:00Z".parse().unwrap());
        let config = validated(config);
        let start_at = config.start_at.unwrap();

        let replay = || {
            let health = ComponentHealth::detached("cam-replay", "source");
            let mut source = config.build(CameraId::new("cam-replay")).unwrap();
            let (out, rx) = output(config.is_live());
            let exit = run_supervised(
                source.as_mut(),
                &out,
                &Shutdown::new(),
                &health,
                &config.retry_policy(),
            )
            .unwrap();
            assert_eq!(exit, SourceExit::FrameLimit);
            assert_eq!(health.status().unwrap().state, ComponentState::Finished);
            let frames: Vec<Frame> = rx.channel().try_iter().collect();
            assert_eq!(
                out.watermark().current(),
                frames.last().map(|f| f.info.captured_at)
            );
            frames
        };
        let first = replay();
        std::thread::sleep(Duration::from_millis(20));
        let second = replay();
        assert_eq!(first.len(), 10);
        let times = |frames: &[Frame]| -> Vec<DateTime<Utc>> {
            frames.iter().map(|f| f.info.captured_at).collect()
        };
        assert_eq!(times(&first), times(&second));
        for (n, frame) in first.iter().enumerate() {
            assert_eq!(frame.info.seq, n as u64);
            assert_eq!(
                frame.info.captured_at,
                start_at + chrono::Duration::milliseconds(100 * n as i64)
            );
            assert_eq!((frame.info.width, frame.info.height), (768, 576));
            assert!(frame.stride >= 768 * 3);
            assert!(frame.data.len() >= frame.stride * 575 + 768 * 3);
        }
    }

    #[test]
    fn a_file_without_start_at_starts_at_its_modification_time() {
        let path = vtest();
        let modified: DateTime<Utc> = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap()
            .into();
        let mut options = GstSourceOptions::new(path.display().to_string());
        options.max_frames = Some(2);
        let mut source = GstSource::new(CameraId::new("cam-mtime"), options);
        let (out, rx) = output(false);
        source.run(&out, &Shutdown::new()).unwrap();
        let times: Vec<_> = rx
            .channel()
            .try_iter()
            .map(|f| f.info.captured_at)
            .collect();
        assert_eq!(
            times,
            vec![modified, modified + chrono::Duration::milliseconds(100)]
        );
    }

    #[test]
    fn a_restarted_file_resumes_after_its_last_frame_and_seq_carries_on() {
        let mut options = GstSourceOptions::new(vtest().display().to_string());
        options.max_frames = Some(12);
        options.start_at = Some("2026-01-01T08:00:00Z".parse().unwrap());
        let start_at = options.start_at.unwrap();
        let mut source = GstSource::new(CameraId::new("cam-resume"), options);
        let (out, rx) = output(false);

        // Stopped part-way, from outside, as a failure would end it.
        let stop = Shutdown::new();
        let mut frames = Vec::new();
        std::thread::scope(|scope| {
            let producer = scope.spawn(|| source.run(&out, &stop));
            while let Ok(Some(frame)) = rx.recv_timeout(Duration::from_secs(10)) {
                frames.push(frame);
                if frames.len() == 4 {
                    stop.trigger();
                    break;
                }
            }
            assert_eq!(producer.join().unwrap().unwrap(), SourceExit::Stopped);
        });
        frames.extend(rx.channel().try_iter());
        let stopped_after = frames.len();
        assert!((4..12).contains(&stopped_after), "{stopped_after}");

        let exit = source.run(&out, &Shutdown::new()).unwrap();
        assert_eq!(exit, SourceExit::FrameLimit);
        frames.extend(rx.channel().try_iter());
        assert_eq!(frames.len(), 12);
        for (n, frame) in frames.iter().enumerate() {
            assert_eq!(frame.info.seq, n as u64);
            assert_eq!(
                frame.info.captured_at,
                start_at + chrono::Duration::milliseconds(100 * n as i64)
            );
        }
        assert_eq!(source.stats().decoded, 12);
        // The limit holds over the source's life.
        assert_eq!(
            source.run(&out, &Shutdown::new()).unwrap(),
            SourceExit::FrameLimit
        );
    }

    #[test]
    fn a_missing_file_is_retried_max_attempts_times_then_reported_down() {
        let mut config = GstSourceConfig::new("/nonexistent/skynet/missing.avi");
        tiny_backoff(&mut config, 3);
        let config = validated(config);
        let policy = config.retry_policy();
        assert_eq!(policy.max_attempts, Some(3));
        let health = ComponentHealth::detached("cam-missing", "source");
        let mut source = config.build(CameraId::new("cam-missing")).unwrap();
        let (out, rx) = output(false);
        let err =
            run_supervised(source.as_mut(), &out, &Shutdown::new(), &health, &policy).unwrap_err();
        assert!(
            matches!(err, IngestError::Start { .. } | IngestError::Stream { .. }),
            "{err}"
        );
        let status = health.status().unwrap();
        assert_eq!((status.state, status.retries), (ComponentState::Down, 3));
        assert_eq!(status.reason, Some(err.to_string()));
        assert!(rx.channel().try_iter().next().is_none());
    }

    #[test]
    fn credentials_never_appear_in_errors() {
        let mut config = GstSourceConfig::new("rtsp://user:s3cret@127.0.0.1:9/x");
        tiny_backoff(&mut config, 1);
        let config = validated(config);
        assert_eq!(config.display_uri(), "rtsp://127.0.0.1:9/x");
        let health = ComponentHealth::detached("cam-secret", "source");
        let mut source = config.build(CameraId::new("cam-secret")).unwrap();
        let (out, _rx) = output(true);
        let started = Instant::now();
        let err = run_supervised(
            source.as_mut(),
            &out,
            &Shutdown::new(),
            &health,
            &config.retry_policy(),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30));
        let reason = health.status().unwrap().reason.unwrap_or_default();
        for text in [err.to_string(), format!("{err:?}"), reason] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert_eq!(health.status().unwrap().state, ComponentState::Down);
    }

    /// An HTTP server that asks for Basic authentication once, then answers 404; it sends
    /// every request head it receives.
    fn auth_server() -> (u16, crossbeam_channel::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let authorised = head.to_ascii_lowercase().contains("authorization:");
                let answer = if authorised {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"cam\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(answer.as_bytes());
                if tx.send(head).is_err() {
                    return;
                }
            }
        });
        (port, rx)
    }

    #[test]
    fn credentials_reach_the_source_element_but_not_the_pipeline() {
        let (port, requests) = auth_server();
        let mut config = GstSourceConfig::new(format!("http://user:s3cret@127.0.0.1:{port}/x"));
        tiny_backoff(&mut config, 0);
        let config = validated(config);
        let health = ComponentHealth::detached("cam-http", "source");
        let mut source = config.build(CameraId::new("cam-http")).unwrap();
        let (out, _rx) = output(true);
        let err = run_supervised(
            source.as_mut(),
            &out,
            &Shutdown::new(),
            &health,
            &config.retry_policy(),
        )
        .unwrap_err();
        let heads: Vec<String> = requests.try_iter().collect();
        assert!(heads.len() >= 2, "{heads:?}");
        assert!(heads[0].starts_with("GET /x "), "{heads:?}");
        // base64 of "user:s3cret"
        assert!(
            heads.iter().any(|h| h.contains("Basic dXNlcjpzM2NyZXQ=")),
            "{heads:?}"
        );
        // GStreamer's own error text quotes the URI it was given: the one without credentials.
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}/x")), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("user@"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        let reason = health.status().unwrap().reason.unwrap_or_default();
        assert!(!reason.contains("s3cret"), "{reason}");
    }
}
