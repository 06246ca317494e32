//! `skynet replay`: recorded observations through the same risk engine as `skynet run`.
//!
//! The input is JSON Lines, one observation per line in the public JSON form
//! (`schemas/observation.schema.json`). The output is the CloudEvents the engine emits,
//! incident revisions (`skynet.incident.v1`) and cell level changes (`skynet.grid_risk.v1`),
//! one per line. The engine takes time only from its inputs, so the same config and input
//! always give the same output, ids included: engineers try a change of weights on a
//! recorded day before they make it.
//!
//! A recording holds observations, not the wall clock that ticked between them live. Its
//! times are taken as true: before each observation the engine's clock follows to its time
//! ([`GridRiskEngine::follow`], without the live step bound), so what went quiet or fell due
//! in a gap (a night) happens first, at its own time. Incidents then come out as live:
//! evidence after a gap opens a new incident once the old one's cooldown has passed.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;
use skynet_core::{DeviceId, Observation, RiskEvent, RiskLevel};
use skynet_emit::OutboxEvent;
use skynet_risk::{GridRiskEngine, RiskEngine};

use crate::PipelineConfig;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub observations: u64,
    /// Lines that were not valid observations (each reported to `refused`).
    pub refused: u64,
    /// Camera observations whose every detection is below the config's thresholds: the
    /// config would not have made them, so the engine does not see them.
    pub below_threshold: u64,
    pub events: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the observations: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the events: {0}")]
    Write(#[source] std::io::Error),
    #[error("an event could not be serialised: {0}")]
    Serialise(#[source] serde_json::Error),
}

/// Per camera, the lowest score kept for each label it looks for, as the live detection
/// filter resolves them: the camera's `classes` over `[detect.classes]`, never below
/// `[detect] threshold`. A recorded detection under its label's score would not have been
/// made with these thresholds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    cameras: HashMap<DeviceId, BTreeMap<String, f32>>,
}

impl Thresholds {
    /// The thresholds `config` starts its cameras with.
    pub fn of(config: &PipelineConfig) -> Self {
        let floor = config.detector.threshold;
        let cameras = config
            .cameras
            .iter()
            .map(|camera| {
                let scores = camera
                    .allowed_classes
                    .iter()
                    .map(|label| {
                        let wider = config.classes.get(label).copied().unwrap_or_default();
                        let limits = camera
                            .classes
                            .get(label)
                            .copied()
                            .unwrap_or_default()
                            .over(wider);
                        let score = (limits.min_score.unwrap_or(0.0) as f32).max(floor);
                        (label.clone(), score)
                    })
                    .collect();
                (camera.id.clone(), scores)
            })
            .collect();
        Self { cameras }
    }

    /// `camera`'s scores replaced by `scores` (the thresholds it runs with now, or a
    /// proposed change).
    pub fn with_camera(mut self, camera: &DeviceId, scores: BTreeMap<String, f32>) -> Self {
        self.cameras.insert(camera.clone(), scores);
        self
    }

    /// Drops the observation's detections these thresholds would not have made, and lowers
    /// its confidence (its best detection's score) to what is left. `false` when it had
    /// detections and none is left: the observation would not have been made at all. A
    /// device these thresholds do not know is left as it is.
    pub fn admit(&self, observation: &mut Observation) -> bool {
        if observation.source.kind != skynet_core::SourceKind::Camera
            || observation.evidence.detections.is_empty()
        {
            return true;
        }
        let Some(scores) = self.cameras.get(&observation.source.id) else {
            return true;
        };
        observation.evidence.detections.retain(|d| {
            scores
                .get(&d.label)
                .is_some_and(|&min| !d.score.is_nan() && d.score >= min)
        });
        let best = observation
            .evidence
            .detections
            .iter()
            .map(|d| d.score)
            .fold(None, |best: Option<f32>, s| {
                Some(best.map_or(s, |b| b.max(s)))
            });
        match best {
            Some(best) => {
                observation.confidence = observation.confidence.min(best);
                true
            }
            None => false,
        }
    }
}

