//! Sweeps: `--sweep KEY=FROM:TO:STEP` axes, the grid of points they make, config overrides
//! (`--set KEY=VALUE`, and each point's swept values), the recommended operating point, and
//! `sweep.json` / `sweep.md`.
//!
//! A key is a dotted path into the config's TOML: `detect.threshold`,
//! `cameras.0.rules.0.min_frames` (a number indexes an array: `[[cameras]]` or an inline
//! array), `risk.levels.iii` (a key of an inline table), `detect.classes.person.min_score`.
//! Overrides are made with `toml_edit`, so the rest of the file (comments, layout, line
//! numbers) stays as written and a config error still names the right line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, Item, Value};

use crate::score::Figures;

/// The most values one axis may have.
pub const MAX_AXIS_VALUES: usize = 1000;
/// The most points a grid may have.
pub const MAX_POINTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A `--sweep` that is not `KEY=FROM:TO:STEP`, or whose range is empty or too long.
    #[error("--sweep {spec:?}: {reason}")]
    Axis { spec: String, reason: String },
    /// A `--set` that is not `KEY=NUMBER`.
    #[error("--set {spec:?}: {reason}")]
    Set { spec: String, reason: String },
    /// The grid is too large, or sweeps one key twice.
    #[error("sweep: {0}")]
    Grid(String),
    /// The config is not TOML.
    #[error("config: {0}")]
    Toml(String),
    /// A key that cannot be set in the config: names the key and what is wrong.
    #[error("config key `{key}`: {reason}")]
    Key { key: String, reason: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One swept key and its values, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<f64>,
}

/// Rounds to 1e-9, so that `0.1 + 2 * 0.1` reads `0.3`.
fn round9(v: f64) -> f64 {
    let r = (v * 1e9).round() / 1e9;
    if r.is_finite() { r } else { v }
}

