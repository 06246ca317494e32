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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use skynet_core::{
    CaseStatus, Contribution, Deadlines, DeviceId, FaultEvidence, GridId, GridRisk, Incident,
    IncidentChange, IncidentState, IncidentStatus, Observation, OwnerKind, RiskEvent, RiskLevel,
    RuleRef, SourceKind, SourceRef,
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
    /// The case system's status for an incident: moves its lifecycle and makes a revision.
    /// Resolved, verified and rejected incidents take their category's evidence out of the
    /// cell (the hazard was dealt with, or was never there), which lowers its risk.
    fn feedback(&mut self, update: &CaseStatus) -> Result<Vec<RiskEvent>, RiskError>;
    /// The devices with an open fault incident, with its cell and category.
    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)>;
    /// How many incidents are open.
    fn open_incidents(&self) -> usize;
    /// Everything needed to go on after a restart, as JSON text (written straight from the
    /// state: a city's state can be large, and a tree of JSON values is many times larger).
    fn snapshot(&self) -> Box<RawValue>;
    /// Restores a snapshot taken by `snapshot` (on a fresh engine, before any observation).
    fn restore(&mut self, snapshot: &RawValue) -> Result<(), RiskError>;
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
    pub devices: BTreeMap<DeviceId, DeviceInfo>,
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
    let elapsed = to.signed_duration_since(from).num_milliseconds().max(0);
    if elapsed == 0 {
        return score;
    }
    let half = half_life.num_milliseconds().max(1) as f64;
    // 2^-x rather than 0.5^x: the same value, without powf's logarithm.
    (f64::from(score) * (-(elapsed as f64) / half).exp2()) as f32
}

/// One source's saturated value for one category in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Held {
    score: f32,
    at: DateTime<Utc>,
}

/// An incident's key within its cell: its category, and the device for a device fault
/// (empty for hazards: one incident per cell and category).
type CellKey = (String, DeviceId);

/// Everything the engine keeps about one cell. All of it lives here, so an observation
/// touches one cell's small maps after one lookup, however large the city.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CellState {
    /// By category, then source (a fusion rule's parts count as the source `fusion/<rule>`).
    #[serde(with = "pairs")]
    held: BTreeMap<String, BTreeMap<String, Held>>,
    level: Option<RiskLevel>,
    score: f32,
    /// Counts level changes.
    revision: u64,
    /// The latest observation of each source and category, for fusion windows.
    recent: Vec<Recent>,
    #[serde(with = "pairs")]
    open: BTreeMap<CellKey, OpenIncident>,
    /// Closed within the cooldown: evidence now reopens them.
    #[serde(with = "pairs")]
    closed: BTreeMap<CellKey, ClosedIncident>,
}

impl CellState {
    fn is_idle(&self) -> bool {
        self.held.is_empty()
            && self.level.is_none()
            && self.recent.is_empty()
            && self.open.is_empty()
            && self.closed.is_empty()
    }

    /// The open hazard incident of `category`, if any.
    fn hazard(&self, category: &str) -> Option<&OpenIncident> {
        // A cell has a handful of incidents: a scan, with no key to allocate.
        self.open
            .iter()
            .find(|((c, device), _)| c == category && device.is_empty())
            .map(|(_, o)| o)
    }
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct IncidentKey {
    grid: GridId,
    category: String,
    /// A device fault's device; empty for hazards (one incident per cell and category).
    device: DeviceId,
}

impl IncidentKey {
    fn hazard(grid: &GridId, category: &str) -> Self {
        Self {
            grid: grid.clone(),
            category: category.to_string(),
            device: DeviceId::default(),
        }
    }