/// The engine loop every replay shares: each line of `lines` (JSON observations; blank
/// lines skipped) is checked, filtered by `thresholds`, and fed to a fresh engine built from
/// `config`; the events each step makes go to `emit`. A refused line is reported to
/// `refused` (its number, from 1, and why). At the end the engine flushes what open
/// incidents learned since their last revision, as `skynet run` does when it stops.
pub fn run_engine<L, E>(
    config: &PipelineConfig,
    thresholds: &Thresholds,
    lines: L,
    mut refused: impl FnMut(usize, String),
    mut emit: impl FnMut(Vec<RiskEvent>) -> Result<(), E>,
) -> Result<ReplayReport, E>
where
    L: IntoIterator<Item = Result<String, E>>,
{
    let mut engine = GridRiskEngine::new(config.risk.clone(), config.risk_context());
    let mut report = ReplayReport::default();
    for (index, line) in lines.into_iter().enumerate() {
        let number = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut observation: Observation = match serde_json::from_str(&line) {
            Ok(o) => o,
            Err(e) => {
                report.refused += 1;
                refused(number, format!("not an observation: {e}"));
                continue;
            }
        };
        let known = observation.validate().and_then(|()| {
            config
                .grids
                .cell(observation.grid.as_str())
                .ok_or_else(|| format!("unknown grid `{}`", observation.grid))
        });
        match known {
            // The cell's own id (an H3 index in any case becomes the map's lower case), as
            // the pipeline's devices have it.
            Ok(cell) => observation.grid = cell.id,
            Err(reason) => {
                report.refused += 1;
                refused(number, reason);
                continue;
            }
        }
        if !thresholds.admit(&mut observation) {
            report.below_threshold += 1;
            continue;
        }
        report.observations += 1;
        engine.follow(observation.at);
        let events = engine.observe(&observation);
        report.events += events.len() as u64;
        emit(events)?;
    }
    let events = engine.flush();
    report.events += events.len() as u64;
    emit(events)?;
    Ok(report)
}

/// Feeds every observation of `input` through a fresh engine built from `config` (its
/// cameras' detections filtered by the config's thresholds, see [`Thresholds`]), writes
/// each event to `output`, and reports each refused line (its number and why) to `refused`.
/// At the end of the input the engine flushes what open incidents learned since their last
/// revision, as `skynet run` does when it stops.
pub fn replay(
    config: &PipelineConfig,
    input: impl BufRead,
    mut output: impl Write,
    refused: impl FnMut(usize, String),
) -> Result<ReplayReport, ReplayError> {
    let lines = input.lines().map(|l| l.map_err(ReplayError::Read));
    let report = run_engine(config, &Thresholds::of(config), lines, refused, |events| {
        for event in events {
            let line = OutboxEvent::new(&config.risk.node, &event)
                .to_json()
                .map_err(ReplayError::Serialise)?;
            writeln!(output, "{line}").map_err(ReplayError::Write)?;
        }
        Ok(())
    })?;
    output.flush().map_err(ReplayError::Write)?;
    Ok(report)
}

// ---- What-if: the same observations through two configs -----------------------------

/// An incident as a replay (or an evaluation run) ended it: its last revision's facts, at
/// its highest level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentSummary {
    pub id: String,
    pub grid: String,
    pub category: String,
    /// `camera` or `sensor`.
    pub source: &'static str,
    /// The camera or sensor that saw it first.
    pub device: String,
    /// Every camera whose evidence it rests on, the first one first.
    #[serde(skip)]
    pub cameras: Vec<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The event time of its first revision (a revision is dated when it was last seen):
    /// when an operator would have seen it.
    #[serde(skip)]
    pub opened_at: DateTime<Utc>,
    /// The highest level it reached.
    #[serde(serialize_with = "level_name")]
    pub level: RiskLevel,
}

fn level_name<S: serde::Serializer>(level: &RiskLevel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(level.as_str())
}

/// Incident revisions folded into one [`IncidentSummary`] per incident, in the order they
/// opened: the what-if's and `skynet eval`'s view of a run.
#[derive(Debug, Default)]
pub struct IncidentFold {
    order: Vec<String>,
    by_id: HashMap<String, IncidentSummary>,
}

