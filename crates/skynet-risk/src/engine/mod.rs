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
//!
//! Time in steps. One input moves the clock at most `max_clock_step` forward: a time
//! further ahead (a wall clock stepped by NTP, a device with a wrong clock) is a *jump*,
//! logged and counted in `skynet_clock_jumps_total`; the clock follows it one step per input,
//! so a real correction is followed within a few inputs (the live pipeline advances ten
//! times a second) while one bogus time moves the clock one step at most. Timed actions
//! (closing a quiet incident, a missed deadline, a due update) happen at their own time, in
//! time order, however far a sweep looks; before an observation is applied, what was due
//! before its time has happened. [`GridRiskEngine::follow`] moves the clock without a bound,
//! for time that is known to be true (a recording's gaps in `skynet replay`).
//!
//! One job per file: `score` (levels, fusing and decaying evidence, a cell's state and
//! level), `incidents` (the incident lifecycle and case statuses), `fusion` (fusion rules
//! and camera confirmation), `faults` (device faults) and `snapshot` (the state as it is
//! persisted). This file holds the stage trait, the config and the dispatch.

mod faults;
mod fusion;
mod incidents;
mod score;
mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::value::RawValue;
use skynet_core::{
    CaseStatus, Contribution, DeviceId, GridId, Incident, Observation, OwnerKind, RiskEvent,
    RiskLevel, SourceKind, SourceRef,
};

use crate::GridMap;
use crate::settings::{
    CategoryPolicy, FusionRule, GridKindPolicy, LevelDeadlines, default_deadlines,
};
use crate::state::{EngineChanges, EngineRows};
use incidents::IncidentKey;
use snapshot::State;

pub use faults::DEVICE_FAULT_KIND;
pub use fusion::FUSION_KIND;
pub use score::LevelThresholds;

/// The stage trait: observations in, incident revisions and cell level changes out.
pub trait RiskEngine: Send {
    /// Takes one observation (evidence, a device fault or a recovery); returns what it causes.
    fn observe(&mut self, observation: &Observation) -> Vec<RiskEvent>;
    /// Moves the clock to `now` (never back; at most `max_clock_step` forward per call, see
    /// the module's notes on time): closes quiet incidents, escalates missed deadlines,
    /// emits due updates, each at its own time, and lets cell levels decay.
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
    /// The department an open incident is routed to (`None`: not open): what a case
    /// status's assignee is checked against when the status names no department.
    fn incident_department(&self, _id: &str) -> Option<String> {
        None
    }
    /// The owner of an open incident, for the assignee check of a status event (an
    /// inspector limited to one owner may only be assigned that owner's incidents).
    fn incident_owner(&self, _id: &str) -> Option<skynet_core::OwnerKind> {
        None
    }
    /// Everything needed to go on after a restart, as JSON text (written straight from the
    /// state: a city's state can be large, and a tree of JSON values is many times larger).
    fn snapshot(&self) -> Box<RawValue>;
    /// Restores a snapshot taken by `snapshot` (on a fresh engine, before any observation).
    /// Every row then counts as changed: the next [`take_changes`](Self::take_changes)
    /// writes them all (how a state of the old one-row layout moves to rows).
    fn restore(&mut self, snapshot: &RawValue) -> Result<(), RiskError>;
    /// The state's rows (cells, incident ids) changed since the last call or the restore,
    /// serialized, with the small global part: what a commit writes. Its cost follows what
    /// changed, not how many incidents are open.
    fn take_changes(&mut self) -> EngineChanges;
    /// Restores the rows that [`take_changes`](Self::take_changes) wrote (on a fresh engine).
    fn restore_rows(&mut self, rows: &EngineRows) -> Result<(), RiskError>;
    /// A device that joined while running (a platform channel placed by its catalog
    /// position): its cell and owner, as the context gives those of configured devices.
    fn add_device(&mut self, _device: DeviceInfo) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    #[error("risk snapshot is not readable: {0}")]
    SnapshotFormat(#[source] serde_json::Error),
    #[error("risk snapshot has version {found}; this build reads version {supported}")]
    SnapshotVersion { found: String, supported: u32 },
    #[error("risk state row `{key}` of `{table}` is not readable: {source}")]
    Row {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
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
    /// How far one input may move the clock forward; further is a jump, followed in steps
    /// of this size (`[risk] max_clock_step_s`).
    pub max_clock_step: Duration,
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
            max_clock_step: Duration::seconds(DEFAULT_MAX_CLOCK_STEP_S),
        }
    }
}