    fn in_cell(&self) -> CellKey {
        (self.category.clone(), self.device.clone())
    }
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
    cells: HashMap<GridId, CellState>,
    /// Kept when a cell is forgotten, so an id is never given twice.
    #[serde(with = "pairs")]
    ids: HashMap<IncidentKey, IdState>,
}

/// Maps as JSON arrays of `[key, value]` pairs, in key order (so a snapshot of the same
/// state is the same text, whatever the map's own order).
mod pairs {
    use std::collections::{BTreeMap, HashMap};
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The maps the engine stores.
    pub trait Map<K, V>: FromIterator<(K, V)> {
        fn entries(&self) -> Vec<(&K, &V)>;
        fn len(&self) -> usize;
    }

    impl<K: Ord, V> Map<K, V> for BTreeMap<K, V> {
        fn entries(&self) -> Vec<(&K, &V)> {
            self.iter().collect()
        }
        fn len(&self) -> usize {
            BTreeMap::len(self)
        }
    }

    impl<K: Ord + Hash + Eq, V> Map<K, V> for HashMap<K, V> {
        fn entries(&self) -> Vec<(&K, &V)> {
            let mut entries: Vec<(&K, &V)> = self.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries
        }
        fn len(&self) -> usize {
            HashMap::len(self)
        }
    }

    pub fn serialize<S, M, K, V>(map: &M, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        M: Map<K, V>,
        K: Serialize,
        V: Serialize,
    {
        s.collect_seq(map.entries())
    }

    pub fn deserialize<'de, D, M, K, V>(d: D) -> Result<M, D::Error>
    where
        D: Deserializer<'de>,
        M: Map<K, V>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
    {
        let pairs = Vec::<(K, V)>::deserialize(d)?;
        let n = pairs.len();
        let map: M = pairs.into_iter().collect();
        if map.len() != n {
            return Err(serde::de::Error::custom("a key appears twice"));
        }
        Ok(map)
    }
}

/// Bumped whenever the snapshot's shape changes incompatibly.
const SNAPSHOT_VERSION: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    /// Checked on its own before the rest is read.
    #[allow(dead_code)]
    version: u32,
    node: String,
    state: State,
}

/// [`Snapshot`] as written, borrowing the state instead of copying it.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    node: &'a str,
    state: &'a State,
}

