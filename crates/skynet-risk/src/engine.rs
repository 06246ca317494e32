//! Evidence fusion per grid cell, fusion rules, and the incident lifecycle.
//!
//! The model (docs/risk-model.md has a worked example):
//!
//! - **Contribution.** An observation contributes `weight × confidence × category weight ×
//!   grid-kind weight × source reliability`, clamped to [0, 1].
//! - **Saturation.** Each (cell, category, source) keeps one value: the larger of its decayed
//!   value and the new contribution. Repeating an observation adds confidence and duration to
//!   its incident, never severity.
//! - **Category score.** The sources of one category combine as independent evidence
//!   (`1 − Π(1 − s)`) and are capped at the threshold of the category's ceiling (raised by the
//!   cell's kind): one kind of evidence never passes its ceiling.
//! - **Cell score.** The categories combine as independent evidence, so different kinds of
//!   evidence together reach higher levels; a fusion rule's category counts by its level, not
//!   on top of its parts. Levels fall only once the score is `hysteresis`
//!   below their threshold, so they do not flap. A level change is a `skynet.grid_risk.v1`
//!   event.
//! - **Fusion rules** make incidents of their own category and level from correlated parts.
//! - **Incidents** are keyed by cell and category (device faults also by device): evidence
//!   merges into the open one, and evidence within the cooldown after closing reopens it.
//!   Deadlines follow from the level; a missed one raises the level one step.
//!
//! The engine takes time only from its inputs: its clock is the latest time it was given,
//! by an observation or by [`RiskEngine::advance`]. The same inputs always give the same
//! outputs, ids included, which is what `skynet replay` relies on.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{
    CameraId, Contribution, Deadlines, FaultEvidence, GridId, GridRisk, Incident, IncidentChange,
    IncidentState, IncidentStatus, Observation, OwnerKind, RiskEvent, RiskLevel, RuleRef,
    SourceKind, SourceRef,
};
use uuid::Uuid;

use crate::GridMap;
use crate::settings::{
    CategoryPolicy, FusionRule, FusionScope, GridKindPolicy, LevelDeadlines, default_deadlines,
    level_index,
};

/// The stage trait: observations in, incident revisions and cell level changes out.
pub trait RiskEngine: Send {
    /// Takes one observation (evidence, a device fault or a recovery); returns what it causes.
    fn observe(&mut self, observation: &Observation) -> Vec<RiskEvent>;
    /// Moves the clock to `now` (never back): closes quiet incidents, escalates missed
    /// deadlines, emits due updates and lets cell levels decay.
    fn advance(&mut self, now: DateTime<Utc>) -> Vec<RiskEvent>;
    /// Emits what open incidents learned since their last revision (at shutdown).
    fn flush(&mut self) -> Vec<RiskEvent>;
    /// The case system moved incident `id` to `state`.
    fn feedback(
        &mut self,
        id: &str,
        state: IncidentState,
        at: DateTime<Utc>,
    ) -> Result<Vec<RiskEvent>, RiskError>;
    /// The devices with an open fault incident, with its cell and category.
    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)>;
    /// How many incidents are open.
    fn open_incidents(&self) -> usize;
    /// Everything needed to go on after a restart, as JSON.
    fn snapshot(&self) -> serde_json::Value;
    /// Restores a snapshot taken by `snapshot` (on a fresh engine, before any observation).
    fn restore(&mut self, snapshot: serde_json::Value) -> Result<(), RiskError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    #[error("risk snapshot is not readable: {0}")]
    SnapshotFormat(#[source] serde_json::Error),
    #[error("risk snapshot has version {found}; this build reads version {supported}")]
    SnapshotVersion { found: String, supported: u32 },
    #[error("risk snapshot is inconsistent: {0}")]
    SnapshotInvalid(String),
    #[error(
        "a risk snapshot can only be restored into a fresh engine, before any observation \
         (this one tracks {cells} cells and {open} open incidents)"
    )]
    NotFresh { cells: usize, open: usize },
    #[error("no open incident `{0}`")]
    UnknownIncident(String),
    #[error("incident `{id}` is {from}; it cannot become {to}")]
    Transition {
        id: String,
        from: &'static str,
        to: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelThresholds {
    pub iv: f32,
    pub iii: f32,
    pub ii: f32,
    pub i: f32,
}

impl Default for LevelThresholds {
    fn default() -> Self {
        Self {
            iv: 0.25,
            iii: 0.5,
            ii: 0.7,
            i: 0.85,
        }
    }
}

impl LevelThresholds {
    pub fn level(&self, score: f32) -> Option<RiskLevel> {
        [
            (self.i, RiskLevel::I),
            (self.ii, RiskLevel::II),
            (self.iii, RiskLevel::III),
            (self.iv, RiskLevel::IV),
        ]
        .into_iter()
        .find(|(t, _)| score >= *t)
        .map(|(_, l)| l)
    }

    /// The lowest score of `level`.
    pub fn of(&self, level: RiskLevel) -> f32 {
        match level {
            RiskLevel::IV => self.iv,
            RiskLevel::III => self.iii,
            RiskLevel::II => self.ii,
            RiskLevel::I => self.i,
        }
    }

    /// The level of `score` for a cell that was at `previous`: it rises at once, and falls
    /// only once the score is `band` below the current level's threshold.
    pub fn level_with_hysteresis(
        &self,
        previous: Option<RiskLevel>,
        score: f32,
        band: f32,
    ) -> Option<RiskLevel> {
        let raw = self.level(score);
        if raw >= previous {
            return raw;
        }
        let mut level = previous;
        while let Some(l) = level {
            if score >= self.of(l) - band {
                break;
            }
            level = lower(l);
        }
        level.max(raw)
    }

    /// Thresholds must rise strictly from IV to I, within (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        let t = [self.iv, self.iii, self.ii, self.i];
        if t.iter().any(|v| !(*v > 0.0 && *v <= 1.0)) {
            return Err("level thresholds must be within (0, 1]".into());
        }
        if t.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "level thresholds must rise from IV to I, got iv={} iii={} ii={} i={}",
                t[0], t[1], t[2], t[3]
            ));
        }
        Ok(())
    }
}

fn lower(level: RiskLevel) -> Option<RiskLevel> {
    match level {
        RiskLevel::IV => None,
        RiskLevel::III => Some(RiskLevel::IV),
        RiskLevel::II => Some(RiskLevel::III),
        RiskLevel::I => Some(RiskLevel::II),
    }
}