/// Checks a dotted key: non-empty segments, no spaces.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.split('.').any(|s| s.is_empty()) {
        return Err(format!("`{key}` has an empty segment"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{}` has white space in it", key.escape_debug()));
    }
    Ok(())
}

fn number(text: &str) -> Result<f64, String> {
    let t = text.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{:?} is not a number", t)),
    }
}

/// Parses `KEY=FROM:TO:STEP`: the values from FROM to TO (inclusive, within a float's
/// tolerance) by STEP, each rounded to 1e-9.
pub fn parse_axis(spec: &str) -> Result<Axis, SweepError> {
    let err = |reason: String| SweepError::Axis {
        spec: spec.to_string(),
        reason,
    };
    let (key, range) = spec
        .split_once('=')
        .ok_or_else(|| err("expected KEY=FROM:TO:STEP".into()))?;
    let key = key.trim();
    check_key(key).map_err(err)?;
    let parts: Vec<&str> = range.split(':').collect();
    let [from, to, step] = parts[..] else {
        return Err(err(format!(
            "expected FROM:TO:STEP after `{key}=`, got {range:?}"
        )));
    };
    let from = number(from).map_err(|e| err(format!("FROM: {e}")))?;
    let to = number(to).map_err(|e| err(format!("TO: {e}")))?;
    let step = number(step).map_err(|e| err(format!("STEP: {e}")))?;
    if step <= 0.0 {
        return Err(err(format!("STEP must be above 0, got {step}")));
    }
    if from > to {
        return Err(err(format!("FROM ({from}) is above TO ({to})")));
    }
    // Inclusive of TO: a relative tolerance absorbs 0.1 + 0.1 + 0.1 > 0.3.
    let steps = (to - from) / step;
    let count = (steps + 1e-9 * steps.max(1.0)).floor() + 1.0;
    if !count.is_finite() || count > MAX_AXIS_VALUES as f64 {
        return Err(err(format!(
            "{} values; at most {MAX_AXIS_VALUES}",
            if count.is_finite() {
                format!("{count}")
            } else {
                "too many".into()
            }
        )));
    }
    let values = (0..count as usize)
        .map(|i| round9(from + i as f64 * step))
        .collect();
    Ok(Axis {
        key: key.to_string(),
        values,
    })
}

/// Parses every `--sweep`; a key swept twice is an error, and so is a grid of more than
/// [`MAX_POINTS`] points.
pub fn parse_axes<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Axis>, SweepError> {
    let axes = specs
        .iter()
        .map(|s| parse_axis(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(SweepError::Grid(format!("`{}` is swept twice", a.key)));
        }
    }
    let points = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
    match points {
        Some(n) if n <= MAX_POINTS => Ok(axes),
        _ => Err(SweepError::Grid(format!(
            "the grid has more than {MAX_POINTS} points"
        ))),
    }
}

/// The cartesian product of the axes: the first axis varies slowest, the last fastest; each
/// point lists the keys in the axes' order. No axes make one empty point.
pub fn grid(axes: &[Axis]) -> Vec<Vec<(String, f64)>> {
    let mut points: Vec<Vec<(String, f64)>> = vec![Vec::new()];
    for axis in axes {
        let mut next = Vec::with_capacity(points.len() * axis.values.len());
        for point in &points {
            for &v in &axis.values {
                let mut p = point.clone();
                p.push((axis.key.clone(), v));
                next.push(p);
            }
        }
        points = next;
    }
    points
}

/// Parses `KEY=VALUE` (a number).
pub fn parse_set(spec: &str) -> Result<(String, f64), SweepError> {
    let err = |reason: String| SweepError::Set {
        spec: spec.to_string(),
        reason,
    };
    let (key, value) = spec
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE".into()))?;
    let key = key.trim();
    check_key(key).map_err(err)?;
    let value = number(value).map_err(err)?;
    Ok((key.to_string(), value))
}

/// How a number is written on a command line and in the tables: the shortest text that
/// reads back as the same `f64` (`0.3`, `3`).
pub fn format_value(v: f64) -> String {
    format!("{v}")
}

/// Sets each `(key, value)` in the TOML text, in order (a later one wins), and returns the
/// new text. Everything else in the text stays as written.
///
/// - A number in the path indexes an array (`[[cameras]]`, or an inline array).
/// - An integer stays an integer (a value with a fraction is an error); a float stays a
///   float.
/// - A missing last key in an existing table is added: an integer when the value is whole
///   (a config's float fields read integers too, its integer fields do not read floats),
///   else a float. Added to a `[table]` it is a new line at the table's end.
/// - A missing table or array element on the way is an error naming the key.
pub fn apply_overrides(toml_text: &str, overrides: &[(String, f64)]) -> Result<String, SweepError> {
    let mut doc: DocumentMut = toml_text
        .parse()
        .map_err(|e: toml_edit::TomlError| SweepError::Toml(e.to_string()))?;
    for (key, value) in overrides {
        set_key(&mut doc, key, *value)?;
    }
    Ok(doc.to_string())
}

fn is_array(item: &Item) -> bool {
    matches!(item, Item::ArrayOfTables(_) | Item::Value(Value::Array(_)))
}

fn is_table(item: &Item) -> bool {
    matches!(item, Item::Table(_) | Item::Value(Value::InlineTable(_)))
}

fn array_len(item: &Item) -> usize {
    match item {
        Item::ArrayOfTables(a) => a.len(),
        Item::Value(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "a table",
        },
    }
}

/// One step down, without adding anything.
fn child<'a>(item: &'a Item, seg: &str) -> Option<&'a Item> {
    if is_array(item) {
        seg.parse::<usize>().ok().and_then(|i| item.get(i))
    } else if is_table(item) {
        item.get(seg)
    } else {
        None
    }
}

/// One step down; a missing key of a table is added (as `Item::None`).
fn child_mut<'a>(item: &'a mut Item, seg: &str) -> Option<&'a mut Item> {
    if is_array(item) {
        seg.parse::<usize>().ok().and_then(move |i| item.get_mut(i))
    } else if is_table(item) {
        item.get_mut(seg)
    } else {
        None
    }
}

fn set_key(doc: &mut DocumentMut, key: &str, value: f64) -> Result<(), SweepError> {
    let err = |reason: String| SweepError::Key {
        key: key.to_string(),
        reason,
    };
    check_key(key).map_err(err)?;
    if !value.is_finite() {
        return Err(err(format!("{value} is not a number")));
    }
    let segs: Vec<&str> = key.split('.').collect();
    let (last, path) = segs.split_last().ok_or_else(|| err("empty key".into()))?;

    // First look, changing nothing: every step on the way exists.
    let mut item = doc.as_item();
    for (i, seg) in path.iter().enumerate() {
        let here = segs[..i].join(".");
        let next = child(item, seg);
        item = match next {
            Some(next) if is_array(next) || is_table(next) => next,
            Some(next) => {
                return Err(err(format!(
                    "`{}` is {}, not a table or an array",
                    segs[..=i].join("."),
                    kind(next)
                )));
            }
            None => return Err(err(missing(item, &here, seg))),
        };
    }
    let is_integer = match child(item, last) {
        Some(Item::Value(Value::Integer(_))) => true,
        Some(Item::Value(Value::Float(_))) => false,
        Some(other) => return Err(err(format!("it is {}, not a number", kind(other)))),
        None if is_table(item) => value.fract() == 0.0 && value.abs() < 9.0e15,
        None => return Err(err(missing(item, &path.join("."), last))),
    };
    let new = if is_integer {
        if value.fract() != 0.0 || value.abs() >= 9.0e15 {
            return Err(err(format!(
                "it is an integer, and {} is not a whole number",
                format_value(value)
            )));
        }
        Value::from(value as i64)
    } else {
        Value::from(value)
    };

    // Then the change, in place: the old value's spacing and comment stay.
    let mut item = doc.as_item_mut();
    for seg in &segs {
        item = child_mut(item, seg).ok_or_else(|| err("not found".into()))?;
    }
    match item {
        Item::Value(old) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        slot => *slot = Item::Value(new),
    }
    Ok(())
}

/// Why `seg` is not under `here` (a dotted path, empty for the top).
fn missing(item: &Item, here: &str, seg: &str) -> String {
    let full = if here.is_empty() {
        seg.to_string()
    } else {
        format!("{here}.{seg}")
    };
    if is_array(item) {
        match seg.parse::<usize>() {
            Ok(_) => format!(
                "no `{full}`: `{here}` has {} element{}",
                array_len(item),
                if array_len(item) == 1 { "" } else { "s" }
            ),
            Err(_) => format!("`{here}` is an array: `{seg}` must be an index"),
        }
    } else {
        format!("no `{full}` in the config")
    }
}

/// How one point's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointStatus {
    Ok,
    Failed,
    Cancelled,
}

impl PointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PointStatus::Ok => "ok",
            PointStatus::Failed => "failed",
            PointStatus::Cancelled => "cancelled",
        }
    }
}

/// One point of a sweep: its values and what its evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// The point's number, from 0, in grid order (its report is in `points/NNN/`).
    pub index: usize,
    /// The swept keys' values at this point.
    pub values: BTreeMap<String, f64>,
    pub status: PointStatus,
    /// Why it failed: the first error line of its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The point's directory, relative to the sweep's (`points/003`).
    pub dir: String,
    /// The overall figures (null unless the point finished).
    pub figures: Option<Figures>,
    #[serde(default)]
    pub per_category: BTreeMap<String, Figures>,
    #[serde(default)]
    pub per_camera: BTreeMap<String, Figures>,
}

impl SweepRow {
    /// A row for `point` that has not finished (yet).
    pub fn new(index: usize, point: &[(String, f64)], dir: String, status: PointStatus) -> Self {
        SweepRow {
            index,
            values: point.iter().cloned().collect(),
            status,
            error: None,
            dir,
            figures: None,
            per_category: BTreeMap::new(),
            per_camera: BTreeMap::new(),
        }
    }

    /// `key=value, key=value` in the axes' order.
    pub fn describe(&self, axes: &[Axis]) -> String {
        axes.iter()
            .filter_map(|a| {
                self.values
                    .get(&a.key)
                    .map(|v| format!("{}={}", a.key, format_value(*v)))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The recommended operating point and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Its index in the rows.
    pub index: usize,
    /// The rule that chose it, in words.
    pub criterion: String,
    /// Whether it keeps to the false-alarm limit (false: no point did, and this is the one
    /// with the fewest false alarms per hour).
    pub within_limit: bool,
}

fn per_hour_phrase(max: f64) -> String {
    let v = format_value(max);
    if max == 1.0 {
        format!("{v} false alarm per hour of footage")
    } else {
        format!("{v} false alarms per hour of footage")
    }
}

/// The criterion for a limit, in words.
pub fn criterion(max_false_per_hour: f64) -> String {
    format!(
        "highest recall at no more than {} (ties: higher precision, then fewer false alarms \
         per hour, then the earlier point)",
        per_hour_phrase(max_false_per_hour)
    )
}

/// The highest recall among the finished points with at most `max_false_per_hour` false
/// alarms per hour of footage; ties go to higher precision, then fewer false alarms per
/// hour, then the earlier point. When none keeps to the limit, the point with the fewest
/// false alarms per hour (ties: higher recall, higher precision, earlier), and the criterion
/// says so. `None` when no point finished.
pub fn recommend(rows: &[SweepRow], max_false_per_hour: f64) -> Option<Recommendation> {
    let finished: Vec<(usize, &Figures)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == PointStatus::Ok)
        .filter_map(|(i, r)| r.figures.as_ref().map(|f| (i, f)))
        .collect();
    let key = |f: &Figures| {
        (
            num(f.recall),
            num(f.precision),
            -num(f.false_alarms_per_hour),
        )
    };
    let within = finished
        .iter()
        .filter(|(_, f)| f.false_alarms_per_hour <= max_false_per_hour)
        .fold(None::<(usize, &Figures)>, |best, &(i, f)| match best {
            Some((_, b)) if !greater(key(f), key(b)) => best,
            _ => Some((i, f)),
        });
    if let Some((index, _)) = within {
        return Some(Recommendation {
            index,
            criterion: criterion(max_false_per_hour),
            within_limit: true,
        });
    }
    let fallback_key = |f: &Figures| {
        (
            -num(f.false_alarms_per_hour),
            num(f.recall),
            num(f.precision),
        )
    };
    let fewest = finished
        .iter()
        .fold(None::<(usize, &Figures)>, |best, &(i, f)| match best {
            Some((_, b)) if !greater(fallback_key(f), fallback_key(b)) => best,
            _ => Some((i, f)),
        })?;
    Some(Recommendation {
        index: fewest.0,
        criterion: format!(
            "no point has at most {}: the fewest false alarms per hour instead (ties: higher \
             recall, then higher precision, then the earlier point)",
            per_hour_phrase(max_false_per_hour)
        ),
        within_limit: false,
    })
}

/// NaN counts as the worst.
fn num(v: f64) -> f64 {
    if v.is_nan() { f64::NEG_INFINITY } else { v }
}

fn greater(a: (f64, f64, f64), b: (f64, f64, f64)) -> bool {
    a.0.total_cmp(&b.0)
        .then(a.1.total_cmp(&b.1))
        .then(a.2.total_cmp(&b.2))
        .is_gt()
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepFile {
    pub axes: Vec<Axis>,
    pub max_false_per_hour: f64,
    /// The rule that chose the recommended point (null when no point finished).
    pub criterion: Option<String>,
    /// The recommended point's index in `rows` (null when no point finished).
    pub recommended: Option<usize>,
    /// Whether the recommended point keeps to `max_false_per_hour`.
    pub within_limit: Option<bool>,
    pub points: usize,
    pub ok: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub rows: Vec<SweepRow>,
}

impl SweepFile {
    pub fn new(
        axes: &[Axis],
        rows: &[SweepRow],
        recommendation: Option<&Recommendation>,
        max_false_per_hour: f64,
    ) -> Self {
        let count = |s: PointStatus| rows.iter().filter(|r| r.status == s).count();
        SweepFile {
            axes: axes.to_vec(),
            max_false_per_hour,
            criterion: recommendation.map(|r| r.criterion.clone()),
            recommended: recommendation.map(|r| r.index),
            within_limit: recommendation.map(|r| r.within_limit),
            points: rows.len(),
            ok: count(PointStatus::Ok),
            failed: count(PointStatus::Failed),
            cancelled: count(PointStatus::Cancelled),
            rows: rows.to_vec(),
        }
    }
}

/// Writes `dir/sweep.json` and `dir/sweep.md`; returns what `sweep.json` holds.
pub fn write_sweep(
    dir: &Path,
    axes: &[Axis],
    rows: &[SweepRow],
    recommendation: Option<&Recommendation>,
    max_false_per_hour: f64,
) -> Result<SweepFile, SweepError> {
    let file = SweepFile::new(axes, rows, recommendation, max_false_per_hour);
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| SweepError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| SweepError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(&file).map_err(|e| SweepError::Write {
        path: dir.join("sweep.json"),
        source: std::io::Error::other(e),
    })?;
    write("sweep.json", json + "\n")?;
    write("sweep.md", markdown(&file))?;
    Ok(file)
}

fn fixed(v: f64, places: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.places$}")
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `sweep.md`: the axes, the recommended point and its criterion, and a table of the
/// points (the recommended one marked).
pub fn markdown(file: &SweepFile) -> String {
    let mut out = String::from("# Sweep\n\n");
    let _ = writeln!(
        out,
        "{} point{} ({} ok, {} failed, {} cancelled).\n",
        file.points,
        if file.points == 1 { "" } else { "s" },
        file.ok,
        file.failed,
        file.cancelled
    );
    for a in &file.axes {
        let (lo, hi) = (a.values.first(), a.values.last());
        let _ = writeln!(
            out,
            "- `{}`: {} value{}{}",
            a.key,
            a.values.len(),
            if a.values.len() == 1 { "" } else { "s" },
            match (lo, hi) {
                (Some(lo), Some(hi)) if a.values.len() > 1 =>
                    format!(", {} to {}", format_value(*lo), format_value(*hi)),
                (Some(lo), _) => format!(", {}", format_value(*lo)),
                _ => String::new(),
            }
        );
    }
    out.push('\n');
    match (file.recommended, &file.criterion) {
        (Some(i), Some(c)) => {
            let desc = file
                .rows
                .get(i)
                .map(|r| r.describe(&file.axes))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "**Recommended: point {i}** ({}): {}.\n",
                if desc.is_empty() { "-" } else { &desc },
                c
            );
        }
        _ => out.push_str("No point finished: nothing to recommend.\n\n"),
    }
    out.push_str("| point |");
    for a in &file.axes {
        let _ = write!(out, " `{}` |", cell(&a.key));
    }
    out.push_str(
        " status | precision | recall | F1 | labels | incidents | false alarms | false alarms / h \
         | median delay (s) | worst delay (s) |\n|---|",
    );
    for _ in &file.axes {
        out.push_str("---:|");
    }
    out.push_str("---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, row) in file.rows.iter().enumerate() {
        let mark = file.recommended == Some(i);
        if mark {
            let _ = write!(out, "| **{i} (recommended)** |");
        } else {
            let _ = write!(out, "| {i} |");
        }
        for a in &file.axes {
            let v = row
                .values
                .get(&a.key)
                .map(|v| format_value(*v))
                .unwrap_or_default();
            let _ = write!(out, " {v} |");
        }
        let status = match (&row.status, &row.error) {
            (PointStatus::Failed, Some(e)) => format!("failed: {}", cell(e)),
            (s, _) => s.as_str().to_string(),
        };
        let _ = write!(out, " {status} |");
        match &row.figures {
            Some(f) => {
                let delay = |d: Option<f64>| d.map(|d| fixed(d, 1)).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    " {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    fixed(f.precision, 3),
                    fixed(f.recall, 3),
                    fixed(f.f1, 3),
                    f.labels,
                    f.incidents,
                    f.false_alarms,
                    fixed(f.false_alarms_per_hour, 2),
                    delay(f.delay_median_s),
                    delay(f.delay_worst_s),
                );
            }
            None => out.push_str(" - | - | - | - | - | - | - | - | - |\n"),
        }
    }
    out.push_str(
        "\nEach point's own report is in `points/NNN/report.json` and `report.md`, its log in \
         `points/NNN/log.txt`.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(recall: f64, precision: f64, fph: f64) -> Figures {
        Figures {
            recall,
            precision,
            false_alarms_per_hour: fph,
            ..Figures::default()
        }
    }

    fn row(i: usize, f: Option<Figures>) -> SweepRow {
        let mut r = SweepRow::new(
            i,
            &[("detect.threshold".into(), i as f64 / 10.0)],
            format!("points/{i:03}"),
            if f.is_some() {
                PointStatus::Ok
            } else {
                PointStatus::Failed
            },
        );
        r.figures = f;
        r
    }

    #[test]
    fn axis_is_inclusive_and_rounded() {
        let a = parse_axis("detect.threshold=0.1:0.5:0.1").unwrap();
        assert_eq!(a.key, "detect.threshold");
        assert_eq!(a.values, vec![0.1, 0.2, 0.3, 0.4, 0.5]);
        let a = parse_axis("cameras.0.rules.0.min_frames=1:5:2").unwrap();
        assert_eq!(a.values, vec![1.0, 3.0, 5.0]);
        let a = parse_axis("x=0:1:0.3").unwrap();
        assert_eq!(a.values, vec![0.0, 0.3, 0.6, 0.9]);
        let a = parse_axis("x=2:2:1").unwrap();
        assert_eq!(a.values, vec![2.0]);
        let a = parse_axis(" x = -1 : 1 : 0.5 ").unwrap();
        assert_eq!(a.values, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(parse_axis("x=0:0.7:0.1").unwrap().values.len(), 8);
    }

    #[test]
    fn axis_errors() {
        for (spec, needle) in [
            ("x=0:1:0", "STEP"),
            ("x=0:1:-0.1", "STEP"),
            ("x=1:0:0.1", "above TO"),
            ("x=0:1000:0.1", "at most 1000"),
            ("x=a:1:0.1", "FROM"),
            ("x=0:1:nan", "STEP"),
            ("x=0:1", "FROM:TO:STEP"),
            ("=0:1:0.1", "empty"),
            ("x..y=0:1:0.1", "empty segment"),
            ("x", "KEY=FROM:TO:STEP"),
        ] {
            let e = parse_axis(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(e.contains(spec), "{spec}: {e}");
        }
        assert_eq!(parse_axis("x=0:999:1").unwrap().values.len(), 1000);
    }

    #[test]
    fn axes_and_grid() {
        let axes = parse_axes(&["a=1:2:1", "b=0.1:0.3:0.1"]).unwrap();
        let g = grid(&axes);
        assert_eq!(g.len(), 6);
        let flat: Vec<(f64, f64)> = g.iter().map(|p| (p[0].1, p[1].1)).collect();
        assert_eq!(
            flat,
            vec![
                (1.0, 0.1),
                (1.0, 0.2),
                (1.0, 0.3),
                (2.0, 0.1),
                (2.0, 0.2),
                (2.0, 0.3)
            ]
        );
        assert!(g.iter().all(|p| p[0].0 == "a" && p[1].0 == "b"));
        assert_eq!(grid(&[]), vec![Vec::<(String, f64)>::new()]);
        let e = parse_axes(&["a=1:2:1", "a=1:3:1"]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let e = parse_axes(&["a=1:1000:1", "b=1:1000:1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("10000"), "{e}");
    }

    #[test]
    fn set_parses() {
        assert_eq!(
            parse_set("risk.levels.iii=0.45").unwrap(),
            ("risk.levels.iii".to_string(), 0.45)
        );
        assert_eq!(parse_set("a.b = 3").unwrap(), ("a.b".to_string(), 3.0));
        assert!(parse_set("a.b").is_err());
        assert!(
            parse_set("a.b=x")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(parse_set("=1").is_err());
        assert!(parse_set("a=inf").is_err());
    }

    const CONFIG: &str = r#"# a site
node = "edge-1"

[detect]
threshold = 0.5 # the score threshold
classes.person = { min_score = 0.4 }

[detect.classes.car]
min_score = 0.6

[risk]
levels = { iv = 0.25, iii = 0.5, ii = 0.75, i = 0.9 }

[[cameras]]
id = "cam-1"
rules = [
  { kind = "zone", min_frames = 3 },
]

[[cameras]]
id = "cam-2"

[[cameras.rules]]
kind = "line"
min_frames = 2
"#;

    fn get(text: &str, key: &str) -> toml_edit::Item {
        let doc: DocumentMut = text.parse().unwrap();
        let mut item = doc.as_item();
        for seg in key.split('.') {
            item = child(item, seg).unwrap_or_else(|| panic!("{key}: no {seg}"));
        }
        item.clone()
    }

    #[test]
    fn overrides_keep_the_rest() {
        let sets = [
            ("detect.threshold".to_string(), 0.3),
            ("cameras.0.rules.0.min_frames".to_string(), 5.0),
            ("cameras.1.rules.0.min_frames".to_string(), 4.0),
            ("risk.levels.iii".to_string(), 0.45),
            ("detect.classes.person.min_score".to_string(), 0.35),
            ("detect.classes.car.min_score".to_string(), 0.7),
        ];
        let out = apply_overrides(CONFIG, &sets).unwrap();
        assert_eq!(out.lines().count(), CONFIG.lines().count());
        assert!(
            out.contains("threshold = 0.3 # the score threshold\n"),
            "{out}"
        );
        assert!(out.contains("{ kind = \"zone\", min_frames = 5 }"), "{out}");
        assert!(
            out.contains("levels = { iv = 0.25, iii = 0.45, ii = 0.75, i = 0.9 }"),
            "{out}"
        );
        assert!(
            out.contains("classes.person = { min_score = 0.35 }"),
            "{out}"
        );
        assert!(out.starts_with("# a site\n"));
        assert_eq!(
            get(&out, "cameras.1.rules.0.min_frames").as_integer(),
            Some(4)
        );
        assert_eq!(
            get(&out, "detect.classes.car.min_score").as_float(),
            Some(0.7)
        );
        // Every other line as written.
        let changed = CONFIG
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 6, "{out}");
        // A float given a whole number stays a float.
        let out = apply_overrides(CONFIG, &[("detect.threshold".into(), 1.0)]).unwrap();
        assert_eq!(get(&out, "detect.threshold").as_float(), Some(1.0));
        // A later override wins.
        let out = apply_overrides(
            CONFIG,
            &[
                ("detect.threshold".into(), 0.2),
                ("detect.threshold".into(), 0.25),
            ],
        )
        .unwrap();
        assert_eq!(get(&out, "detect.threshold").as_float(), Some(0.25));
    }

    #[test]
    fn missing_last_key_is_added() {
        let out = apply_overrides(
            CONFIG,
            &[
                ("detect.nms_iou".into(), 0.45),
                ("detect.max_tracks".into(), 8.0),
                ("risk.levels.v".into(), 0.1),
                ("cameras.0.rules.0.cooldown_s".into(), 2.5),
            ],
        )
        .unwrap();
        assert_eq!(get(&out, "detect.nms_iou").as_float(), Some(0.45));
        assert_eq!(get(&out, "detect.max_tracks").as_integer(), Some(8));
        assert_eq!(get(&out, "risk.levels.v").as_float(), Some(0.1));
        assert_eq!(
            get(&out, "cameras.0.rules.0.cooldown_s").as_float(),
            Some(2.5)
        );
        let added = apply_overrides("a = 1\n", &[("b".into(), 0.5)]).unwrap();
        assert_eq!(added, "a = 1\nb = 0.5\n");
    }

    #[test]
    fn override_errors_name_the_key() {
        for (key, value, needle) in [
            ("cameras.0.rules.0.min_frames", 2.5, "not a whole number"),
            (
                "cameras.5.rules.0.min_frames",
                2.0,
                "`cameras` has 2 elements",
            ),
            (
                "cameras.0.rules.3.min_frames",
                2.0,
                "`cameras.0.rules` has 1 element",
            ),
            ("cameras.x.id", 2.0, "must be an index"),
            ("nothing.threshold", 0.5, "no `nothing`"),
            (
                "detect.classes.dog.min_score",
                0.5,
                "no `detect.classes.dog`",
            ),
            ("cameras.0.id", 1.0, "a string, not a number"),
            ("node.x", 1.0, "`node` is a string, not a table"),
            ("detect", 1.0, "a table, not a number"),
            ("cameras.0.rules.7", 1.0, "has 1 element"),
        ] {
            let e = apply_overrides(CONFIG, &[(key.into(), value)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
            assert!(e.contains(needle), "{key}: {e}");
        }
        assert!(matches!(
            apply_overrides("a = [", &[]),
            Err(SweepError::Toml(_))
        ));
    }

    #[test]
    fn recommends_highest_recall_within_the_limit() {
        let rows = vec![
            row(0, Some(figures(1.0, 0.5, 3.0))),
            row(1, Some(figures(0.8, 0.7, 1.0))),
            row(2, Some(figures(0.8, 0.9, 0.9))),
            row(3, Some(figures(0.8, 0.9, 0.5))),
            row(4, Some(figures(0.8, 0.9, 0.5))),
            row(5, None),
        ];
        let r = recommend(&rows, 1.0).unwrap();
        assert_eq!(r.index, 3);
        assert!(r.within_limit);
        assert!(
            r.criterion
                .starts_with("highest recall at no more than 1 false alarm per hour of footage"),
            "{}",
            r.criterion
        );
        let r = recommend(&rows, 5.0).unwrap();
        assert_eq!(r.index, 0);
        assert!(r.criterion.contains("5 false alarms per hour"));
        // None keeps to the limit: the fewest false alarms, said so.
        let r = recommend(&rows, 0.1).unwrap();
        assert_eq!(r.index, 3);
        assert!(!r.within_limit);
        assert!(
            r.criterion
                .starts_with("no point has at most 0.1 false alarms per hour")
        );
        assert_eq!(recommend(&rows[5..], 1.0), None);
        assert_eq!(recommend(&[], 1.0), None);
    }

    #[test]
    fn writes_json_and_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let axes = vec![parse_axis("detect.threshold=0:0.2:0.1").unwrap()];
        let mut rows = vec![
            row(0, Some(figures(1.0, 0.5, 3.0))),
            row(1, Some(figures(0.8, 0.9, 0.5))),
            row(2, None),
        ];
        rows[2].error = Some("error: bad | thing".into());
        let rec = recommend(&rows, 1.0);
        let file = write_sweep(dir.path(), &axes, &rows, rec.as_ref(), 1.0).unwrap();
        assert_eq!((file.points, file.ok, file.failed), (3, 2, 1));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap())
                .unwrap();
        assert_eq!(json["recommended"], 1);
        assert_eq!(json["axes"][0]["key"], "detect.threshold");
        assert_eq!(json["rows"][1]["values"]["detect.threshold"], 0.1);
        assert_eq!(json["rows"][1]["figures"]["recall"], 0.8);
        assert_eq!(json["rows"][1]["status"], "ok");
        assert_eq!(json["rows"][2]["status"], "failed");
        assert!(json["rows"][2]["figures"].is_null());
        assert!(
            json["criterion"]
                .as_str()
                .unwrap()
                .starts_with("highest recall")
        );
        let back: SweepFile = serde_json::from_value(json).unwrap();
        assert_eq!(back, file);
        let md = std::fs::read_to_string(dir.path().join("sweep.md")).unwrap();
        assert!(
            md.contains("| **1 (recommended)** | 0.1 | ok | 0.900 | 0.800 |"),
            "{md}"
        );
        assert!(md.contains("failed: error: bad \\| thing"), "{md}");
        assert!(md.contains("**Recommended: point 1** (detect.threshold=0.1): highest recall"));
    }
}
