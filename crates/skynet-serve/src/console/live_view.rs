//! Live view (issue 25 part 2): what the console asks of the pipeline for
//! `GET /api/v1/cameras/{id}/live.mp4`.
//!
//! The pipeline (see the `skynet` binary) fans each camera's encoded stream out to its viewers
//! and remuxes it to fragmented MP4 (a masked camera's is transcoded with its masks blurred);
//! the console only streams the bytes it is handed.

use skynet_core::DeviceId;

/// Why a viewer was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveRefusal {
    /// The camera has no encoded stream to serve (live view off for it, a file camera, or
    /// not connected yet).
    NotStreaming,
    /// The camera has `[api] live.max_viewers_per_camera` viewers already.
    CameraFull,
    /// The node has `[api] live.max_viewers` viewers already.
    NodeFull,
    /// The camera's video may not be served as it is (privacy masks, and no blurred
    /// transcode for it). The `skynet` binary transcodes masked cameras with the masks
    /// blurred instead (`[api] live.masked_width`), so it does not answer this.
    Masked,
}

/// The pipeline's side of live view.
pub trait LiveVideo: Send + Sync {
    /// A new viewer of `camera`: fragmented MP4 bytes (`ftyp` + `moov`, then `moof`/`mdat`
    /// fragments), ending when the camera stops or the viewer falls too far behind.
    fn open(&self, camera: &DeviceId) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, LiveRefusal>;
}