fn raise(level: RiskLevel, steps: u8) -> RiskLevel {
    (0..steps).fold(level, |l, _| match l {
        RiskLevel::IV => RiskLevel::III,
        RiskLevel::III => RiskLevel::II,
        _ => RiskLevel::I,
    })
}

/// The engine's validated config (from [`crate::RiskSettings::validate`]).
#[derive(Debug, Clone)]
pub struct RiskConfig {
    /// Names this node in incident ids.
    pub node: String,
    /// Half-life of categories that do not set their own.
    pub half_life: Duration,
    /// An open incident nobody acted on closes after this long without evidence.
    pub close_after: Duration,
    /// An open incident that keeps learning emits a revision at most this often.
    pub update_every: Duration,
    /// Evidence this soon after an incident closed reopens it.
    pub cooldown: Duration,
    pub thresholds: LevelThresholds,
    /// The lowest level that opens an incident.
    pub open_at: RiskLevel,
    pub hysteresis: f32,
    pub default_ceiling: RiskLevel,
    pub default_department: String,
    /// By level, IV to I, for categories that do not set their own.
    pub deadlines: [LevelDeadlines; 4],
    pub categories: BTreeMap<String, CategoryPolicy>,
    pub grid_kinds: BTreeMap<String, GridKindPolicy>,
    pub reliability_camera: f32,
    pub reliability_sensor: f32,
    pub reliability: BTreeMap<String, f32>,
    pub fusion: Vec<FusionRule>,
    /// How many supporting detections an incident keeps (the latest).
    pub max_detections: usize,
    /// How many contributions an incident lists (the latest).
    pub max_contributions: usize,
    /// How often (event time) decay, deadlines and quiet incidents are looked at.
    pub sweep_every: Duration,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            node: "skynet".into(),
            half_life: Duration::seconds(60),
            close_after: Duration::seconds(120),
            update_every: Duration::seconds(30),
            cooldown: Duration::seconds(300),
            thresholds: LevelThresholds::default(),
            open_at: RiskLevel::IV,
            hysteresis: 0.05,
            default_ceiling: RiskLevel::II,
            default_department: "command_center".into(),
            deadlines: default_deadlines(),
            categories: BTreeMap::new(),
            grid_kinds: BTreeMap::new(),
            reliability_camera: 1.0,
            reliability_sensor: 1.0,
            reliability: BTreeMap::new(),
            fusion: Vec::new(),
            max_detections: 16,
            max_contributions: 32,
            sweep_every: Duration::seconds(1),
        }
    }
}

/// A configured device, as the engine needs it: where it is and who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub source: SourceRef,
    pub grid: GridId,
    pub owner: OwnerKind,
}

/// What the engine knows of the city: its cells (kind, department, neighbours) and devices.
#[derive(Debug, Clone, Default)]
pub struct RiskContext {
    pub grids: Arc<GridMap>,
    pub devices: BTreeMap<CameraId, DeviceInfo>,
}

impl RiskContext {
    pub fn new(grids: Arc<GridMap>, devices: impl IntoIterator<Item = DeviceInfo>) -> Self {
        Self {
            grids,
            devices: devices
                .into_iter()
                .map(|d| (d.source.id.clone(), d))
                .collect(),
        }
    }
}

/// Below this a decayed contribution is forgotten: it no longer matters to any level, and
/// forgetting keeps a long run's state bounded by the active cells.
const FORGET_BELOW: f32 = 1e-4;

/// The category of device-fault incidents' rules.
pub const DEVICE_FAULT_KIND: &str = "device_fault";
/// The level a device fault opens at: blue, an equipment matter for the owner, not a hazard.
const DEVICE_FAULT_LEVEL: RiskLevel = RiskLevel::IV;
/// The rule kind of fused incidents.
pub const FUSION_KIND: &str = "fusion";

// Fixed namespace so the same inputs give the same ids on every run.
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c7e_a1d0_2b4f_4e8a_9c61_7d3f_0e9b_a4c2);
const GRID_RISK_NAMESPACE: Uuid = Uuid::from_u128(0x9b1f_04c3_7e2a_4d55_8a90_31c6_f2d8_1e7b);

/// `1 - (1 - a)(1 - b)`: independent evidence, monotone in both, never above 1.
fn fuse(a: f32, b: f32) -> f32 {
    let clean = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let (a, b) = (clean(a), clean(b));
    // The product form can come out one ulp below an input; the max keeps added evidence
    // from ever lowering a score.
    (1.0 - (1.0 - a) * (1.0 - b)).max(a).max(b)
}

fn decay(score: f32, from: DateTime<Utc>, to: DateTime<Utc>, half_life: Duration) -> f32 {
    let elapsed = to.signed_duration_since(from).num_milliseconds().max(0) as f64;
    let half = half_life.num_milliseconds().max(1) as f64;
    (f64::from(score) * 0.5f64.powf(elapsed / half)) as f32
}

/// One source's saturated value for one category in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Held {
    score: f32,
    at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CellState {
    /// By category, then source (a fusion rule's parts count as the source `fusion/<rule>`).
    #[serde(with = "pairs")]
    held: BTreeMap<String, BTreeMap<String, Held>>,
    level: Option<RiskLevel>,
    score: f32,
    /// Counts level changes.
    revision: u64,
}

/// The latest observation of one source and category in a cell, for fusion windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Recent {
    source: SourceRef,
    category: String,
    at: DateTime<Utc>,
    weight: f32,
    confidence: f32,
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct IncidentKey {
    grid: GridId,
    category: String,
    /// A device fault's device; empty for hazards (one incident per cell and category).
    device: CameraId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenIncident {
    incident: Incident,
    /// Evidence arrived since the last revision.
    changed: bool,
    /// Event time of the last revision, for `update_every`.
    last_revision_at: DateTime<Utc>,
    /// A device fault: open until the device recovers, never closed for being quiet.
    held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClosedIncident {
    incident: Incident,
    closed_at: DateTime<Utc>,
}

/// What ids a key has been given: names use `first_seen_ms` (the latest first-seen time of
/// the key's incidents), plus `#n` once an incident did not start later than that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct IdState {
    first_seen_ms: i64,
    reopened: u64,
}

/// Everything the engine remembers, as the snapshot stores it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    clock: Option<DateTime<Utc>>,
    last_sweep: Option<DateTime<Utc>>,
    #[serde(with = "pairs")]
    cells: BTreeMap<GridId, CellState>,
    #[serde(with = "pairs")]
    recent: BTreeMap<GridId, Vec<Recent>>,
    #[serde(with = "pairs")]
    open: BTreeMap<IncidentKey, OpenIncident>,
    #[serde(with = "pairs")]
    closed: BTreeMap<IncidentKey, ClosedIncident>,
    #[serde(with = "pairs")]
    ids: BTreeMap<IncidentKey, IdState>,
}

