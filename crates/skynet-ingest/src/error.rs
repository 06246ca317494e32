use skynet_core::DeviceId;

/// Why a source failed. Every `uri` here is redacted (no user name or password), because
/// these errors end up in logs, health reasons and `/readyz`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error(
        "camera {camera}: missing GStreamer element `{element}` (install the GStreamer plugin packages with scripts/setup.sh)"
    )]
    MissingElement { camera: DeviceId, element: String },
    /// `uri` here and in `Start` is always redacted ([`skynet_core::redact_uri`]): these
    /// errors reach the log and `/readyz`.
    #[error("camera {camera}: invalid source `{uri}`: {reason}")]
    InvalidUri {
        camera: DeviceId,
        uri: String,
        reason: String,
    },
    #[error("camera {camera}: could not start the stream from {uri}: {reason}")]
    Start {
        camera: DeviceId,
        uri: String,
        reason: String,
    },
    #[error("camera {camera}: stream error from {element}: {reason}")]
    Stream {
        camera: DeviceId,
        element: String,
        reason: String,
    },
    #[error("camera {camera}: unexpected frame format: {reason}")]
    Format { camera: DeviceId, reason: String },
    /// A live stream ended. Cameras do not end, so this is a fault to retry.
    #[error("camera {camera}: the live stream ended")]
    LiveStreamEnded { camera: DeviceId },
    /// No frame for too long while the stream stayed open: restarted like a failure.
    #[error("camera {camera}: no frame for {seconds} s (stalled)")]
    Stalled { camera: DeviceId, seconds: f64 },
    /// An ONVIF camera's device gave no stream address (`kind = "onvif"`); `url` is the
    /// device service's, which holds no credentials.
    #[error("camera {camera}: ONVIF device {url}: {error}")]
    Onvif {
        camera: DeviceId,
        url: String,
        error: crate::onvif::OnvifError,
    },
    #[error("the detection stage has stopped")]
    DownstreamClosed,
}
