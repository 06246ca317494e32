//! The camera's URI: a local path becomes a `file://` URI, and credentials are cut out of it
//! for the source element, so GStreamer never sees them.

use std::path::Path;

use gstreamer as gst;
use skynet_core::{Credentials, DeviceId, redact_uri, split_credentials};

use super::GstSource;
use crate::IngestError;
use crate::config::uri_scheme;

impl GstSource {
    /// Turns a local path into a `file://` URI; leaves URIs alone. Relative paths are taken
    /// from the current directory (a config's paths are already absolute after validation).
    pub fn resolve_uri(camera: &DeviceId, uri: &str) -> Result<String, IngestError> {
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

    /// The URI GStreamer gets, without credentials (they go to the source element as
    /// properties; validation refuses URIs whose credentials cannot be split out), and the
    /// credentials: those configured, else those that were in the URI.
    pub(super) fn pipeline_uri(&self) -> Result<(String, Option<Credentials>), IngestError> {
        let (clean, from_uri) = split_credentials(&self.options.uri);
        let credentials = self.options.credentials.clone().or(from_uri);
        let uri = Self::resolve_uri(&self.camera, &clean)?;
        Ok((uri, credentials))
    }
}