/// Maps with non-string keys as JSON arrays of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        let pairs = Vec::<(K, V)>::deserialize(d)?;
        let n = pairs.len();
        let map: BTreeMap<K, V> = pairs.into_iter().collect();
        if map.len() != n {
            return Err(serde::de::Error::custom("a key appears twice"));
        }
        Ok(map)
    }
}

/// Bumped whenever the snapshot's shape changes incompatibly.
const SNAPSHOT_VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    node: String,
    state: State,
}

pub struct GridRiskEngine {
    config: RiskConfig,
    context: RiskContext,
    state: State,
    /// The longest fusion window: how long recent observations are kept.
    window: Duration,
    /// The policy of categories the config does not list.
    default_policy: CategoryPolicy,
    /// The cells that have a camera (whose alarms can be verified).
    camera_cells: std::collections::BTreeSet<GridId>,
    /// The kind policy of each polygon cell that has one: looked up on every observation.
    kind_of_cell: BTreeMap<GridId, GridKindPolicy>,
}

impl GridRiskEngine {
    pub fn new(config: RiskConfig, context: RiskContext) -> Self {
        let window = config
            .fusion
            .iter()
            .map(FusionRule::within)
            .max()
            .unwrap_or(Duration::zero());
        let default_policy = CategoryPolicy {
            weight: 1.0,
            half_life: config.half_life,
            ceiling: config.default_ceiling,
            department: None,
            deadlines: config.deadlines,
        };
        let camera_cells = context
            .devices
            .values()
            .filter(|d| d.source.kind == SourceKind::Camera)
            .map(|d| d.grid.clone())
            .collect();
        let kind_of_cell = context
            .grids
            .grids()
            .iter()
            .filter_map(|g| {
                let policy = config.grid_kinds.get(g.kind.as_deref()?)?;
                Some((g.id.clone(), *policy))
            })
            .collect();
        Self {
            config,
            context,
            state: State::default(),
            window,
            default_policy,
            camera_cells,
            kind_of_cell,
        }
    }

    /// The engine's clock: the latest time it was given.
    pub fn clock(&self) -> Option<DateTime<Utc>> {
        self.state.clock
    }

    /// A cell's current level and fused score.
    pub fn cell_level(&self, grid: &GridId) -> (Option<RiskLevel>, f32) {
        self.state
            .cells
            .get(grid)
            .map_or((None, 0.0), |c| (c.level, c.score))
    }

    /// The open incident of a cell and category, if any.
    pub fn open_incident(&self, grid: &GridId, category: &str) -> Option<&Incident> {
        self.state
            .open
            .get(&IncidentKey {
                grid: grid.clone(),
                category: category.into(),
                device: CameraId::default(),
            })
            .map(|o| &o.incident)
    }

    fn policy(&self, category: &str) -> &CategoryPolicy {
        self.config
            .categories
            .get(category)
            .unwrap_or(&self.default_policy)
    }

    fn fused_level(&self, category: &str) -> Option<RiskLevel> {
        self.config.fusion.iter().find_map(|f| match f {
            FusionRule::All {
                category: c, level, ..
            } if c == category => Some(*level),
            _ => None,
        })
    }

    fn grid_kind(&self, grid: &GridId) -> Option<GridKindPolicy> {
        if !self.context.grids.is_h3() {
            return self.kind_of_cell.get(grid).copied();
        }
        // H3 cells are generated, all of one configured kind.
        let kind = self.context.grids.cell(grid.as_str())?.kind?;
        self.config.grid_kinds.get(&kind).copied()
    }

    /// The highest level `category` reaches on its own in `grid`.
    fn ceiling(&self, grid: &GridId, category: &str) -> RiskLevel {
        let base = self
            .fused_level(category)
            .unwrap_or_else(|| self.policy(category).ceiling);
        raise(base, self.grid_kind(grid).map_or(0, |k| k.raise))
    }

    fn reliability(&self, source: &SourceRef) -> f32 {
        self.config
            .reliability
            .get(source.id.as_str())
            .copied()
            .unwrap_or(match source.kind {
                SourceKind::Camera => self.config.reliability_camera,
                SourceKind::Sensor => self.config.reliability_sensor,
            })
    }

    fn tick(&mut self, at: DateTime<Utc>) -> DateTime<Utc> {
        let clock = self.state.clock.map_or(at, |c| c.max(at));
        self.state.clock = Some(clock);
        clock
    }

    /// A category's score in a cell at `now`: its sources combined, capped at its ceiling;
    /// an incident that missed a deadline holds the category at its (raised) level.
    fn category_score(
        &self,
        grid: &GridId,
        category: &str,
        by_source: &BTreeMap<String, Held>,
        now: DateTime<Utc>,
    ) -> f32 {
        let half_life = self.policy(category).half_life;
        let combined = by_source
            .values()
            .fold(0.0, |s, h| fuse(s, decay(h.score, h.at, now, half_life)));
        let capped = combined.min(self.config.thresholds.of(self.ceiling(grid, category)));
        let key = IncidentKey {
            grid: grid.clone(),
            category: category.into(),
            device: CameraId::default(),
        };
        match self.state.open.get(&key) {
            Some(o) if !o.incident.missed.is_empty() => {
                capped.max(self.config.thresholds.of(o.incident.level))
            }
            _ => capped,
        }
    }