impl IncidentFold {
    pub fn add(&mut self, incident: &skynet_core::Incident) {
        let mut cameras: Vec<String> = Vec::new();
        if !incident.camera.is_empty() {
            cameras.push(incident.camera.to_string());
        }
        for c in &incident.contributions {
            let id = c.source.id.to_string();
            if c.source.kind == skynet_core::SourceKind::Camera && !cameras.contains(&id) {
                cameras.push(id);
            }
        }
        match self.by_id.get_mut(&incident.id) {
            Some(known) => {
                known.level = known.level.max(incident.level);
                known.first_seen = known.first_seen.min(incident.first_seen);
                known.last_seen = known.last_seen.max(incident.last_seen);
                known.opened_at = known.opened_at.min(incident.last_seen);
                for camera in cameras {
                    if !known.cameras.contains(&camera) {
                        known.cameras.push(camera);
                    }
                }
            }
            None => {
                let (source, device) = match &incident.sensor {
                    Some(sensor) => ("sensor", sensor.to_string()),
                    None => ("camera", incident.camera.to_string()),
                };
                self.order.push(incident.id.clone());
                self.by_id.insert(
                    incident.id.clone(),
                    IncidentSummary {
                        id: incident.id.clone(),
                        grid: incident.grid.to_string(),
                        category: incident.category.clone(),
                        source,
                        device,
                        cameras,
                        first_seen: incident.first_seen,
                        last_seen: incident.last_seen,
                        opened_at: incident.last_seen,
                        level: incident.level,
                    },
                );
            }
        }
    }

    pub fn finish(mut self) -> Vec<IncidentSummary> {
        self.order
            .into_iter()
            .filter_map(|id| self.by_id.remove(&id))
            .collect()
    }
}

/// The incidents `config` makes of `lines` (see [`run_engine`]), in the order they opened.
pub fn incidents<L, E>(
    config: &PipelineConfig,
    thresholds: &Thresholds,
    lines: L,
    refused: impl FnMut(usize, String),
) -> Result<(Vec<IncidentSummary>, ReplayReport), E>
where
    L: IntoIterator<Item = Result<String, E>>,
{
    let mut fold = IncidentFold::default();
    let report = run_engine(config, thresholds, lines, refused, |events| {
        for incident in events.iter().filter_map(RiskEvent::as_incident) {
            fold.add(incident);
        }
        Ok(())
    })?;
    Ok((fold.finish(), report))
}

/// How one incident differs between the old and the new config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Only the new config makes it.
    Added(IncidentSummary),
    /// Only the old config made it.
    Dropped(IncidentSummary),
    /// Both make it, at different highest levels.
    Changed {
        old: IncidentSummary,
        new: IncidentSummary,
    },
}

impl Difference {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Added(_) => "added",
            Self::Dropped(_) => "dropped",
            Self::Changed { .. } => "changed",
        }
    }

    /// The incident as the new config has it, else as the old one did.
    pub fn incident(&self) -> &IncidentSummary {
        match self {
            Self::Added(i) | Self::Dropped(i) => i,
            Self::Changed { new, .. } => new,
        }
    }

    pub fn old_level(&self) -> Option<RiskLevel> {
        match self {
            Self::Added(_) => None,
            Self::Dropped(i) | Self::Changed { old: i, .. } => Some(i.level),
        }
    }

    pub fn new_level(&self) -> Option<RiskLevel> {
        match self {
            Self::Dropped(_) => None,
            Self::Added(i) | Self::Changed { new: i, .. } => Some(i.level),
        }
    }

    pub fn old_id(&self) -> Option<&str> {
        match self {
            Self::Added(_) => None,
            Self::Dropped(i) | Self::Changed { old: i, .. } => Some(&i.id),
        }
    }

    pub fn new_id(&self) -> Option<&str> {
        match self {
            Self::Dropped(_) => None,
            Self::Added(i) | Self::Changed { new: i, .. } => Some(&i.id),
        }
    }
}

/// What a what-if found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Added, dropped and changed incidents, in the order they first appeared.
    pub differences: Vec<Difference>,
    /// Incidents both configs make at the same highest level.
    pub unchanged: u64,
    /// Incidents the old config made.
    pub old_incidents: u64,
    pub new_incidents: u64,
    pub old: ReplayReport,
    pub new: ReplayReport,
}

impl Comparison {
    pub fn count(&self, kind: &str) -> u64 {
        self.differences.iter().filter(|d| d.kind() == kind).count() as u64
    }

