//! Labelled events: JSON Lines, one event per line.
//!
//! `{"camera": "cam-street-01", "category": "restricted_area_intrusion", "start_s": 12.0,
//! "end_s": 30.5}`: offsets are seconds from the camera's first frame; `start`/`end` in
//! RFC 3339 instead; `grid` may stand instead of `camera`.
//!
//! - Exactly one of `camera` and `grid`; `category`; either both `start_s` and `end_s`
//!   (seconds from the first frame: of the camera, or for a grid the earliest first frame of
//!   its cameras) or both `start` and `end` (RFC 3339), never a mix.
//! - Blank lines and lines starting with `#` are skipped; unknown fields are refused.
//! - `end` may equal `start` (an instant), never precede it; offsets are finite and not
//!   negative.
//! - Every error names the file and the 1-based line.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
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

/// A labels file or line that cannot be taken (see [`crate::InputError`]).
pub type LabelError = crate::InputError;

impl Target {
    /// The camera or grid id.
    pub fn id(&self) -> &str {
        match self {
            Target::Camera(id) | Target::Grid(id) => id,
        }
    }
}

impl std::fmt::Display for Target {
    /// `camera ID` or `grid ID`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Camera(id) => write!(f, "camera {id}"),
            Target::Grid(id) => write!(f, "grid {id}"),
        }
    }
}

/// A line as written (every field optional, so that the checks can say what is missing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    camera: Option<String>,
    grid: Option<String>,
    category: Option<String>,
    start_s: Option<f64>,
    end_s: Option<f64>,
    start: Option<String>,
    end: Option<String>,
}

fn line_error(path: &Path, line: usize, reason: impl Into<String>) -> LabelError {
    LabelError::Line {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
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
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut labels = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let label = parse_line(trimmed, line).map_err(|reason| line_error(path, line, reason))?;
        labels.push(label);
    }
    Ok(labels)
}

fn parse_line(text: &str, line: usize) -> Result<Label, String> {
    let raw: RawLabel =
        serde_json::from_str(text).map_err(|e| format!("not a label (JSON object): {e}"))?;
    let target = match (raw.camera, raw.grid) {
        (Some(_), Some(_)) => return Err("both `camera` and `grid`: give exactly one".into()),
        (None, None) => return Err("missing `camera` (or `grid`)".into()),
        (Some(camera), None) => Target::Camera(non_empty("camera", camera)?),
        (None, Some(grid)) => Target::Grid(non_empty("grid", grid)?),
    };
    let category = match raw.category {
        Some(category) => non_empty("category", category)?,
        None => return Err("missing `category`".into()),
    };
    let has_offset = raw.start_s.is_some() || raw.end_s.is_some();
    let has_absolute = raw.start.is_some() || raw.end.is_some();
    let span = match (has_offset, has_absolute) {
        (true, true) => {
            return Err(
                "mixes offsets (`start_s`/`end_s`) and RFC 3339 times (`start`/`end`): use one pair"
                    .into(),
            );
        }
        (false, false) => {
            return Err(
                "missing the span: `start_s` and `end_s` (seconds from the first frame) \
                 or `start` and `end` (RFC 3339)"
                    .into(),
            );
        }
        (true, false) => {
            let start_s = raw.start_s.ok_or("`end_s` without `start_s`")?;
            let end_s = raw.end_s.ok_or("`start_s` without `end_s`")?;
            for (name, value) in [("start_s", start_s), ("end_s", end_s)] {
                if !value.is_finite() {
                    return Err(format!("`{name}` is not a finite number"));
                }
                if value < 0.0 {
                    return Err(format!("`{name}` is negative ({value})"));
                }
            }
            if end_s < start_s {
                return Err(format!("`end_s` ({end_s}) is before `start_s` ({start_s})"));
            }
            Span::Offset { start_s, end_s }
        }
        (false, true) => {
            let start = raw.start.ok_or("`end` without `start`")?;
            let end = raw.end.ok_or("`start` without `end`")?;
            let start = rfc3339("start", &start)?;
            let end = rfc3339("end", &end)?;
            if end < start {
                return Err(format!(
                    "`end` ({}) is before `start` ({})",
                    end.to_rfc3339(),
                    start.to_rfc3339()
                ));
            }
            Span::Absolute { start, end }
        }
    };
    Ok(Label {
        line,
        target,
        category,
        span,
    })
}