pub struct GridRiskEngine {
    config: RiskConfig,
    context: RiskContext,
    state: State,
    /// How many incidents are open, over all cells.
    open_count: usize,
    /// The longest fusion window: how long recent observations are kept.
    window: Duration,
    /// The policy of categories the config does not list.
    default_policy: CategoryPolicy,
    /// The cells that have a camera (whose alarms can be verified).
    camera_cells: HashSet<GridId>,
    /// The kind policy of each polygon cell that has one: looked up on every observation.
    kind_of_cell: HashMap<GridId, GridKindPolicy>,
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
            open_count: 0,
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
            .cells
            .get(grid)?
            .hazard(category)
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
        cell: &CellState,
        category: &str,
        by_source: &BTreeMap<String, Held>,
        now: DateTime<Utc>,
    ) -> f32 {
        let raise_by = self.grid_kind(grid).map_or(0, |k| k.raise);
        let fused = self.fused_level(category);
        self.category_score_in(cell, category, by_source, now, fused, raise_by)
    }

    /// [`category_score`](Self::category_score) with the cell's raise and the category's
    /// fusion level already looked up (a cell's categories are scored on every observation).
    fn category_score_in(
        &self,
        cell: &CellState,
        category: &str,
        by_source: &BTreeMap<String, Held>,
        now: DateTime<Utc>,
        fused: Option<RiskLevel>,
        raise_by: u8,
    ) -> f32 {
        let policy = self.policy(category);
        let half_life = policy.half_life;
        let combined = by_source
            .values()
            .fold(0.0, |s, h| fuse(s, decay(h.score, h.at, now, half_life)));
        let ceiling = raise(fused.unwrap_or(policy.ceiling), raise_by);
        let capped = combined.min(self.config.thresholds.of(ceiling));
        if cell.open.is_empty() {
            return capped;
        }
        match cell.hazard(category) {
            Some(o) if !o.incident.missed.is_empty() => {
                capped.max(self.config.thresholds.of(o.incident.level))
            }
            _ => capped,
        }
    }

    /// A cell's fused score at `now`. Categories combine as independent evidence; a fusion
    /// rule's category already stands for its parts, so it counts by its own level rather
    /// than on top of them.
    fn cell_score(&self, grid: &GridId, cell: &CellState, now: DateTime<Utc>) -> f32 {
        let raise_by = self.grid_kind(grid).map_or(0, |k| k.raise);
        let (mut plain, mut fused) = (0.0f32, 0.0f32);
        for (category, by_source) in &cell.held {
            let level = self.fused_level(category);
            let score = self.category_score_in(cell, category, by_source, now, level, raise_by);
            if level.is_some() {
                fused = fused.max(score);
            } else {
                plain = fuse(plain, score);
            }
        }
        let score = plain.max(fused);
        if score < FORGET_BELOW { 0.0 } else { score }
    }

    /// Recomputes a cell's score and level; a changed level is a grid-risk event.
    fn rescore(&mut self, grid: &GridId, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let Some(cell) = self.state.cells.get(grid) else {
            return;
        };
        let score = self.cell_score(grid, cell, now);
        let previous = cell.level;
        let level =
            self.config
                .thresholds
                .level_with_hysteresis(previous, score, self.config.hysteresis);
        if level == previous {
            if let Some(cell) = self.state.cells.get_mut(grid) {
                cell.score = score;
            }
            return;
        }
        let categories: BTreeMap<String, f32> = cell
            .held
            .iter()
            .map(|(c, by_source)| {
                (
                    c.clone(),
                    self.category_score(grid, cell, c, by_source, now),
                )
            })
            .collect();
        let incidents: Vec<String> = cell
            .open
            .values()
            .filter(|o| !o.held)
            .map(|o| o.incident.id.clone())
            .collect();
        let info = self.context.grids.cell(grid.as_str());
        let Some(cell) = self.state.cells.get_mut(grid) else {
            return;
        };
        cell.score = score;
        cell.level = level;
        cell.revision += 1;
        metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string()).set(f64::from(score));
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
    fn hold(&mut self, grid: &GridId, category: &str, source: &str, score: f32, at: DateTime<Utc>) {
        let half_life = self.policy(category).half_life;
        let cell = self.state.cells.entry(grid.clone()).or_default();
        if !cell.held.contains_key(category) {
            cell.held.insert(category.to_string(), BTreeMap::new());
        }
        let Some(by_source) = cell.held.get_mut(category) else {
            return;
        };
        match by_source.get_mut(source) {
            Some(held) => {
                // Late evidence counts at the held value's time: a value never decays
                // backwards.
                let t = held.at.max(at);
                let new =
                    decay(score, at, t, half_life).max(decay(held.score, held.at, t, half_life));
                *held = Held { score: new, at: t };
            }
            None => {
                by_source.insert(source.to_string(), Held { score, at });
            }
        }
    }

    fn remember(&mut self, obs: &Observation) {
        if self.window.is_zero() {
            return;
        }
        let recent = &mut self.state.cells.entry(obs.grid.clone()).or_default().recent;
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
            .filter_map(|g| self.state.cells.get(g))
            .flat_map(|c| c.recent.iter())
            .filter(move |r| r.at <= at && at.signed_duration_since(r.at) <= within)
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
        let d = self.policy(category).deadlines[level_index(level)];
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
        metrics::gauge!("skynet_incidents_open").set(self.open_count as f64);
    }

    fn close(
        &mut self,
        key: &IncidentKey,
        change: IncidentChange,
        state: IncidentState,
        at: DateTime<Utc>,
    ) -> Option<RiskEvent> {
        let cell = self.state.cells.get_mut(&key.grid)?;
        let in_cell = key.in_cell();
        let mut open = cell.open.remove(&in_cell)?;
        open.incident.state = state;
        tracing::info!(incident = %open.incident.id, grid = %key.grid, category = %key.category, "incident closed");
        let event = Self::revise(&mut open, IncidentStatus::Closed, change, at);
        if !open.held {
            cell.closed.insert(
                in_cell,
                ClosedIncident {
                    incident: open.incident,
                    closed_at: at,
                },
            );
        }
        self.open_count = self.open_count.saturating_sub(1);
        self.set_open_gauge();
        Some(event)
    }

    fn insert_open(&mut self, key: &IncidentKey, open: OpenIncident) {
        let cell = self.state.cells.entry(key.grid.clone()).or_default();
        if cell.open.insert(key.in_cell(), open).is_none() {
            self.open_count += 1;
        }
        self.set_open_gauge();
    }

    /// Adds observations' parts to an incident's contributions (one per source and
    /// category, the latest), keeping the latest `max`, in time order.
    fn contribute(max: usize, list: &mut Vec<Contribution>, parts: Vec<Contribution>) {
        for part in parts {
            let entry = match list
                .iter()
                .position(|c| c.source == part.source && c.category == part.category)
            {
                Some(i) => {
                    let mut c = list.remove(i);
                    if part.at >= c.at {
                        c.at = part.at;
                        c.weight = part.weight;
                        c.confidence = part.confidence;
                    }
                    c.count = c.count.saturating_add(part.count);
                    c
                }
                None => part,
            };
            // Evidence mostly arrives in time order: the place is usually the end, found by
            // comparing times alone.
            let at = list.partition_point(|c| {
                (c.at, &c.source, &c.category) <= (entry.at, &entry.source, &entry.category)
            });
            list.insert(at, entry);
        }
        if list.len() > max {
            let excess = list.len() - max;
            list.drain(..excess);
        }
    }

    /// Revision 1 of a new incident of `key` at `level`, first seen at `first_seen`, on
    /// `obs`'s device: no evidence detail yet (the caller adds what it has).
    fn first_revision(
        &mut self,
        key: &IncidentKey,
        obs: &Observation,
        level: RiskLevel,
        first_seen: DateTime<Utc>,
    ) -> Incident {
        let mut incident = Incident {
            id: self.new_incident_id(key, first_seen),
            revision: 1,
            status: IncidentStatus::Opened,
            state: IncidentState::Open,
            change: IncidentChange::Opened,
            category: key.category.clone(),
            level,
            level_colour: level.colour().into(),
            risk_score: 0.0,
            confidence: 1.0,
            verification: None,
            grid: key.grid.clone(),
            department: self.department(&key.grid, &key.category),
            deadlines: self.deadlines(&key.category, level, obs.at),
            assignee: None,
            note: None,
            missed: Vec::new(),
            camera: DeviceId::default(),
            sensor: None,
            owner: self.owner(obs),
            first_seen,
            last_seen: obs.at,
            observations: 1,
            contributions: Vec::new(),
            detections: Vec::new(),
            reading: None,
            rule: RuleRef {
                name: key.category.clone(),
                kind: String::new(),
                zone: None,
            },
            evidence: Vec::new(),
        };
        incident.set_device(&obs.source.id, obs.source.kind);
        incident
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
        rule: Option<&RuleRef>,
        confidence_gain: f32,
        verification: Option<&'static str>,
        now: DateTime<Utc>,
        out: &mut Vec<RiskEvent>,
    ) {
        let mut detections = obs.evidence.detections.clone();
        detections.truncate(self.config.max_detections);

        let in_cell = key.in_cell();
        let open = self
            .state
            .cells
            .get_mut(&key.grid)
            .and_then(|c| c.open.remove(&in_cell));
        if let Some(mut open) = open {
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
            Self::contribute(
                self.config.max_contributions,
                &mut incident.contributions,
                parts,
            );
            open.changed = true;
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
            if let Some(cell) = self.state.cells.get_mut(&key.grid) {
                cell.open.insert(in_cell, open);
            }
            return;
        }

        let Some(level) = level.filter(|l| *l >= self.config.open_at) else {
            return;
        };
        let closed = self
            .state
            .cells
            .get_mut(&key.grid)
            .and_then(|c| c.closed.remove(&in_cell));
        if let Some(closed) = closed
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
            Self::contribute(
                self.config.max_contributions,
                &mut incident.contributions,
                parts,
            );
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
            self.insert_open(&key, open);
            return;
        }

        let mut incident = self.first_revision(&key, obs, level, obs.at);
        incident.risk_score = score;
        incident.confidence = confidence_gain.clamp(0.0, 1.0);
        incident.verification = verification.map(str::to_string);
        incident.detections = detections;
        incident.reading = obs.evidence.reading.clone();
        incident.rule = rule.cloned().unwrap_or_else(|| RuleRef {
            name: key.category.clone(),
            kind: obs.source.kind.as_str().into(),
            zone: None,
        });
        Self::contribute(
            self.config.max_contributions,
            &mut incident.contributions,
            parts,
        );
        tracing::info!(incident = %incident.id, grid = %key.grid, category = %key.category, level = %level, "incident opened");
        out.push(RiskEvent::Incident(incident.clone()));
        self.insert_open(
            &key,
            OpenIncident {
                incident,
                changed: false,
                last_revision_at: obs.at,
                held: false,
            },
        );
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
                    .faults()
                    .filter(|(k, _)| k.device == key.device && k.category == key.category)
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    if let Some(open) = self
                        .state
                        .cells
                        .get_mut(&k.grid)
                        .and_then(|c| c.open.get_mut(&k.in_cell()))
                    {
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
                let known = self
                    .state
                    .cells
                    .get(&key.grid)
                    .is_some_and(|c| c.open.contains_key(&key.in_cell()));
                if known {
                    return;
                }
                let mut incident = self.first_revision(&key, obs, DEVICE_FAULT_LEVEL, since);
                incident.rule.kind = DEVICE_FAULT_KIND.into();
                tracing::warn!(incident = %incident.id, grid = %obs.grid, device = %obs.source.id, category = %obs.category, "device fault incident opened");
                out.push(RiskEvent::Incident(incident.clone()));
                self.insert_open(
                    &key,
                    OpenIncident {
                        incident,
                        changed: false,
                        last_revision_at: obs.at,
                        held: true,
                    },
                );
            }
        }
    }

    /// The `all` fusion rules this observation completes: each one's incident evidence.
    fn fuse_rules(&mut self, obs: &Observation, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        for index in 0..self.config.fusion.len() {
            let Some((name, category, level, parts)) = self.fusion_match(index, obs) else {
                continue;
            };
            metrics::counter!("skynet_fusion_matches_total", "rule" => name.clone()).increment(1);
            let score = self.config.thresholds.of(level);
            self.hold(
                &obs.grid,
                &category,
                &format!("fusion/{name}"),
                score,
                obs.at,
            );
            let confidence = parts.iter().fold(0.0, |c, p| fuse(c, p.confidence));
            let rule = RuleRef {
                name,
                kind: FUSION_KIND.into(),
                zone: None,
            };
            self.incident_evidence(
                IncidentKey::hazard(&obs.grid, &category),
                obs,
                Some(level),
                score,
                parts,
                Some(&rule),
                confidence,
                None,
                now,
                out,
            );
        }
    }

    /// Whether `obs` completes `all` fusion rule `index`: its name, category and level, and
    /// the observations that met its conditions (the latest of each source and category).
    fn fusion_match(
        &self,
        index: usize,
        obs: &Observation,
    ) -> Option<(String, String, RiskLevel, Vec<Contribution>)> {
        let FusionRule::All {
            name,
            when,
            within,
            scope,
            category,
            level,
        } = self.config.fusion.get(index)?
        else {
            return None;
        };
        if !when
            .iter()
            .any(|c| c.matches(&obs.category, obs.source.kind))
        {
            return None;
        }
        let neighbours = match scope {
            FusionScope::Cell => std::borrow::Cow::Borrowed(&[][..]),
            FusionScope::Neighbours => self.context.grids.neighbours_of(obs.grid.as_str()),
        };
        // One pass over the recent observations in scope: which conditions each meets.
        let mut met = 0u64;
        let mut matching: Vec<&Recent> = Vec::new();
        for grid in std::iter::once(&obs.grid).chain(neighbours.iter()) {
            let Some(cell) = self.state.cells.get(grid) else {
                continue;
            };
            for r in &cell.recent {
                if r.at > obs.at || obs.at.signed_duration_since(r.at) > *within {
                    continue;
                }
                let mut any = false;
                for (i, condition) in when.iter().enumerate().take(64) {
                    if condition.matches(&r.category, r.source.kind) {
                        met |= 1 << i;
                        any = true;
                    }
                }
                if any {
                    matching.push(r);
                }
            }
        }
        // Validated to have 2 or more conditions; only the first 64 are told apart.
        let all = when.len().clamp(1, 64);
        if met != u64::MAX >> (64 - all) {
            return None;
        }
        let mut parts: Vec<Contribution> = matching
            .into_iter()
            .map(|r| Contribution {
                at: r.at,
                source: r.source.clone(),
                category: r.category.clone(),
                weight: r.weight,
                confidence: r.confidence,
                count: r.count,
            })
            .collect();
        parts.sort_by(|a, b| (&a.source, &a.category).cmp(&(&b.source, &b.category)));
        parts.dedup_by(|a, b| a.source == b.source && a.category == b.category);
        Some((name.clone(), category.clone(), *level, parts))
    }

    /// Whether a sensor's observation waits for a camera's confirmation, and the factor on
    /// its confidence.
    fn unconfirmed(&self, obs: &Observation) -> Option<f32> {
        if obs.source.kind != SourceKind::Sensor || !self.camera_cells.contains(&obs.grid) {
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
        let keys: Vec<CellKey> = self
            .state
            .cells
            .get(&obs.grid)
            .map(|cell| {
                cell.open
                    .iter()
                    .filter(|((category, _), o)| {
                        o.incident.verification.as_deref() == Some("required") && confirms(category)
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let Some(cell) = self.state.cells.get_mut(&obs.grid) else {
            return;
        };
        for key in keys {
            if let Some(open) = cell.open.get_mut(&key) {
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
        // In cell order, so the events come out the same on every run.
        let mut grids: Vec<GridId> = self.state.cells.keys().cloned().collect();
        grids.sort_unstable();
        for grid in grids {
            self.sweep_incidents(&grid, now, out);
            self.rescore(&grid, now, out);
            if let Some(cell) = self.state.cells.get(&grid) {
                let score = cell.score;
                metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string())
                    .set(f64::from(score));
            }
            self.forget_faded(&grid, now);
        }
    }

    /// A cell's incidents: quiet ones close, missed deadlines escalate, due updates go out.
    fn sweep_incidents(&mut self, grid: &GridId, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let keys: Vec<CellKey> = self
            .state
            .cells
            .get(grid)
            .map(|c| c.open.keys().cloned().collect())
            .unwrap_or_default();
        for (category, device) in keys {
            let key = IncidentKey {
                grid: grid.clone(),
                category,
                device,
            };
            let Some(open) = self
                .state
                .cells
                .get(grid)
                .and_then(|c| c.open.get(&key.in_cell()))
            else {
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
            let Some(open) = self
                .state
                .cells
                .get_mut(grid)
                .and_then(|c| c.open.get_mut(&key.in_cell()))
            else {
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
    }

    /// Drops what has decayed away, passed fusion windows and cooldowns, and the cell itself
    /// once nothing is left: a long run's state stays bounded by the active cells.
    fn forget_faded(&mut self, grid: &GridId, now: DateTime<Utc>) {
        let (window, cooldown) = (self.window, self.config.cooldown);
        let half_lives: Vec<Duration> = self
            .state
            .cells
            .get(grid)
            .map(|c| c.held.keys().map(|k| self.policy(k).half_life).collect())
            .unwrap_or_default();
        let Some(cell) = self.state.cells.get_mut(grid) else {
            return;
        };
        for (by_source, half_life) in cell.held.values_mut().zip(half_lives) {
            by_source.retain(|_, h| decay(h.score, h.at, now, half_life) >= FORGET_BELOW);
        }
        cell.held.retain(|_, s| !s.is_empty());
        cell.recent
            .retain(|r| now.signed_duration_since(r.at) <= window);
        cell.closed
            .retain(|_, c| now.signed_duration_since(c.closed_at) < cooldown);
        if cell.is_idle() {
            self.state.cells.remove(grid);
        }
    }

    /// Every open device-fault incident, with its key.
    fn faults(&self) -> impl Iterator<Item = (IncidentKey, &OpenIncident)> + '_ {
        self.state.cells.iter().flat_map(|(grid, cell)| {
            cell.open
                .iter()
                .filter(|(_, o)| o.held)
                .map(move |((category, device), o)| {
                    (
                        IncidentKey {
                            grid: grid.clone(),
                            category: category.clone(),
                            device: device.clone(),
                        },
                        o,
                    )
                })
        })
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
        self.open_count
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
            obs.source.id.as_str(),
            contribution,
            obs.at,
        );
        self.confirm(obs, &mut out);

        // The incident reports the occurrence: its level is the evidence as of the
        // observation's own time, also when the observation arrives late.
        let score = self.state.cells.get(&obs.grid).map_or(0.0, |cell| {
            cell.held.get(&obs.category).map_or(0.0, |by_source| {
                self.category_score(&obs.grid, cell, &obs.category, by_source, obs.at)
            })
        });
        let level = self.config.thresholds.level(score);
        let part = Contribution {
            at: obs.at,
            source: obs.source.clone(),
            category: obs.category.clone(),
            weight: obs.weight,
            confidence,
            count: 1,
        };
        self.incident_evidence(
            IncidentKey::hazard(&obs.grid, &obs.category),
            obs,
            level,
            score,
            vec![part],
            obs.evidence.rule.as_ref(),
            confidence,
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
        let mut grids: Vec<GridId> = self.state.cells.keys().cloned().collect();
        grids.sort_unstable();
        let mut out = Vec::new();
        for grid in grids {
            let Some(cell) = self.state.cells.get_mut(&grid) else {
                continue;
            };
            for open in cell.open.values_mut().filter(|o| o.changed) {
                let at = open.incident.last_seen;
                out.push(Self::revise(
                    open,
                    IncidentStatus::Updated,
                    IncidentChange::Evidence,
                    at,
                ));
            }
        }
        out
    }

    fn feedback(&mut self, update: &CaseStatus) -> Result<Vec<RiskEvent>, RiskError> {
        let (id, state) = (update.incident.as_str(), update.status);
        // The case system's clock is not the engine's: a status never moves the engine's
        // time (a clock running fast would age every cell). Its revision is dated at the
        // engine's time; `at` is the case system's record.
        let now = self.state.clock.unwrap_or(update.at);
        let Some(key) = self.state.cells.iter().find_map(|(grid, cell)| {
            cell.open
                .iter()
                .find(|(_, o)| o.incident.id == id)
                .map(|((category, device), _)| IncidentKey {
                    grid: grid.clone(),
                    category: category.clone(),
                    device: device.clone(),
                })
        }) else {
            // Closed by this very status (a final one, sent again): already applied.
            let closed_as = self.state.cells.values().find_map(|cell| {
                cell.closed
                    .values()
                    .find(|c| c.incident.id == id)
                    .map(|c| c.incident.state)
            });
            return Err(match closed_as {
                Some(from) if from == state => RiskError::Transition {
                    id: id.to_string(),
                    from: from.as_str(),
                    to: state.as_str(),
                },
                _ => RiskError::UnknownIncident(id.to_string()),
            });
        };
        let Some(open) = self
            .state
            .cells
            .get_mut(&key.grid)
            .and_then(|c| c.open.get_mut(&key.in_cell()))
        else {
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
        if let Some(department) = &update.department {
            open.incident.department.clone_from(department);
        }
        if update.assignee.is_some() {
            open.incident.assignee.clone_from(&update.assignee);
        }
        if update.note.is_some() {
            open.incident.note.clone_from(&update.note);
        }
        let mut out = Vec::new();
        if state == IncidentState::Rejected {
            // What engineers tune against: which rule on which device raised a false alarm.
            metrics::counter!(
                "skynet_false_alarms_total",
                "category" => key.category.clone(),
                "device" => open.incident.device().to_string(),
                "rule" => open.incident.rule.name.clone(),
            )
            .increment(1);
            tracing::info!(incident = %id, grid = %key.grid, category = %key.category, "rejected as a false alarm");
        }
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
        if matches!(
            state,
            IncidentState::Resolved | IncidentState::Verified | IncidentState::Rejected
        ) && let Some(cell) = self.state.cells.get_mut(&key.grid)
            && cell.held.remove(&key.category).is_some()
        {
            self.rescore(&key.grid, now, &mut out);
        }
        Ok(out)
    }

    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)> {
        let mut faults: Vec<(SourceRef, GridId, String)> = self
            .faults()
            .map(|(key, open)| {
                (
                    SourceRef {
                        kind: open.incident.source(),
                        id: key.device,
                    },
                    key.grid,
                    key.category,
                )
            })
            .collect();
        faults.sort();
        faults
    }

    fn snapshot(&self) -> Box<RawValue> {
        let snapshot = SnapshotRef {
            version: SNAPSHOT_VERSION,
            node: &self.config.node,
            state: &self.state,
        };
        // Only structs, sequences and string-keyed maps: serializing cannot fail.
        serde_json::value::to_raw_value(&snapshot).expect("risk snapshot types serialize to JSON")
    }

    fn restore(&mut self, snapshot: &RawValue) -> Result<(), RiskError> {
        if !(self.state.cells.is_empty() && self.state.ids.is_empty()) {
            return Err(RiskError::NotFresh {
                cells: self.state.cells.len(),
                open: self.open_count,
            });
        }
        // The version first, so an old or newer snapshot says so instead of failing on a
        // field it does not know.
        #[derive(Deserialize)]
        struct Version {
            version: Option<serde_json::Value>,
        }
        let found: Version =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        match found.version {
            Some(v) if v.as_u64() == Some(u64::from(SNAPSHOT_VERSION)) => {}
            found => {
                return Err(RiskError::SnapshotVersion {
                    found: found.map_or_else(|| "(none)".into(), |v| v.to_string()),
                    supported: SNAPSHOT_VERSION,
                });
            }
        }
        let snapshot: Snapshot =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        let invalid = RiskError::SnapshotInvalid;
        let mut open_count = 0;
        for (grid, cell) in &snapshot.state.cells {
            for h in cell.held.values().flat_map(BTreeMap::values) {
                if !(0.0..=1.0).contains(&h.score) {
                    return Err(invalid(format!("cell `{grid}` holds score {}", h.score)));
                }
            }
            for ((category, device), open) in &cell.open {
                if open.incident.status == IncidentStatus::Closed || open.incident.revision == 0 {
                    return Err(invalid(format!(
                        "incident {} is listed as open but is {:?} at revision {}",
                        open.incident.id, open.incident.status, open.incident.revision
                    )));
                }
                let key = IncidentKey {
                    grid: grid.clone(),
                    category: category.clone(),
                    device: device.clone(),
                };
                if !snapshot.state.ids.contains_key(&key) {
                    // Without it a reopened incident of this key could be given an old id.
                    return Err(invalid(format!(
                        "incident {} has no id bookkeeping",
                        open.incident.id
                    )));
                }
                open_count += 1;
            }
        }
        if snapshot.node != self.config.node {
            tracing::warn!(snapshot = %snapshot.node, node = %self.config.node, "risk snapshot was taken under another node name");
        }
        self.state = snapshot.state;
        self.open_count = open_count;
        self.set_open_gauge();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