    /// `N added, M dropped, K changed in level, U unchanged`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} dropped, {} changed in level, {} unchanged",
            self.count("added"),
            self.count("dropped"),
            self.count("changed"),
            self.unchanged
        )
    }
}

/// Pairs the incidents of two replays of the same observations: the same grid and category
/// and overlapping `[first_seen, last_seen]` are the same occurrence, whatever their ids
/// (an id depends on when the incident opened). The same id pairs first; then each new
/// incident takes the earliest unpaired old one it overlaps.
pub fn pair(old: Vec<IncidentSummary>, new: Vec<IncidentSummary>) -> Comparison {
    let mut comparison = Comparison {
        old_incidents: old.len() as u64,
        new_incidents: new.len() as u64,
        ..Comparison::default()
    };
    let same = |a: &IncidentSummary, b: &IncidentSummary| {
        a.grid == b.grid
            && a.category == b.category
            && a.first_seen <= b.last_seen
            && b.first_seen <= a.last_seen
    };
    let mut partner: Vec<Option<usize>> = vec![None; new.len()];
    let mut taken = vec![false; old.len()];
    for (n, incident) in new.iter().enumerate() {
        if let Some(o) = old
            .iter()
            .position(|candidate| candidate.id == incident.id && same(candidate, incident))
        {
            partner[n] = Some(o);
            taken[o] = true;
        }
    }
    for (n, incident) in new.iter().enumerate() {
        if partner[n].is_some() {
            continue;
        }
        if let Some(o) = (0..old.len()).find(|&o| !taken[o] && same(&old[o], incident)) {
            partner[n] = Some(o);
            taken[o] = true;
        }
    }
    // In the order they first appeared: by first_seen, dropped before added at a tie.
    let mut rows: Vec<(DateTime<Utc>, u8, usize, Difference)> = Vec::new();
    for (o, incident) in old.iter().enumerate() {
        if !taken[o] {
            rows.push((
                incident.first_seen,
                0,
                o,
                Difference::Dropped(incident.clone()),
            ));
        }
    }
    for (n, incident) in new.into_iter().enumerate() {
        match partner[n] {
            None => rows.push((incident.first_seen, 1, n, Difference::Added(incident))),
            Some(o) if old[o].level != incident.level => rows.push((
                incident.first_seen.min(old[o].first_seen),
                1,
                n,
                Difference::Changed {
                    old: old[o].clone(),
                    new: incident,
                },
            )),
            Some(_) => comparison.unchanged += 1,
        }
    }
    rows.sort_by_key(|a| (a.0, a.1, a.2));
    comparison.differences = rows.into_iter().map(|row| row.3).collect();
    comparison
}

/// Replays `lines` through the old and the new config (each with its thresholds) and pairs
/// their incidents. Refused lines are reported once each (the new config's reason first).
pub fn compare(
    new: (&PipelineConfig, &Thresholds),
    old: (&PipelineConfig, &Thresholds),
    lines: &[String],
    mut refused: impl FnMut(usize, String),
) -> Comparison {
    let mut reasons: BTreeMap<usize, String> = BTreeMap::new();
    let all = || lines.iter().cloned().map(Ok::<_, std::convert::Infallible>);
    let run = |(config, thresholds): (&PipelineConfig, &Thresholds),
               reasons: &mut BTreeMap<usize, String>| {
        match incidents(config, thresholds, all(), |line, reason| {
            reasons.entry(line).or_insert(reason);
        }) {
            Ok(found) => found,
            Err(never) => match never {},
        }
    };
    let (new_incidents, new_report) = run(new, &mut reasons);
    let (old_incidents, old_report) = run(old, &mut reasons);
    for (line, reason) in reasons {
        refused(line, reason);
    }
    let mut comparison = pair(old_incidents, new_incidents);
    comparison.new = new_report;
    comparison.old = old_report;
    comparison
}