    /// Recomputes a cell's score and level; a changed level is a grid-risk event.
    fn rescore(&mut self, grid: &GridId, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let Some(cell) = self.state.cells.get(grid) else {
            return;
        };
        let categories: BTreeMap<String, f32> = cell
            .held
            .iter()
            .map(|(c, by_source)| (c.clone(), self.category_score(grid, c, by_source, now)))
            .collect();
        // Categories combine as independent evidence; a fusion rule's category already
        // stands for its parts, so it counts by its own level rather than on top of them.
        let (mut plain, mut fused) = (0.0f32, 0.0f32);
        for (category, score) in &categories {
            if self.fused_level(category).is_some() {
                fused = fused.max(*score);
            } else {
                plain = fuse(plain, *score);
            }
        }
        let score = plain.max(fused);
        let score = if score < FORGET_BELOW { 0.0 } else { score };
        let previous = cell.level;
        let level =
            self.config
                .thresholds
                .level_with_hysteresis(previous, score, self.config.hysteresis);
        metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string()).set(f64::from(score));
        if level == previous {
            if let Some(cell) = self.state.cells.get_mut(grid) {
                cell.score = score;
            }
            return;
        }
        let info = self.context.grids.cell(grid.as_str());
        let incidents: Vec<String> = self
            .open_in(grid)
            .filter(|(_, o)| !o.held)
            .map(|(_, o)| o.incident.id.clone())
            .collect();
        let Some(cell) = self.state.cells.get_mut(grid) else {
            return;
        };
        cell.score = score;
        cell.level = level;
        cell.revision += 1;
        metrics::gauge!("skynet_grid_risk_level", "grid" => grid.to_string())
            .set(level.map_or(0.0, |l| (level_index(l) + 1) as f64));
        tracing::info!(grid = %grid, level = ?level.map(RiskLevel::as_str), previous = ?previous.map(RiskLevel::as_str), score, "grid risk level changed");
        let id = Uuid::new_v5(
            &GRID_RISK_NAMESPACE,
            format!(
                "{}/{grid}/{}/{}",
                self.config.node,
                cell.revision,
                now.timestamp_millis()
            )
            .as_bytes(),
        );
        out.push(RiskEvent::GridRisk(GridRisk {
            id: id.to_string(),
            grid: grid.clone(),
            name: info.as_ref().and_then(|i| i.name.clone()),
            kind: info.and_then(|i| i.kind),
            revision: cell.revision,
            level,
            level_colour: level.map(|l| l.colour().to_string()),
            previous_level: previous,
            score,
            at: now,
            categories,
            incidents,
        }));
    }

    /// Raises one source's held value for a category in a cell (saturating).
    fn hold(
        &mut self,
        grid: &GridId,
        category: &str,
        source: String,
        score: f32,
        at: DateTime<Utc>,
    ) {
        let half_life = self.policy(category).half_life;
        let held = self
            .state
            .cells
            .entry(grid.clone())
            .or_default()
            .held
            .entry(category.to_string())
            .or_default()
            .entry(source)
            .or_insert(Held { score: 0.0, at });
        // Late evidence counts at the held value's time: a value never decays backwards.
        let t = held.at.max(at);
        let new = decay(score, at, t, half_life).max(decay(held.score, held.at, t, half_life));
        *held = Held { score: new, at: t };
    }

    fn remember(&mut self, obs: &Observation) {
        let horizon = self.window;
        if horizon.is_zero() {
            return;
        }
        let recent = self.state.recent.entry(obs.grid.clone()).or_default();
        match recent
            .iter_mut()
            .find(|r| r.source == obs.source && r.category == obs.category)
        {
            Some(r) => {
                if obs.at >= r.at {
                    r.at = obs.at;
                    r.weight = obs.weight;
                    r.confidence = obs.confidence;
                }
                r.count = r.count.saturating_add(1);
            }
            None => recent.push(Recent {
                source: obs.source.clone(),
                category: obs.category.clone(),
                at: obs.at,
                weight: obs.weight,
                confidence: obs.confidence,
                count: 1,
            }),
        }
    }

    /// Recent observations in `grids` at most `within` before `at` (and not after it).
    fn recent_in<'a>(
        &'a self,
        grids: &'a [GridId],
        at: DateTime<Utc>,
        within: Duration,
    ) -> impl Iterator<Item = &'a Recent> + 'a {
        grids
            .iter()
            .filter_map(|g| self.state.recent.get(g))
            .flatten()
            .filter(move |r| r.at <= at && at.signed_duration_since(r.at) <= within)
    }

    fn has_camera(&self, grid: &GridId) -> bool {
        self.camera_cells.contains(grid)
    }

    /// The open incidents of one cell (keys are ordered by cell first).
    fn open_in<'a>(
        &'a self,
        grid: &'a GridId,
    ) -> impl Iterator<Item = (&'a IncidentKey, &'a OpenIncident)> + 'a {
        let from = IncidentKey {
            grid: grid.clone(),
            category: String::new(),
            device: CameraId::default(),
        };
        self.state
            .open
            .range(from..)
            .take_while(move |(k, _)| &k.grid == grid)
    }

    fn new_incident_id(&mut self, key: &IncidentKey, first_seen: DateTime<Utc>) -> String {
        let ms = first_seen.timestamp_millis();
        let base = |ms: i64| {
            format!(
                "{}/{}/{}/{}/{ms}",
                self.config.node, key.grid, key.category, key.device
            )
        };
        let name = match self.state.ids.get_mut(key) {
            Some(state) if ms <= state.first_seen_ms => {
                // Not later than an earlier incident of this key: its plain name may be
                // taken, so count. Names are then `<latest first-seen>#n`, all distinct.
                state.reopened = state.reopened.saturating_add(1);
                format!("{}#{}", base(state.first_seen_ms), state.reopened)
            }
            _ => {
                self.state.ids.insert(
                    key.clone(),
                    IdState {
                        first_seen_ms: ms,
                        reopened: 0,
                    },
                );
                base(ms)
            }
        };
        Uuid::new_v5(&INCIDENT_NAMESPACE, name.as_bytes()).to_string()
    }

    fn deadlines(&self, category: &str, level: RiskLevel, from: DateTime<Utc>) -> Deadlines {
        let d = if self.fused_level(category).is_some()
            && !self.config.categories.contains_key(category)
        {
            self.config.deadlines[level_index(level)]
        } else {
            self.policy(category).deadlines[level_index(level)]
        };
        Deadlines {
            dispatch_by: d.dispatch.and_then(|d| from.checked_add_signed(d)),
            resolve_by: d.resolve.and_then(|d| from.checked_add_signed(d)),
        }
    }

    fn department(&self, grid: &GridId, category: &str) -> String {
        self.policy(category)
            .department
            .clone()
            .or_else(|| {
                self.context
                    .grids
                    .cell(grid.as_str())
                    .and_then(|c| c.department)
            })
            .unwrap_or_else(|| self.config.default_department.clone())
    }

    fn owner(&self, obs: &Observation) -> OwnerKind {
        obs.evidence
            .owner
            .or_else(|| self.context.devices.get(&obs.source.id).map(|d| d.owner))
            .unwrap_or(OwnerKind::CityManagement)
    }

    fn revise(
        open: &mut OpenIncident,
        status: IncidentStatus,
        change: IncidentChange,
        at: DateTime<Utc>,
    ) -> RiskEvent {
        let incident = &mut open.incident;
        incident.revision = incident.revision.saturating_add(1);
        incident.status = status;
        incident.change = change;
        open.changed = false;
        open.last_revision_at = open.last_revision_at.max(at);
        RiskEvent::Incident(incident.clone())
    }

    fn set_open_gauge(&self) {
        metrics::gauge!("skynet_incidents_open").set(self.state.open.len() as f64);
    }

    fn close(
        &mut self,
        key: &IncidentKey,
        change: IncidentChange,
        state: IncidentState,
        at: DateTime<Utc>,
    ) -> Option<RiskEvent> {
        let mut open = self.state.open.remove(key)?;
        open.incident.state = state;
        tracing::info!(incident = %open.incident.id, grid = %key.grid, category = %key.category, "incident closed");
        let event = Self::revise(&mut open, IncidentStatus::Closed, change, at);
        if !open.held {
            self.state.closed.insert(
                key.clone(),
                ClosedIncident {
                    incident: open.incident,
                    closed_at: at,
                },
            );
        }
        self.set_open_gauge();
        Some(event)
    }

    /// Adds an observation's part to an incident's contributions (one per source and
    /// category, the latest), keeping at most `max`, in time order.
    fn contribute(max: usize, list: &mut Vec<Contribution>, part: Contribution) {
        match list
            .iter_mut()
            .find(|c| c.source == part.source && c.category == part.category)
        {
            Some(c) => {
                if part.at >= c.at {
                    c.at = part.at;
                    c.weight = part.weight;
                    c.confidence = part.confidence;
                }
                c.count = c.count.saturating_add(part.count);
            }
            None => list.push(part),
        }
        list.sort_by(|a, b| (a.at, &a.source, &a.category).cmp(&(b.at, &b.source, &b.category)));
        if list.len() > max {
            let excess = list.len() - max;
            list.drain(..excess);
        }
    }

    /// Evidence for the incident of `key`: merges into the open one, reopens one closed
    /// within the cooldown, or opens one when the level reaches `open_at`.
    #[allow(clippy::too_many_arguments)]
    fn incident_evidence(
        &mut self,
        key: IncidentKey,
        obs: &Observation,
        level: Option<RiskLevel>,
        score: f32,
        parts: Vec<Contribution>,
        rule: RuleRef,
        verification: Option<&'static str>,
        now: DateTime<Utc>,
        out: &mut Vec<RiskEvent>,
    ) {
        let mut detections = obs.evidence.detections.clone();
        detections.truncate(self.config.max_detections);
        let confidence_gain = obs.confidence;

        if let Some(mut open) = self.state.open.remove(&key) {
            let incident = &mut open.incident;
            incident.last_seen = incident.last_seen.max(obs.at);
            incident.observations = incident.observations.saturating_add(1);
            if !detections.is_empty() {
                incident.detections = detections;
            }
            if obs.evidence.reading.is_some() {
                incident.reading = obs.evidence.reading.clone();
            }
            incident.risk_score = incident.risk_score.max(score);
            incident.confidence = fuse(incident.confidence, confidence_gain);
            for p in parts {
                Self::contribute(
                    self.config.max_contributions,
                    &mut incident.contributions,
                    p,
                );
            }
            open.changed = true;
            let confirmed = verification == Some("confirmed")
                && incident.verification.as_deref() == Some("required");
            if confirmed {
                incident.verification = Some("confirmed".into());
            }
            if let Some(level) = level
                && level > incident.level
            {
                incident.level = level;
                incident.level_colour = level.colour().into();
                let tighter = self.deadlines(&key.category, level, incident.first_seen);
                let incident = &mut open.incident;
                incident.deadlines = Deadlines {
                    dispatch_by: earlier(incident.deadlines.dispatch_by, tighter.dispatch_by),
                    resolve_by: earlier(incident.deadlines.resolve_by, tighter.resolve_by),
                };
                tracing::info!(incident = %incident.id, grid = %key.grid, level = %level, "incident escalated");
                out.push(Self::revise(
                    &mut open,
                    IncidentStatus::Escalated,
                    IncidentChange::Escalated,
                    obs.at,
                ));
            } else if confirmed {
                out.push(Self::revise(
                    &mut open,
                    IncidentStatus::Updated,
                    IncidentChange::Confirmed,
                    obs.at,
                ));
            } else if open.changed
                && now.signed_duration_since(open.last_revision_at) >= self.config.update_every
            {
                out.push(Self::revise(
                    &mut open,
                    IncidentStatus::Updated,
                    IncidentChange::Evidence,
                    obs.at,
                ));
            }
            self.state.open.insert(key, open);
            return;
        }

        let Some(level) = level.filter(|l| *l >= self.config.open_at) else {
            return;
        };
        if let Some(closed) = self.state.closed.remove(&key)
            && obs.at.signed_duration_since(closed.closed_at) < self.config.cooldown
        {
            // The same problem again soon after: the same incident, not a second ticket.
            let mut incident = closed.incident;
            incident.state = IncidentState::Open;
            incident.last_seen = incident.last_seen.max(obs.at);
            incident.observations = incident.observations.saturating_add(1);
            incident.confidence = fuse(incident.confidence, confidence_gain);
            incident.risk_score = score;
            if level > incident.level {
                incident.level = level;
                incident.level_colour = level.colour().into();
            }
            for p in parts {
                Self::contribute(
                    self.config.max_contributions,
                    &mut incident.contributions,
                    p,
                );
            }
            let mut open = OpenIncident {
                incident,
                changed: false,
                last_revision_at: obs.at,
                held: false,
            };
            tracing::info!(incident = %open.incident.id, grid = %key.grid, "incident reopened within its cooldown");
            out.push(Self::revise(
                &mut open,
                IncidentStatus::Opened,
                IncidentChange::Reopened,
                obs.at,
            ));
            self.state.open.insert(key, open);
            self.set_open_gauge();
            return;
        }

        let mut incident = Incident {
            id: self.new_incident_id(&key, obs.at),
            revision: 1,
            status: IncidentStatus::Opened,
            state: IncidentState::Open,
            change: IncidentChange::Opened,
            category: key.category.clone(),
            level,
            level_colour: level.colour().into(),
            risk_score: score,
            confidence: confidence_gain.clamp(0.0, 1.0),
            verification: verification.map(str::to_string),
            grid: key.grid.clone(),
            department: self.department(&key.grid, &key.category),
            deadlines: self.deadlines(&key.category, level, obs.at),
            missed: Vec::new(),
            camera: CameraId::default(),
            sensor: None,
            owner: self.owner(obs),
            first_seen: obs.at,
            last_seen: obs.at,
            observations: 1,
            contributions: Vec::new(),
            detections,
            reading: obs.evidence.reading.clone(),
            rule,
        };
        incident.set_device(&obs.source.id, obs.source.kind);
        for p in parts {
            Self::contribute(
                self.config.max_contributions,
                &mut incident.contributions,
                p,
            );
        }
        tracing::info!(incident = %incident.id, grid = %key.grid, category = %key.category, level = %level, "incident opened");
        out.push(RiskEvent::Incident(incident.clone()));
        self.state.open.insert(
            key,
            OpenIncident {
                incident,
                changed: false,
                last_revision_at: obs.at,
                held: false,
            },
        );
        self.set_open_gauge();
    }

    fn fault(&mut self, obs: &Observation, fault: FaultEvidence, out: &mut Vec<RiskEvent>) {
        let key = IncidentKey {
            grid: obs.grid.clone(),
            category: obs.category.clone(),
            device: obs.source.id.clone(),
        };
        match fault {
            FaultEvidence::Recovered => {
                // Also a fault opened in another cell (the device was moved in the config).
                let keys: Vec<IncidentKey> = self
                    .state
                    .open
                    .iter()
                    .filter(|(k, o)| o.held && k.device == key.device && k.category == key.category)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    if let Some(open) = self.state.open.get_mut(&k) {
                        open.incident.last_seen = open.incident.last_seen.max(obs.at);
                    }
                    out.extend(self.close(
                        &k,
                        IncidentChange::Recovered,
                        IncidentState::Closed,
                        obs.at,
                    ));
                }
            }
            FaultEvidence::Offline { since } => {
                if self.state.open.contains_key(&key) {
                    return;
                }
                let mut incident = Incident {
                    id: self.new_incident_id(&key, since),
                    revision: 1,
                    status: IncidentStatus::Opened,
                    state: IncidentState::Open,
                    change: IncidentChange::Opened,
                    category: obs.category.clone(),
                    level: DEVICE_FAULT_LEVEL,
                    level_colour: DEVICE_FAULT_LEVEL.colour().into(),
                    risk_score: 0.0,
                    confidence: 1.0,
                    verification: None,
                    grid: obs.grid.clone(),
                    department: self.department(&obs.grid, &obs.category),
                    deadlines: self.deadlines(&obs.category, DEVICE_FAULT_LEVEL, obs.at),
                    missed: Vec::new(),
                    camera: CameraId::default(),
                    sensor: None,
                    owner: self.owner(obs),
                    first_seen: since,
                    last_seen: obs.at,
                    observations: 1,
                    contributions: Vec::new(),
                    detections: Vec::new(),
                    reading: None,
                    rule: RuleRef {
                        name: obs.category.clone(),
                        kind: DEVICE_FAULT_KIND.into(),
                        zone: None,
                    },
                };
                incident.set_device(&obs.source.id, obs.source.kind);
                tracing::warn!(incident = %incident.id, grid = %obs.grid, device = %obs.source.id, category = %obs.category, "device fault incident opened");
                out.push(RiskEvent::Incident(incident.clone()));
                self.state.open.insert(
                    key,
                    OpenIncident {
                        incident,
                        changed: false,
                        last_revision_at: obs.at,
                        held: true,
                    },
                );
                self.set_open_gauge();
            }
        }
    }

    /// The `all` fusion rules this observation completes: each one's incident evidence.
    fn fuse_rules(&mut self, obs: &Observation, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let concerned: Vec<FusionRule> = self
            .config
            .fusion
            .iter()
            .filter(|rule| match rule {
                FusionRule::All { when, .. } => when
                    .iter()
                    .any(|c| c.matches(&obs.category, obs.source.kind)),
                FusionRule::Unconfirmed { .. } => false,
            })
            .cloned()
            .collect();
        for rule in &concerned {
            let FusionRule::All {
                name,
                when,
                within,
                scope,
                category,
                level,
            } = rule
            else {
                continue;
            };
            if !when
                .iter()
                .any(|c| c.matches(&obs.category, obs.source.kind))
            {
                continue;
            }
            let mut grids = vec![obs.grid.clone()];
            if *scope == FusionScope::Neighbours {
                grids.extend(self.context.grids.neighbours(obs.grid.as_str()));
            }
            let mut parts: Vec<Contribution> = Vec::new();
            let mut all = true;
            for condition in when {
                let matching: Vec<Contribution> = self
                    .recent_in(&grids, obs.at, *within)
                    .filter(|r| condition.matches(&r.category, r.source.kind))
                    .map(|r| Contribution {
                        at: r.at,
                        source: r.source.clone(),
                        category: r.category.clone(),
                        weight: r.weight,
                        confidence: r.confidence,
                        count: r.count,
                    })
                    .collect();
                if matching.is_empty() {
                    all = false;
                    break;
                }
                parts.extend(matching);
            }
            if !all {
                continue;
            }
            parts.sort_by(|a, b| (&a.source, &a.category).cmp(&(&b.source, &b.category)));
            parts.dedup_by(|a, b| a.source == b.source && a.category == b.category);
            metrics::counter!("skynet_fusion_matches_total", "rule" => name.clone()).increment(1);
            let score = self.config.thresholds.of(*level);
            self.hold(&obs.grid, category, format!("fusion/{name}"), score, obs.at);
            let key = IncidentKey {
                grid: obs.grid.clone(),
                category: category.clone(),
                device: CameraId::default(),
            };
            let confidence = parts.iter().fold(0.0, |c, p| fuse(c, p.confidence));
            let fused = Observation {
                category: category.clone(),
                confidence,
                ..obs.clone()
            };
            let rule = RuleRef {
                name: name.clone(),
                kind: FUSION_KIND.into(),
                zone: None,
            };
            self.incident_evidence(
                key,
                &fused,
                Some(*level),
                score,
                parts,
                rule,
                None,
                now,
                out,
            );
        }
    }

    /// Whether a sensor's observation waits for a camera's confirmation, and the factor on
    /// its confidence.
    fn unconfirmed(&self, obs: &Observation) -> Option<f32> {
        if obs.source.kind != SourceKind::Sensor || !self.has_camera(&obs.grid) {
            return None;
        }
        let grids = [obs.grid.clone()];
        self.config.fusion.iter().find_map(|f| match f {
            FusionRule::Unconfirmed {
                sensor,
                confirm,
                within,
                confidence,
                ..
            } if sensor.contains(&obs.category) => {
                let seen = self.recent_in(&grids, obs.at, *within).any(|r| {
                    r.source.kind == SourceKind::Camera
                        && (confirm.is_empty() || confirm.contains(&r.category))
                });
                (!seen).then_some(*confidence)
            }
            _ => None,
        })
    }

    /// A camera's observation confirms the cell's sensor incidents waiting for it.
    fn confirm(&mut self, obs: &Observation, out: &mut Vec<RiskEvent>) {
        if obs.source.kind != SourceKind::Camera {
            return;
        }
        let confirms = |category: &str| {
            self.config.fusion.iter().any(|f| match f {
                FusionRule::Unconfirmed {
                    sensor, confirm, ..
                } => {
                    sensor.iter().any(|s| s == category)
                        && (confirm.is_empty() || confirm.contains(&obs.category))
                }
                _ => false,
            })
        };
        let keys: Vec<IncidentKey> = self
            .open_in(&obs.grid)
            .filter(|(k, o)| {
                o.incident.verification.as_deref() == Some("required") && confirms(&k.category)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(open) = self.state.open.get_mut(&key) {
                open.incident.verification = Some("confirmed".into());
                open.incident.last_seen = open.incident.last_seen.max(obs.at);
                out.push(Self::revise(
                    open,
                    IncidentStatus::Updated,
                    IncidentChange::Confirmed,
                    obs.at,
                ));
            }
        }
    }

    fn sweep(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        self.state.last_sweep = Some(now);
        // Incidents: quiet ones close, missed deadlines escalate, due updates go out.
        let keys: Vec<IncidentKey> = self.state.open.keys().cloned().collect();
        for key in keys {
            let Some(open) = self.state.open.get(&key) else {
                continue;
            };
            let incident = &open.incident;
            if !open.held
                && incident.state == IncidentState::Open
                && now.signed_duration_since(incident.last_seen) >= self.config.close_after
            {
                out.extend(self.close(&key, IncidentChange::Quiet, IncidentState::Closed, now));
                continue;
            }
            let missed_dispatch = incident.deadlines.dispatch_by.is_some_and(|t| now >= t)
                && matches!(
                    incident.state,
                    IncidentState::Open | IncidentState::Acknowledged
                )
                && !incident.missed.iter().any(|m| m == "dispatch");
            let missed_resolve = incident.deadlines.resolve_by.is_some_and(|t| now >= t)
                && !matches!(
                    incident.state,
                    IncidentState::Resolved | IncidentState::Verified
                )
                && !incident.missed.iter().any(|m| m == "resolve");
            let update_due = open.changed
                && now.signed_duration_since(open.last_revision_at) >= self.config.update_every;
            let Some(open) = self.state.open.get_mut(&key) else {
                continue;
            };
            if missed_dispatch || missed_resolve {
                let incident = &mut open.incident;
                for (missed, what) in [(missed_dispatch, "dispatch"), (missed_resolve, "resolve")] {
                    if missed {
                        incident.missed.push(what.into());
                        metrics::counter!("skynet_deadlines_missed_total", "deadline" => what)
                            .increment(1);
                    }
                }
                let level = raise(incident.level, 1);
                incident.level = level;
                incident.level_colour = level.colour().into();
                tracing::warn!(incident = %incident.id, grid = %key.grid, level = %level, missed = ?incident.missed, "incident missed a deadline; escalated");
                out.push(Self::revise(
                    open,
                    IncidentStatus::Escalated,
                    IncidentChange::DeadlineMissed,
                    now,
                ));
            } else if update_due {
                out.push(Self::revise(
                    open,
                    IncidentStatus::Updated,
                    IncidentChange::Evidence,
                    now,
                ));
            }
        }
        // Cells: decay, level changes, and forgetting what has faded.
        let grids: Vec<GridId> = self.state.cells.keys().cloned().collect();
        for grid in grids {
            self.rescore(&grid, now, out);
            let policies: BTreeMap<String, Duration> = self
                .state
                .cells
                .get(&grid)
                .map(|c| {
                    c.held
                        .keys()
                        .map(|k| (k.clone(), self.policy(k).half_life))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(cell) = self.state.cells.get_mut(&grid) {
                for (category, by_source) in &mut cell.held {
                    let half_life = policies
                        .get(category)
                        .copied()
                        .unwrap_or(self.config.half_life);
                    by_source.retain(|_, h| decay(h.score, h.at, now, half_life) >= FORGET_BELOW);
                }
                cell.held.retain(|_, s| !s.is_empty());
                if cell.held.is_empty() && cell.level.is_none() {
                    self.state.cells.remove(&grid);
                }
            }
        }
        // Fusion windows and cooldowns that have passed.
        let window = self.window;
        for recent in self.state.recent.values_mut() {
            recent.retain(|r| now.signed_duration_since(r.at) <= window);
        }
        self.state.recent.retain(|_, r| !r.is_empty());
        let cooldown = self.config.cooldown;
        self.state
            .closed
            .retain(|_, c| now.signed_duration_since(c.closed_at) < cooldown);
    }

    fn sweep_if_due(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let due = self
            .state
            .last_sweep
            .is_none_or(|last| now.signed_duration_since(last) >= self.config.sweep_every);
        if due {
            self.sweep(now, out);
        }
    }
}

fn earlier(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl RiskEngine for GridRiskEngine {
    fn open_incidents(&self) -> usize {
        self.state.open.len()
    }

    fn observe(&mut self, obs: &Observation) -> Vec<RiskEvent> {
        let mut out = Vec::new();
        if let Err(reason) = obs.validate() {
            metrics::counter!("skynet_observations_rejected_total").increment(1);
            tracing::warn!(source = %obs.source.id, grid = %obs.grid, %reason, "observation refused");
            return out;
        }
        let now = self.tick(obs.at);
        if let Some(fault) = obs.evidence.fault {
            self.fault(obs, fault, &mut out);
            self.sweep_if_due(now, &mut out);
            return out;
        }

        let policy = self.policy(&obs.category);
        let kind_weight = self.grid_kind(&obs.grid).map_or(1.0, |k| k.weight);
        let verify = self.unconfirmed(obs);
        let confidence = obs.confidence * verify.unwrap_or(1.0);
        let contribution =
            (obs.weight * confidence * policy.weight * kind_weight * self.reliability(&obs.source))
                .clamp(0.0, 1.0);
        self.remember(obs);
        self.hold(
            &obs.grid,
            &obs.category,
            obs.source.id.to_string(),
            contribution,
            obs.at,
        );
        self.confirm(obs, &mut out);

        let by_source = self
            .state
            .cells
            .get(&obs.grid)
            .and_then(|c| c.held.get(&obs.category))
            .cloned()
            .unwrap_or_default();
        // The incident reports the occurrence: its level is the evidence as of the
        // observation's own time, also when the observation arrives late.
        let score = self.category_score(&obs.grid, &obs.category, &by_source, obs.at);
        let level = self.config.thresholds.level(score);
        let key = IncidentKey {
            grid: obs.grid.clone(),
            category: obs.category.clone(),
            device: CameraId::default(),
        };
        let part = Contribution {
            at: obs.at,
            source: obs.source.clone(),
            category: obs.category.clone(),
            weight: obs.weight,
            confidence,
            count: 1,
        };
        let rule = obs.evidence.rule.clone().unwrap_or_else(|| RuleRef {
            name: obs.category.clone(),
            kind: obs.source.kind.as_str().into(),
            zone: None,
        });
        let observed = Observation {
            confidence,
            ..obs.clone()
        };
        self.incident_evidence(
            key,
            &observed,
            level,
            score,
            vec![part],
            rule,
            verify.map(|_| "required"),
            now,
            &mut out,
        );
        self.fuse_rules(obs, now, &mut out);
        self.rescore(&obs.grid, now, &mut out);
        self.sweep_if_due(now, &mut out);
        out
    }

    fn advance(&mut self, now: DateTime<Utc>) -> Vec<RiskEvent> {
        let now = self.tick(now);
        let mut out = Vec::new();
        self.sweep_if_due(now, &mut out);
        out
    }

    fn flush(&mut self) -> Vec<RiskEvent> {
        self.state
            .open
            .values_mut()
            .filter(|o| o.changed)
            .map(|o| {
                let at = o.incident.last_seen;
                Self::revise(o, IncidentStatus::Updated, IncidentChange::Evidence, at)
            })
            .collect()
    }

    fn feedback(
        &mut self,
        id: &str,
        state: IncidentState,
        at: DateTime<Utc>,
    ) -> Result<Vec<RiskEvent>, RiskError> {
        let now = self.tick(at);
        let Some(key) = self
            .state
            .open
            .iter()
            .find(|(_, o)| o.incident.id == id)
            .map(|(k, _)| k.clone())
        else {
            return Err(RiskError::UnknownIncident(id.to_string()));
        };
        let Some(open) = self.state.open.get_mut(&key) else {
            return Err(RiskError::UnknownIncident(id.to_string()));
        };
        let from = open.incident.state;
        if !from.may_become(state) {
            return Err(RiskError::Transition {
                id: id.to_string(),
                from: from.as_str(),
                to: state.as_str(),
            });
        }
        let mut out = Vec::new();
        if state.is_final() {
            out.extend(self.close(&key, IncidentChange::Feedback, state, now));
        } else {
            open.incident.state = state;
            out.push(Self::revise(
                open,
                IncidentStatus::Updated,
                IncidentChange::Feedback,
                now,
            ));
        }
        Ok(out)
    }

    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)> {
        self.state
            .open
            .iter()
            .filter(|(_, o)| o.held)
            .map(|(k, o)| {
                (
                    SourceRef {
                        kind: o.incident.source(),
                        id: k.device.clone(),
                    },
                    k.grid.clone(),
                    k.category.clone(),
                )
            })
            .collect()
    }

    fn snapshot(&self) -> serde_json::Value {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            node: self.config.node.clone(),
            state: self.state.clone(),
        };
        // Only structs, sequences and string-keyed maps: serializing cannot fail.
        serde_json::to_value(&snapshot).expect("risk snapshot types serialize to JSON")
    }

    fn restore(&mut self, snapshot: serde_json::Value) -> Result<(), RiskError> {
        if !(self.state.cells.is_empty() && self.state.open.is_empty() && self.state.ids.is_empty())
        {
            return Err(RiskError::NotFresh {
                cells: self.state.cells.len(),
                open: self.state.open.len(),
            });
        }
        match snapshot.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(SNAPSHOT_VERSION)) => {}
            found => {
                return Err(RiskError::SnapshotVersion {
                    found: found.map_or_else(|| "(none)".into(), ToString::to_string),
                    supported: SNAPSHOT_VERSION,
                });
            }
        }
        let snapshot: Snapshot =
            serde_json::from_value(snapshot).map_err(RiskError::SnapshotFormat)?;
        let invalid = RiskError::SnapshotInvalid;
        for (grid, cell) in &snapshot.state.cells {
            for h in cell.held.values().flat_map(BTreeMap::values) {
                if !(0.0..=1.0).contains(&h.score) {
                    return Err(invalid(format!("cell `{grid}` holds score {}", h.score)));
                }
            }
        }
        for (key, open) in &snapshot.state.open {
            if open.incident.status == IncidentStatus::Closed || open.incident.revision == 0 {
                return Err(invalid(format!(
                    "incident {} is listed as open but is {:?} at revision {}",
                    open.incident.id, open.incident.status, open.incident.revision
                )));
            }
            if !snapshot.state.ids.contains_key(key) {
                // Without it a reopened incident of this key could be given an old id.
                return Err(invalid(format!(
                    "incident {} has no id bookkeeping",
                    open.incident.id
                )));
            }
        }
        if snapshot.node != self.config.node {
            tracing::warn!(snapshot = %snapshot.node, node = %self.config.node, "risk snapshot was taken under another node name");
        }
        self.state = snapshot.state;
        self.set_open_gauge();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
