//! Labelled events: JSON Lines, one event per line.
//!
//! `{"camera": "cam-street-01", "category": "restricted_area_intrusion", "start_s": 12.0,
//! "end_s": 30.5}`: offsets are seconds from the camera's first frame; `start`/`end` in
//! RFC 3339 instead; `grid` may stand instead of `camera`.
//! (Skeleton: the parser is filled in by the scoring work.)

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::score::Footage;

/// What a label is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Camera(String),
    Grid(String),
}

/// When it happened, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Span {
    /// Seconds from the camera's first frame (for a cell: its cameras' earliest first frame).
    Offset { start_s: f64, end_s: f64 },
    Absolute {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

/// One labelled event, as read from its line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Its line in the file (1-based).
    pub line: usize,
    pub target: Target,
    pub category: String,
    pub span: Span,
}

/// A label placed on the run's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedLabel {
    pub line: usize,
    pub target: Target,
    pub category: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a label: names the file, the line and what is wrong.
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Reads a labels file.
pub fn parse_labels(path: &Path) -> Result<Vec<Label>, LabelError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_labels_str(path, &text)
}

/// Parses labels from `text`; errors name `path` and the line.
pub fn parse_labels_str(path: &Path, text: &str) -> Result<Vec<Label>, LabelError> {
    let _ = (path, text);
    Ok(Vec::new())
}

/// Checks every label's camera or grid against the config's (`cameras`: id and grid).
pub fn check_targets(
    path: &Path,
    labels: &[Label],
    cameras: &[(String, String)],
) -> Result<(), LabelError> {
    let _ = (path, labels, cameras);
    Ok(())
}

/// Places the labels on the run's timeline (offsets from each camera's first frame).
pub fn resolve(
    path: &Path,
    labels: &[Label],
    footage: &[Footage],
) -> Result<Vec<ResolvedLabel>, LabelError> {
    let _ = (path, labels, footage);
    Ok(Vec::new())
}