/// One difference as a line of the text report.
pub fn text_line(difference: &Difference) -> String {
    let i = difference.incident();
    let levels = match (difference.old_level(), difference.new_level()) {
        (Some(old), Some(new)) => format!("{}\u{2192}{}", old.as_str(), new.as_str()),
        (Some(level), None) | (None, Some(level)) => level.as_str().to_string(),
        (None, None) => String::new(),
    };
    let ids = match (difference.old_id(), difference.new_id()) {
        (Some(old), Some(new)) if old != new => format!("{old}\u{2192}{new}"),
        (Some(id), _) | (None, Some(id)) => id.to_string(),
        (None, None) => String::new(),
    };
    format!(
        "{:<7} grid {} {} {} {} first seen {} level {} id {}",
        difference.kind(),
        i.grid,
        i.category,
        i.source,
        i.device,
        i.first_seen
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        levels,
        ids
    )
}

/// One difference as a JSON object (the `--json` form, and the console's examples).
pub fn json_line(difference: &Difference) -> serde_json::Value {
    let i = difference.incident();
    serde_json::json!({
        "change": difference.kind(),
        "grid": i.grid,
        "category": i.category,
        "source": {"kind": i.source, "id": i.device},
        "first_seen": i.first_seen,
        "last_seen": i.last_seen,
        "old_level": difference.old_level().map(RiskLevel::as_str),
        "new_level": difference.new_level().map(RiskLevel::as_str),
        "old_id": difference.old_id(),
        "new_id": difference.new_id(),
    })
}