/// The default of `[risk] max_clock_step_s`: a minute, sixty sweeps. A restart within it
/// (a deploy) is no jump; a longer stop, or a step of the wall clock, is followed a minute of
/// event time per input.
pub const DEFAULT_MAX_CLOCK_STEP_S: i64 = 60;

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
    /// The clock is following a jump in steps: counted and logged once, when it began.
    jumping: bool,
    /// Jumps since this engine was made (also counted in `skynet_clock_jumps_total`).
    jumps: u64,
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
            jumping: false,
            jumps: 0,
        }
    }

    /// The engine's clock: the latest time it was given (or, while it follows a jump, where
    /// its steps have got to).
    pub fn clock(&self) -> Option<DateTime<Utc>> {
        self.state.clock
    }

    /// How many times an input jumped the clock forward by more than `max_clock_step`.
    pub fn clock_jumps(&self) -> u64 {
        self.jumps
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

    /// Moves the clock towards `at`, never back and at most `max_clock_step` forward.
    fn tick(&mut self, at: DateTime<Utc>) -> DateTime<Utc> {
        let Some(clock) = self.state.clock else {
            self.state.clock = Some(at);
            return at;
        };
        let step = self.config.max_clock_step;
        if at <= clock {
            // A time at or behind the clock (a bogus time gone, a late input) ends a jump.
            if clock.signed_duration_since(at) <= step {
                self.jumping = false;
            }
            return clock;
        }
        let next = if at.signed_duration_since(clock) > step {
            if !self.jumping {
                // Once per jump: the steps that follow it are the same jump.
                self.jumping = true;
                self.jumps += 1;
                metrics::counter!("skynet_clock_jumps_total").increment(1);
                tracing::warn!(
                    from = %clock,
                    to = %at,
                    step_s = step.num_seconds(),
                    "the clock jumped forward; following it in steps"
                );
            }
            clock.checked_add_signed(step).unwrap_or(at)
        } else {
            self.jumping = false;
            at
        };
        self.state.clock = Some(next);
        next
    }

    /// Moves the clock to `to` (never back) without the step bound: for time known to be
    /// true, such as the gaps of a recording (`skynet replay`, where no wall clock ticked
    /// through the night). The next input sweeps: what fell due in between happens then, at
    /// its own time, in order, before that input's evidence.
    pub fn follow(&mut self, to: DateTime<Utc>) {
        if self.state.clock.is_none_or(|c| to > c) {
            self.state.clock = Some(to);
            self.jumping = false;
        }
    }

    fn sweep(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        // Timed actions first, in time order over all cells; then each cell as of now, in
        // cell order, so the events come out the same on every run.
        self.sweep_incidents(now, out);
        self.sweep_cells(now, out);
    }

    /// A sweep's second half: each cell's score and level as of `now`, and what faded.
    fn sweep_cells(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        self.state.last_sweep = Some(now);
        let mut grids: Vec<GridId> = self.state.cells.keys().cloned().collect();
        grids.sort_unstable();
        for grid in grids {
            self.rescore(&grid, now, out);
            if let Some(cell) = self.state.cells.get(&grid) {
                let score = cell.score;
                metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string())
                    .set(f64::from(score));
            }
            self.forget_faded(&grid, now);
        }
    }

    fn sweep_due(&self, now: DateTime<Utc>) -> bool {
        self.state
            .last_sweep
            .is_none_or(|last| now.signed_duration_since(last) >= self.config.sweep_every)
    }

    fn sweep_if_due(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        if self.sweep_due(now) {
            self.sweep(now, out);
        }
    }
}

impl RiskEngine for GridRiskEngine {
    fn add_device(&mut self, device: DeviceInfo) {
        if device.source.kind == SourceKind::Camera {
            // Its alarms can be verified on video, as a configured camera's cell's.
            self.camera_cells.insert(device.grid.clone());
        }
        self.context
            .devices
            .insert(device.source.id.clone(), device);
    }

    fn open_incidents(&self) -> usize {
        self.open_count
    }

    fn incident_owner(&self, id: &str) -> Option<skynet_core::OwnerKind> {
        self.state.cells.values().find_map(|cell| {
            cell.open
                .values()
                .find(|o| o.incident.id == id)
                .map(|o| o.incident.owner)
        })
    }

    fn incident_department(&self, id: &str) -> Option<String> {
        self.state.cells.values().find_map(|cell| {
            cell.open
                .values()
                .find(|o| o.incident.id == id)
                .map(|o| o.incident.department.clone())
        })
    }

    fn observe(&mut self, obs: &Observation) -> Vec<RiskEvent> {
        let mut out = Vec::new();
        if let Err(reason) = obs.validate() {
            metrics::counter!("skynet_observations_rejected_total").increment(1);
            tracing::warn!(source = %obs.source.id, grid = %obs.grid, %reason, "observation refused");
            return out;
        }
        let now = self.tick(obs.at);
        // A time ahead of the clock (a jump being followed in steps) counts as the clock's:
        // evidence dated further on would hold its incident open until then.
        let clamped;
        let obs = if obs.at > now {
            clamped = Observation {
                at: now,
                ..obs.clone()
            };
            &clamped
        } else {
            obs
        };
        // What went quiet or fell due before this observation happens first, at its own
        // time: evidence after a gap opens a new incident, as it does live. The cells are
        // scored after it, with its evidence (a sweep's two halves around the observation).
        let sweep = self.sweep_due(now);
        if sweep {
            self.sweep_incidents(now, &mut out);
        }
        if let Some(fault) = obs.evidence.fault {
            self.fault(obs, fault, &mut out);
            if sweep {
                self.sweep_cells(now, &mut out);
            }
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
        if sweep {
            self.sweep_cells(now, &mut out);
        }
        out
    }

    fn advance(&mut self, now: DateTime<Utc>) -> Vec<RiskEvent> {
        let now = self.tick(now);
        let mut out = Vec::new();
        self.sweep_if_due(now, &mut out);
        out
    }

    fn flush(&mut self) -> Vec<RiskEvent> {
        self.flush_changed()
    }

    fn feedback(&mut self, update: &CaseStatus) -> Result<Vec<RiskEvent>, RiskError> {
        self.apply_case_status(update)
    }

    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)> {
        self.fault_list()
    }

    fn snapshot(&self) -> Box<RawValue> {
        self.write_snapshot()
    }

    fn restore(&mut self, snapshot: &RawValue) -> Result<(), RiskError> {
        self.read_snapshot(snapshot)
    }

    fn take_changes(&mut self) -> EngineChanges {
        self.changed_rows()
    }

    fn restore_rows(&mut self, rows: &EngineRows) -> Result<(), RiskError> {
        self.read_rows(rows)
    }
}

#[cfg(test)]
mod tests;
