//! A camera decoded by GStreamer: `uridecodebin ! videoconvert ! BGR appsink`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use skynet_core::{CameraId, Frame, FrameInfo, PixelOrder, Shutdown};

use crate::{FrameOutput, FrameSource, IngestError, SourceExit, SourceStats};

#[derive(Debug, Clone)]
pub struct GstSourceOptions {
    /// A URI (`file://`, `rtsp://`, `http://`) or a local path.
    pub uri: String,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Pace a file at its own frame rate, as a live camera would deliver it.
    pub realtime: bool,
    /// Threads for colour conversion.
    pub convert_threads: u32,
}

pub struct GstSource {
    camera: CameraId,
    options: GstSourceOptions,
    stats: SourceStats,
}

const PULL_TIMEOUT: Duration = Duration::from_millis(100);

impl GstSource {
    pub fn new(camera: CameraId, options: GstSourceOptions) -> Self {
        Self {
            camera,
            options,
            stats: SourceStats::default(),
        }
    }

    /// Turns a local path into a `file://` URI; leaves URIs alone.
    pub fn resolve_uri(camera: &CameraId, uri: &str) -> Result<String, IngestError> {
        if has_uri_scheme(uri) {
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
                uri: uri.to_string(),
                reason: e.to_string(),
            })
    }

    fn build(&self, uri: &str) -> Result<(gst::Pipeline, gst_app::AppSink), IngestError> {
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
            let Some(convert) = convert_weak.upgrade() else { return };
            let is_video = pad
                .current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                .unwrap_or(false);
            let Some(sink_pad) = convert.static_pad("sink") else { return };
            if is_video && !sink_pad.is_linked()
                && let Err(e) = pad.link(&sink_pad)
            {
                tracing::warn!(camera = %camera, error = ?e, "could not link the decoded video pad");
            }
        });
        Ok((pipeline, sink))
    }

    fn frame_from(
        &self,
        sample: &gst::Sample,
        seq: u64,
        started: DateTime<Utc>,
    ) -> Result<Frame, IngestError> {
        let format_err = |reason: &str| IngestError::Format {
            camera: self.camera.clone(),
            reason: reason.to_string(),
        };
        let caps = sample
            .caps()
            .ok_or_else(|| format_err("sample without caps"))?;
        let s = caps.structure(0).ok_or_else(|| format_err("empty caps"))?;
        let width = s
            .get::<i32>("width")
            .map_err(|_| format_err("caps without width"))?;
        let height = s
            .get::<i32>("height")
            .map_err(|_| format_err("caps without height"))?;
        let (width, height) = (
            u32::try_from(width).unwrap_or(0),
            u32::try_from(height).unwrap_or(0),
        );
        if width == 0 || height == 0 {
            return Err(format_err("zero-sized frame"));
        }
        let buffer = sample
            .buffer()
            .ok_or_else(|| format_err("sample without buffer"))?;
        let map = buffer
            .map_readable()
            .map_err(|_| format_err("unreadable buffer"))?;
        let stride = map.len() / height as usize;
        if stride < width as usize * 3 {
            return Err(format_err(&format!(
                "{} bytes for a {width}x{height} BGR frame",
                map.len()
            )));
        }
        let pts = buffer
            .pts()
            .map(|t| Duration::from_nanos(t.nseconds()))
            .unwrap_or_default();
        let captured_at = started + chrono::Duration::from_std(pts).unwrap_or_default();
        Ok(Frame {
            info: FrameInfo {
                camera: self.camera.clone(),
                seq,
                captured_at,
                decoded_at: std::time::Instant::now(),
                width,
                height,
            },
            stride,
            order: PixelOrder::Bgr,
            data: Arc::from(map.as_slice()),
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
                let mut reason = err.error().to_string();
                if let Some(debug) = err.debug() {
                    reason = format!("{reason} ({debug})");
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

    fn pump(
        &mut self,
        pipeline: &gst::Pipeline,
        sink: &gst_app::AppSink,
        out: &FrameOutput,
        stop: &Shutdown,
    ) -> Result<SourceExit, IngestError> {
        let started = Utc::now();
        let camera = self.camera.to_string();
        let decoded = metrics::counter!("skynet_frames_decoded_total", "camera" => camera.clone());
        let invalid = metrics::counter!("skynet_frames_invalid_total", "camera" => camera.clone());
        let mut seq = 0u64;
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
                continue;
            };
            // One malformed frame is skipped and counted; the stream goes on.
            let frame = match self.frame_from(&sample, seq, started) {
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
            seq += 1;
            if self.options.max_frames.is_some_and(|max| seq >= max) {
                return Ok(SourceExit::FrameLimit);
            }
        }
    }
}

/// `scheme://...` with a scheme as RFC 3986 defines it.
fn has_uri_scheme(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

impl FrameSource for GstSource {
    fn camera(&self) -> &CameraId {
        &self.camera
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn run(&mut self, out: &FrameOutput, stop: &Shutdown) -> Result<SourceExit, IngestError> {
        crate::init()?;
        let uri = Self::resolve_uri(&self.camera, &self.options.uri)?;
        let (pipeline, sink) = self.build(&uri)?;
        let span = tracing::info_span!("source", camera = %self.camera, uri = %uri);
        let _enter = span.enter();
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
        tracing::info!("stream started");
        let result = self.pump(&pipeline, &sink, out, stop);
        let _ = pipeline.set_state(gst::State::Null);
        match &result {
            Ok(exit) => tracing::info!(?exit, "stream ended"),
            Err(e) => tracing::warn!(error = %e, "stream failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!has_uri_scheme("C:/video.avi"));
    }
}