/// `skynet replay --config NEW --compare OLD OBSERVATIONS`: the incidents the new config
/// would add, drop or change in level, one per line (a JSON object per line with `json`),
/// then the summary. Refused lines go to stderr as `file:line: reason`, and make the exit
/// status 1 once the report is out.
pub fn compare_cli(
    new: &std::path::Path,
    old: &std::path::Path,
    observations: &std::path::Path,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let new_config = PipelineConfig::load(new)?;
    let old_config = PipelineConfig::load(old)?;
    let input: Box<dyn BufRead> = if observations == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(observations)
            .with_context(|| format!("opening {}", observations.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let lines = input
        .lines()
        .collect::<Result<Vec<String>, _>>()
        .with_context(|| format!("reading {}", observations.display()))?;
    let name = observations.display().to_string();
    let mut refused = 0u64;
    let comparison = compare(
        (&new_config, &Thresholds::of(&new_config)),
        (&old_config, &Thresholds::of(&old_config)),
        &lines,
        |line, reason| {
            refused += 1;
            eprintln!(
                "error: {}:{line}: {}",
                skynet_core::escape_control(&name),
                skynet_core::escape_control(&reason)
            );
        },
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for difference in &comparison.differences {
        if json {
            writeln!(out, "{}", json_line(difference))?;
        } else {
            writeln!(out, "{}", text_line(difference))?;
        }
    }
    if json {
        let summary = serde_json::json!({"summary": {
            "added": comparison.count("added"),
            "dropped": comparison.count("dropped"),
            "changed": comparison.count("changed"),
            "unchanged": comparison.unchanged,
            "old_incidents": comparison.old_incidents,
            "new_incidents": comparison.new_incidents,
        }});
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "{}", comparison.summary())?;
    }
    out.flush()?;
    tracing::info!(
        observations = comparison.new.observations,
        below_new_thresholds = comparison.new.below_threshold,
        below_old_thresholds = comparison.old.below_threshold,
        refused,
        "what-if finished"
    );
    Ok(if refused > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

// ---- The console's what-if: the last recorded day ------------------------------------

/// At most this many of the newest recorded lines are read for the console's what-if.
pub const RECENT_LINES: usize = 200_000;
/// ...and at most this many bytes from the end of the file.
pub const RECENT_BYTES: u64 = 128 * 1024 * 1024;

/// The newest lines of a recording: at most `max_lines` lines from the last `max_bytes`
/// bytes (a line cut by that start is left out). A missing file has none.
pub fn recent_lines(
    path: &std::path::Path,
    max_lines: usize,
    max_bytes: u64,
) -> std::io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut reader = std::io::BufReader::new(file.take(len - start));
    if start > 0 {
        // The first line is cut: skip to the next.
        let mut cut = Vec::new();
        reader.read_until(b'\n', &mut cut)?;
    }
    let mut lines = std::collections::VecDeque::with_capacity(max_lines.min(4096));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        // A line still being written has no newline yet: not taken.
        if buf.last() != Some(&b'\n') {
            break;
        }
        if lines.len() == max_lines {
            lines.pop_front();
        }
        lines.push_back(String::from_utf8_lossy(&buf).trim_end().to_string());
    }
    Ok(lines.into())
}

/// The lines of the last day: those within 24 hours before the newest observation's time
/// (or before `now` when none has a time), with that window. Lines without a readable time
/// are kept (the replay refuses them).
pub fn last_day(
    lines: Vec<String>,
    now: DateTime<Utc>,
) -> (Vec<String>, DateTime<Utc>, DateTime<Utc>) {
    #[derive(serde::Deserialize)]
    struct At {
        at: DateTime<Utc>,
    }
    let times: Vec<Option<DateTime<Utc>>> = lines
        .iter()
        .map(|l| serde_json::from_str::<At>(l).ok().map(|a| a.at))
        .collect();
    let until = times.iter().flatten().max().copied().unwrap_or(now);
    let since = until - chrono::Duration::hours(24);
    let kept = lines
        .into_iter()
        .zip(times)
        .filter(|(_, at)| at.is_none_or(|at| at >= since))
        .map(|(line, _)| line)
        .collect();
    (kept, since, until)
}

/// The console's threshold what-if on one camera: the last recorded day (see
/// [`recent_lines`], [`last_day`]) through `config`'s risk engine twice, the camera's
/// detections filtered once by its `current` and once by its `proposed` thresholds. Every
/// other camera's recorded detections are taken as they came: they were made with the
/// thresholds that run.
pub fn threshold_what_if(
    config: &PipelineConfig,
    recording: &std::path::Path,
    camera: &DeviceId,
    current: &BTreeMap<String, f32>,
    proposed: &BTreeMap<String, f32>,
    now: DateTime<Utc>,
) -> std::io::Result<(Comparison, DateTime<Utc>, DateTime<Utc>)> {
    let lines = recent_lines(recording, RECENT_LINES, RECENT_BYTES)?;
    let (lines, since, until) = last_day(lines, now);
    let old = Thresholds::default().with_camera(camera, current.clone());
    let new = Thresholds::default().with_camera(camera, proposed.clone());
    let comparison = compare((config, &new), (config, &old), &lines, |_, _| {});
    Ok((comparison, since, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn incident(
        id: &str,
        category: &str,
        from: &str,
        to: &str,
        level: RiskLevel,
    ) -> IncidentSummary {
        IncidentSummary {
            id: id.into(),
            grid: "G-1".into(),
            category: category.into(),
            source: "camera",
            device: "cam-1".into(),
            cameras: vec!["cam-1".into()],
            first_seen: at(from),
            last_seen: at(to),
            opened_at: at(from),
            level,
        }
    }

    #[test]
    fn incidents_pair_by_grid_category_and_overlap_whatever_their_ids() {
        let old = vec![
            incident(
                "a",
                "crowd",
                "2026-01-01T09:00:00Z",
                "2026-01-01T09:10:00Z",
                RiskLevel::III,
            ),
            incident(
                "b",
                "crowd",
                "2026-01-01T12:00:00Z",
                "2026-01-01T12:05:00Z",
                RiskLevel::IV,
            ),
            incident(
                "c",
                "smoke",
                "2026-01-01T13:00:00Z",
                "2026-01-01T13:05:00Z",
                RiskLevel::IV,
            ),
        ];
        let new = vec![
            // Opened later (a detection below the new threshold): another id, same occurrence.
            incident(
                "a2",
                "crowd",
                "2026-01-01T09:02:00Z",
                "2026-01-01T09:10:00Z",
                RiskLevel::II,
            ),
            incident(
                "b",
                "crowd",
                "2026-01-01T12:00:00Z",
                "2026-01-01T12:05:00Z",
                RiskLevel::IV,
            ),
            // Same time, another category: not the smoke.
            incident(
                "d",
                "fire",
                "2026-01-01T13:00:00Z",
                "2026-01-01T13:05:00Z",
                RiskLevel::II,
            ),
        ];
        let c = pair(old, new);
        assert_eq!(c.unchanged, 1);
        let kinds: Vec<(&str, &str)> = c
            .differences
            .iter()
            .map(|d| (d.kind(), d.incident().id.as_str()))
            .collect();
        assert_eq!(kinds, [("changed", "a2"), ("dropped", "c"), ("added", "d")]);
        assert_eq!(c.differences[0].old_level(), Some(RiskLevel::III));
        assert_eq!(c.differences[0].old_id(), Some("a"));
        assert_eq!(
            c.summary(),
            "1 added, 1 dropped, 1 changed in level, 1 unchanged"
        );
    }

    #[test]
    fn the_recent_lines_are_the_newest_whole_ones_of_the_last_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("observations.jsonl");
        let line = |t: &str| format!("{{\"at\":\"{t}\",\"x\":1}}\n");
        let mut text = String::new();
        text.push_str(&line("2026-01-01T00:00:00Z"));
        text.push_str(&line("2026-01-02T08:00:00Z"));
        text.push_str(&line("2026-01-02T09:00:00Z"));
        text.push_str("not json\n");
        text.push_str(&line("2026-01-03T08:30:00Z"));
        // Still being written: no newline yet.
        text.push_str("{\"at\":\"2026-01-09T00:00");
        std::fs::write(&path, &text).unwrap();
        let all = recent_lines(&path, 100, 1 << 20).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(recent_lines(&path, 2, 1 << 20).unwrap(), all[3..]);
        // A byte cap that cuts the first line leaves it out.
        let cut = recent_lines(&path, 100, (text.len() - 5) as u64).unwrap();
        assert_eq!(cut, all[1..]);
        let (day, since, until) = last_day(all, at("2030-01-01T00:00:00Z"));
        assert_eq!(until, at("2026-01-03T08:30:00Z"));
        assert_eq!(since, at("2026-01-02T08:30:00Z"));
        assert_eq!(
            day.len(),
            3,
            "{day:?}: 09:00, the line without a time, 08:30"
        );
        assert!(
            recent_lines(&dir.path().join("none"), 10, 10)
                .unwrap()
                .is_empty()
        );
        let (_, _, until) = last_day(Vec::new(), at("2030-01-01T00:00:00Z"));
        assert_eq!(
            until,
            at("2030-01-01T00:00:00Z"),
            "nothing recorded: before now"
        );
    }

    #[test]
    fn a_threshold_what_if_replays_the_last_recorded_day() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let config = PipelineConfig::load(&root.join("configs/city.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let recording = dir.path().join("observations.jsonl");
        let day = std::fs::read_to_string(root.join("tests/fixtures/replay/gas-and-person.jsonl"))
            .unwrap();
        // Two days earlier: outside the window, not replayed.
        let old = day.replace("2026-11-27T09:", "2026-11-25T09:");
        std::fs::write(&recording, format!("{old}{day}")).unwrap();
        let camera = DeviceId::new("cam-safety-03");
        let current: BTreeMap<String, f32> = [("person".to_string(), 0.3)].into();
        let proposed: BTreeMap<String, f32> = [("person".to_string(), 0.85)].into();
        let now = at("2030-01-01T00:00:00Z");
        let (c, since, until) =
            threshold_what_if(&config, &recording, &camera, &current, &proposed, now).unwrap();
        assert_eq!(until, at("2026-11-27T09:02:00Z"));
        assert_eq!(since, at("2026-11-26T09:02:00Z"));
        assert_eq!(
            c.old.observations, 4,
            "the day's four, not the earlier ones"
        );
        assert_eq!(c.new.below_threshold, 1, "the person at 0.8");
        assert_eq!(
            c.summary(),
            "0 added, 1 dropped, 1 changed in level, 0 unchanged"
        );
        assert_eq!(c.old_incidents, 2);
        // The same thresholds: nothing changes.
        let (same, _, _) =
            threshold_what_if(&config, &recording, &camera, &current, &current, now).unwrap();
        assert_eq!(
            same.summary(),
            "0 added, 0 dropped, 0 changed in level, 2 unchanged"
        );
        // Nothing recorded yet: an empty day before now.
        let none = dir.path().join("none.jsonl");
        let (empty, _, until) =
            threshold_what_if(&config, &none, &camera, &current, &proposed, now).unwrap();
        assert_eq!((empty.old_incidents, until), (0, now));
    }
}
