//! Incident snapshots: the frame an incident's new detections came from, annotated (boxes,
//! labels, the camera's zones) with every privacy mask blurred, as a JPEG beside the outbox.
//!
//! "Snapshot" is the word for these images throughout; the config table (`[evidence]`), the
//! metrics (`skynet_evidence_*`) and the incident's `evidence` field keep their public names.
//!
//! - [`settings`]: the `[evidence]` table as [`SnapshotSettings`]; [`SnapshotConfig`] once
//!   checked.
//! - [`draw`]: [`render`], the annotated image; [`font`]: the bitmap font of its labels.
//! - [`blur`]: [`blur_polygons`], the privacy masks.
//! - [`store`]: [`SnapshotStore`], JPEG encoding, the SHA-256 the incident references, and
//!   the file written atomically as `<dir>/<incident id>/<revision>.jpg`.
//! - [`sweeper`]: [`sweep`] and [`spawn_sweeper`], files older than `retain_days` deleted,
//!   off the hot path.
//! - [`stage`]: [`SnapshotStage`], which picks the frame for each incident revision with new
//!   detections, within the per-incident interval and the overall rate.

use std::path::PathBuf;

pub mod blur;
mod describe;
pub mod draw;
pub mod font;
pub mod settings;
pub mod stage;
pub mod store;
pub mod sweeper;

pub use blur::blur_polygons;
pub use describe::describe_metrics;
pub use draw::{Annotations, boxes_on_image, render, to_rgb};
pub use settings::{ClipSettings, ClipsConfig, SnapshotConfig, SnapshotSettings};
pub use stage::SnapshotStage;
pub use store::{SnapshotStore, Stored, sha256_hex};
pub use sweeper::{enforce_budget, spawn_sweeper, spawn_sweeper_with_budget, sweep};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "the frame's pixels are shorter than its size says ({width}x{height}, stride {stride})"
    )]
    ShortImage {
        width: u32,
        height: u32,
        stride: usize,
    },
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
    #[error("incident id `{0}` cannot name a directory")]
    BadIncidentId(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
