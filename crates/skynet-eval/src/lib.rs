//! Engineers' tools (`skynet eval`): how many real events a config misses, and how many
//! false alarms per camera and hour it costs, before the change goes live.
//!
//! - [`labels`]: labelled events (JSON Lines), checked against the config's cameras and
//!   cells, then placed on each camera's timeline.
//! - [`score`]: incidents matched against labels: precision, recall, F1, false alarms per
//!   hour of footage, detection delays, per category, per camera and overall.
//! - [`objects`]: object-level labels (MOTChallenge `gt.txt`): per-class precision, recall
//!   and AP at IoU 0.5.
//! - [`report`]: `report.json` and `report.md`.
//! - [`sweep`]: `--sweep KEY=FROM:TO:STEP` axes, config overrides (`--set KEY=VALUE`), the
//!   grid of points, the recommended operating point, `sweep.json` and `sweep.md`.
//! - [`plot`]: the precision–recall curve and false alarms per hour against each swept
//!   value, as SVG and PNG.

pub mod labels;
pub mod objects;
pub mod plot;
pub mod report;
pub mod score;
pub mod sweep;

use std::path::PathBuf;

/// An input file (labels, `gt.txt`) that cannot be read, or a line of it that is wrong: the
/// error names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not what the file holds: names the file, the line and what is wrong.
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}