fn non_empty(field: &str, value: String) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err(format!("`{field}` is empty"))
    } else {
        Ok(value.to_string())
    }
}

fn rfc3339(field: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{field}` is not an RFC 3339 time ({value:?}): {e}"))
}

/// A short list of known ids for an error message (at most 10, then how many more).
fn known_list(ids: &BTreeSet<&str>) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    const SHOWN: usize = 10;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

/// Checks every label's camera or grid against the config's (`cameras`: id and grid).
/// The first unknown one (in line order) is the error; it names the file, the line and the
/// id, and lists the known ones briefly.
pub fn check_targets(
    path: &Path,
    labels: &[Label],
    cameras: &[(String, String)],
) -> Result<(), LabelError> {
    let camera_ids: BTreeSet<&str> = cameras.iter().map(|(c, _)| c.as_str()).collect();
    let grid_ids: BTreeSet<&str> = cameras.iter().map(|(_, g)| g.as_str()).collect();
    let mut ordered: Vec<&Label> = labels.iter().collect();
    ordered.sort_by_key(|l| l.line);
    for label in ordered {
        match &label.target {
            Target::Camera(id) if !camera_ids.contains(id.as_str()) => {
                return Err(line_error(
                    path,
                    label.line,
                    format!(
                        "unknown camera `{id}` (the config's cameras: {})",
                        known_list(&camera_ids)
                    ),
                ));
            }
            Target::Grid(id) if !grid_ids.contains(id.as_str()) => {
                return Err(line_error(
                    path,
                    label.line,
                    format!(
                        "unknown grid `{id}` (the config's grids: {})",
                        known_list(&grid_ids)
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Seconds as a time span (to the microsecond); `None` when out of range.
fn seconds(s: f64) -> Option<TimeDelta> {
    let micros = (s * 1e6).round();
    if !micros.is_finite() || micros.abs() >= i64::MAX as f64 {
        return None;
    }
    Some(TimeDelta::microseconds(micros as i64))
}

/// Places the labels on the run's timeline (offsets from each camera's first frame).
///
/// - An offset on a camera counts from that camera's first frame; on a grid, from the
///   earliest first frame of the grid's cameras.
/// - Every label's camera (or grid) must have footage in the run, whatever its span's form:
///   a label nothing was run on is an error naming the file, the line and the id.
/// - The result keeps the labels' order.
pub fn resolve(
    path: &Path,
    labels: &[Label],
    footage: &[Footage],
) -> Result<Vec<ResolvedLabel>, LabelError> {
    labels
        .iter()
        .map(|label| {
            let origin = match &label.target {
                Target::Camera(id) => footage
                    .iter()
                    .filter(|f| &f.camera == id)
                    .map(|f| f.first_frame)
                    .min(),
                Target::Grid(id) => footage
                    .iter()
                    .filter(|f| &f.grid == id)
                    .map(|f| f.first_frame)
                    .min(),
            };
            let Some(origin) = origin else {
                let what = match &label.target {
                    Target::Camera(id) => format!("camera `{id}` has no footage in this run"),
                    Target::Grid(id) => {
                        format!("grid `{id}` has no camera with footage in this run")
                    }
                };
                return Err(line_error(path, label.line, what));
            };
            let (start, end) = match &label.span {
                Span::Absolute { start, end } => (*start, *end),
                Span::Offset { start_s, end_s } => {
                    let at = |s: f64| seconds(s).and_then(|d| origin.checked_add_signed(d));
                    match (at(*start_s), at(*end_s)) {
                        (Some(start), Some(end)) => (start, end),
                        _ => {
                            return Err(line_error(
                                path,
                                label.line,
                                "offset out of range of the calendar",
                            ));
                        }
                    }
                }
            };
            Ok(ResolvedLabel {
                line: label.line,
                target: label.target.clone(),
                category: label.category.clone(),
                start,
                end,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("labels.jsonl")
    }

    fn error_of(text: &str) -> (usize, String) {
        match parse_labels_str(path(), text) {
            Err(LabelError::Line { line, reason, .. }) => (line, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_offsets_absolute_grid_comments_and_blank_lines() {
        let text = "# labels\n\
            {\"camera\": \"cam-street-01\", \"category\": \"restricted_area_intrusion\", \"start_s\": 12.0, \"end_s\": 30.5}\n\
            \n   \n\
            {\"grid\": \"g1\", \"category\": \"loitering\", \"start\": \"2026-01-01T00:00:10Z\", \"end\": \"2026-01-01T01:00:10+01:00\"}\r\n\
            {\"camera\": \"c2\", \"category\": \"x\", \"start_s\": 5, \"end_s\": 5}\n";
        let labels = parse_labels_str(path(), text).unwrap();
        assert_eq!(
            labels,
            vec![
                Label {
                    line: 2,
                    target: Target::Camera("cam-street-01".into()),
                    category: "restricted_area_intrusion".into(),
                    span: Span::Offset {
                        start_s: 12.0,
                        end_s: 30.5
                    },
                },
                Label {
                    line: 5,
                    target: Target::Grid("g1".into()),
                    category: "loitering".into(),
                    span: Span::Absolute {
                        start: t("2026-01-01T00:00:10Z"),
                        end: t("2026-01-01T00:00:10Z"),
                    },
                },
                Label {
                    line: 6,
                    target: Target::Camera("c2".into()),
                    category: "x".into(),
                    span: Span::Offset {
                        start_s: 5.0,
                        end_s: 5.0
                    },
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_name_the_line_and_the_fault() {
        let good = "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n";
        let cases: &[(&str, &str)] = &[
            ("{\"camera\": \"c\", \"category\": ", "not a label"),
            ("[1, 2]", "not a label"),
            (
                "{\"camera\": \"c\", \"grid\": \"g\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}",
                "both `camera` and `grid`",
            ),
            (
                "{\"category\": \"k\", \"start_s\": 1, \"end_s\": 2}",
                "missing `camera` (or `grid`)",
            ),
            (
                "{\"camera\": \"c\", \"start_s\": 1, \"end_s\": 2}",
                "missing `category`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"  \", \"start_s\": 1, \"end_s\": 2}",
                "`category` is empty",
            ),
            (
                "{\"camera\": \"\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}",
                "`camera` is empty",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 1, \"end\": \"2026-01-01T00:00:00Z\"}",
                "mixes offsets",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\"}",
                "missing the span",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 1}",
                "`start_s` without `end_s`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"end_s\": 1}",
                "`end_s` without `start_s`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start\": \"2026-01-01T00:00:00Z\"}",
                "`start` without `end`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 3, \"end_s\": 2}",
                "`end_s` (2) is before `start_s` (3)",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": -1, \"end_s\": 2}",
                "`start_s` is negative",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 1e999, \"end_s\": 2}",
                "not a label",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start\": \"2026-01-01T00:00:10Z\", \"end\": \"2026-01-01T00:00:00Z\"}",
                "`end` (2026-01-01T00:00:00+00:00) is before `start`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start\": \"yesterday\", \"end\": \"2026-01-01T00:00:00Z\"}",
                "`start` is not an RFC 3339 time",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2, \"level\": \"I\"}",
                "unknown field `level`",
            ),
            (
                "{\"camera\": \"c\", \"category\": \"k\", \"start_s\": \"1\", \"end_s\": 2}",
                "invalid type",
            ),
        ];
        for (bad, expected) in cases {
            let text = format!("{good}# comment\n\n{bad}\n{good}");
            let (line, reason) = error_of(&text);
            assert_eq!(line, 4, "{bad}");
            assert!(
                reason.contains(expected),
                "{bad}: {reason:?} lacks {expected:?}"
            );
            let message = parse_labels_str(path(), &text).unwrap_err().to_string();
            assert!(message.starts_with("labels.jsonl:4: "), "{message}");
        }
    }

    #[test]
    fn missing_file_is_a_read_error_naming_it() {
        let err = parse_labels(Path::new("/nonexistent/labels.jsonl")).unwrap_err();
        assert!(matches!(err, LabelError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/labels.jsonl"));
    }

    fn cameras() -> Vec<(String, String)> {
        vec![
            ("cam-a".into(), "g1".into()),
            ("cam-b".into(), "g1".into()),
            ("cam-c".into(), "g2".into()),
        ]
    }

    #[test]
    fn unknown_camera_or_grid_is_an_error_naming_line_and_id() {
        let text = "{\"camera\": \"cam-a\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n\
            {\"grid\": \"g2\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n\
            {\"camera\": \"cam-z\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n";
        let labels = parse_labels_str(path(), text).unwrap();
        check_targets(path(), &labels[..2], &cameras()).unwrap();
        let err = check_targets(path(), &labels, &cameras()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.jsonl:3: unknown camera `cam-z` (the config's cameras: cam-a, cam-b, cam-c)"
        );
        let text = "{\"grid\": \"g9\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n";
        let labels = parse_labels_str(path(), text).unwrap();
        let err = check_targets(path(), &labels, &cameras()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.jsonl:1: unknown grid `g9` (the config's grids: g1, g2)"
        );
        let many: Vec<(String, String)> = (0..12)
            .map(|i| (format!("c{i:02}"), "g".to_string()))
            .collect();
        let text = "{\"camera\": \"x\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n";
        let labels = parse_labels_str(path(), text).unwrap();
        let err = check_targets(path(), &labels, &many).unwrap_err();
        assert!(err.to_string().ends_with("c08, c09 and 2 more)"), "{err}");
    }

    fn footage(camera: &str, grid: &str, first: &str) -> Footage {
        Footage {
            camera: camera.into(),
            grid: grid.into(),
            first_frame: t(first),
            last_frame: t(first) + TimeDelta::hours(1),
        }
    }

    #[test]
    fn resolve_places_offsets_from_the_first_frame() {
        let text = "{\"camera\": \"cam-b\", \"category\": \"k\", \"start_s\": 12.0, \"end_s\": 30.5}\n\
            {\"grid\": \"g1\", \"category\": \"k\", \"start_s\": 1, \"end_s\": 2}\n\
            {\"camera\": \"cam-a\", \"category\": \"k\", \"start\": \"2026-01-01T05:00:00Z\", \"end\": \"2026-01-01T05:00:01Z\"}\n";
        let labels = parse_labels_str(path(), text).unwrap();
        let footage = vec![
            footage("cam-a", "g1", "2026-01-01T00:00:10Z"),
            footage("cam-b", "g1", "2026-01-01T00:00:05Z"),
            footage("cam-c", "g2", "2026-01-01T00:00:00Z"),
        ];
        let resolved = resolve(path(), &labels, &footage).unwrap();
        let spans: Vec<_> = resolved.iter().map(|r| (r.line, r.start, r.end)).collect();
        assert_eq!(
            spans,
            vec![
                (1, t("2026-01-01T00:00:17Z"), t("2026-01-01T00:00:35.500Z")),
                (2, t("2026-01-01T00:00:06Z"), t("2026-01-01T00:00:07Z")),
                (3, t("2026-01-01T05:00:00Z"), t("2026-01-01T05:00:01Z")),
            ]
        );
        assert_eq!(resolved[1].target, Target::Grid("g1".into()));

        // A camera (or grid) without footage is an error naming it.
        let err = resolve(path(), &labels, &footage[2..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.jsonl:1: camera `cam-b` has no footage in this run"
        );
        let err = resolve(path(), &labels[1..2], &footage[2..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.jsonl:2: grid `g1` has no camera with footage in this run"
        );
    }
}
