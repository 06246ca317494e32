//! Evidence fusion per grid cell and the incident lifecycle.
//!
//! Each cell keeps one risk score in `[0, 1]`. New evidence of weight `w` combines as an
//! independent signal, `score = 1 - (1 - score) * (1 - w)`, so any mix of cameras and
//! sensors raises it without exceeding 1; the score halves every `half_life` without
//! evidence. Thresholds map the score to levels IV to I.
//!
//! An incident is one rule's finding on one camera in one cell. It opens when the cell
//! reaches `open_at`, is re-emitted when the cell's level rises, is `updated` at most every
//! `update_every` while it keeps learning, and closes after `close_after` without new
//! evidence. All times are event times from the frames, and each camera has its own clock:
//! a file replayed as fast as possible runs far ahead of (or behind) a live camera, so only a
//! camera's own clock may close its incidents. A replayed file gives the same incidents at
//! any speed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{
    CameraId, DeviceFault, GridId, Incident, IncidentStatus, Observation, RiskLevel, RuleRef,
};
use uuid::Uuid;

/// The stage trait: observations in, incident revisions out.
pub trait RiskEngine: Send {
    /// Takes one observation; returns the incident revisions it causes.
    fn observe(&mut self, observation: &Observation) -> Vec<Incident>;
    /// Moves `camera`'s event clock to `now`: closes that camera's quiet incidents (and only
    /// that camera's), emits `updated` revisions that are due, and refreshes the decayed
    /// `skynet_grid_risk_score` gauge of the cells that camera feeds.
    fn advance(&mut self, camera: &CameraId, now: DateTime<Utc>) -> Vec<Incident>;
    /// Emits what open incidents learned since their last revision (at shutdown).
    fn flush(&mut self) -> Vec<Incident>;
    /// A device has stopped working: opens its fault incident (once; a second call while it
    /// is open does nothing). The incident does not raise the cell's risk, and stays open
    /// until [`device_recovered`](Self::device_recovered), however long that takes.
    fn device_fault(&mut self, fault: &DeviceFault) -> Vec<Incident>;
    /// The devices with an open fault incident.
    fn faulty_devices(&self) -> Vec<CameraId>;
    /// The device works again: closes its open fault incidents of `category`.
    fn device_recovered(
        &mut self,
        camera: &CameraId,
        category: &str,
        at: DateTime<Utc>,
    ) -> Vec<Incident>;
    /// How many incidents are open.
    fn open_incidents(&self) -> usize;
    /// Everything needed to go on after a restart (cell scores, open incidents with their
    /// revision and pending changes, id bookkeeping), as JSON.
    fn snapshot(&self) -> serde_json::Value;
    /// Restores a snapshot taken by `snapshot` (on a fresh engine, before any observation).
    fn restore(&mut self, snapshot: serde_json::Value) -> Result<(), RiskError>;
}

/// Why a snapshot could not be restored. The engine is left as it was (fresh).
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

#[derive(Debug, Clone)]
pub struct RiskConfig {
    /// Names this node in incident ids.
    pub node: String,
    pub half_life: Duration,
    pub close_after: Duration,
    /// An open incident that keeps learning emits an `updated` revision at most this often
    /// (event time).
    pub update_every: Duration,
    pub thresholds: LevelThresholds,
    /// The lowest level that opens an incident.
    pub open_at: RiskLevel,
    /// How many supporting detections an incident keeps (the latest).
    pub max_detections: usize,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            node: "skynet".into(),
            half_life: Duration::seconds(60),
            close_after: Duration::seconds(120),
            update_every: Duration::seconds(30),
            thresholds: LevelThresholds::default(),
            open_at: RiskLevel::IV,
            max_detections: 16,
        }
    }
}

/// Below this a decayed cell score is reported as 0 and the cell is forgotten: it no longer
/// matters to any level, and forgetting keeps a long run's state bounded by the active cells.
const FORGET_BELOW: f32 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq)]
struct CellRisk {
    score: f32,
    at: DateTime<Utc>,
}

impl CellRisk {
    fn decayed(&self, now: DateTime<Utc>, half_life: Duration) -> f32 {
        // `signed_duration_since` cannot overflow (any two `DateTime`s differ by far less
        // than `Duration`'s range); a `now` before the evidence decays nothing.
        let elapsed = now.signed_duration_since(self.at).num_milliseconds().max(0) as f64;
        let half = half_life.num_milliseconds().max(1) as f64;
        (f64::from(self.score) * 0.5f64.powf(elapsed / half)) as f32
    }
}

/// `1 - (1 - prior)(1 - weight)`, clamped to `[0, 1]`.
fn fuse(prior: f32, weight: f32) -> f32 {
    // A NaN weight is no evidence; it must not poison the cell's score for good.
    let w = if weight.is_nan() {
        0.0
    } else {
        weight.clamp(0.0, 1.0)
    };
    let p = if prior.is_nan() {
        0.0
    } else {
        prior.clamp(0.0, 1.0)
    };
    // The product form is monotone in both inputs under rounding but can come out one ulp
    // below `p` (1 - (1 - p) need not round back to p); the max keeps added evidence from
    // ever lowering a score.
    (1.0 - (1.0 - p) * (1.0 - w)).max(p).max(w)
}

#[derive(Debug, Clone)]
struct OpenIncident {
    incident: Incident,
    /// Evidence arrived since the last revision.
    changed: bool,
    /// Event time of the last revision, for `update_every`.
    last_revision_at: DateTime<Utc>,
    /// A device fault: open until the device recovers, never closed for being quiet.
    held: bool,
}

/// The rule kind of device-fault incidents.
pub const DEVICE_FAULT_KIND: &str = "device_fault";
/// The level a device fault opens at: blue, an equipment matter for the owner, not a hazard.
const DEVICE_FAULT_LEVEL: RiskLevel = RiskLevel::IV;

type IncidentKey = (GridId, CameraId, String);

/// What ids a key has been given: names use `first_seen_ms` (the latest first-seen time of
/// the key's incidents), plus `#reopened` once an incident did not start later than that.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IdState {
    first_seen_ms: i64,
    reopened: u64,
}

// Fixed namespace so the same node, cell, camera, rule and start give the same id on every run.
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c7e_a1d0_2b4f_4e8a_9c61_7d3f_0e9b_a4c2);

pub struct GridRiskEngine {
    config: RiskConfig,
    /// Each camera's contribution to each cell, on that camera's own clock: one camera's time
    /// never decays (or forgets) another camera's evidence.
    cells: BTreeMap<GridId, BTreeMap<CameraId, CellRisk>>,
    /// Each camera's latest event time, from its observations and `advance`.
    clocks: BTreeMap<CameraId, DateTime<Utc>>,
    open: BTreeMap<IncidentKey, OpenIncident>,
    ids: BTreeMap<IncidentKey, IdState>,
    /// The cells each camera has given evidence for: whose gauges its clock refreshes.
    feeds: BTreeMap<CameraId, BTreeSet<GridId>>,
}

impl GridRiskEngine {
    pub fn new(config: RiskConfig) -> Self {
        Self {
            config,
            cells: BTreeMap::new(),
            clocks: BTreeMap::new(),
            open: BTreeMap::new(),
            ids: BTreeMap::new(),
            feeds: BTreeMap::new(),
        }
    }

    /// A cell's score and level with every camera's contribution decayed to `now`.
    pub fn cell_risk(&self, grid: &GridId, now: DateTime<Utc>) -> (f32, Option<RiskLevel>) {
        let half_life = self.config.half_life;
        let score = self.cells.get(grid).map_or(0.0, |by_camera| {
            by_camera
                .values()
                .fold(0.0, |score, c| fuse(score, c.decayed(now, half_life)))
        });
        (score, self.config.thresholds.level(score))
    }

    /// A cell's fused score, each camera's contribution decayed to that camera's own clock.
    fn cell_score(&self, grid: &GridId) -> f32 {
        let half_life = self.config.half_life;
        self.cells.get(grid).map_or(0.0, |by_camera| {
            by_camera.iter().fold(0.0, |score, (camera, c)| {
                let now = self.clocks.get(camera).copied().unwrap_or(c.at);
                fuse(score, c.decayed(now, half_life))
            })
        })
    }

    fn tick(&mut self, camera: &CameraId, now: DateTime<Utc>) {
        let clock = self.clocks.entry(camera.clone()).or_insert(now);
        *clock = (*clock).max(now);
    }

    fn raise(&mut self, grid: &GridId, camera: &CameraId, weight: f32, at: DateTime<Utc>) -> f32 {
        let half_life = self.config.half_life;
        self.tick(camera, at);
        let contribution = self
            .cells
            .entry(grid.clone())
            .or_default()
            .entry(camera.clone())
            .or_insert(CellRisk { score: 0.0, at });
        // Late evidence counts at the contribution's time: a score never decays backwards.
        let now = at.max(contribution.at);
        let own = fuse(contribution.decayed(now, half_life), weight);
        *contribution = CellRisk {
            score: own,
            at: now,
        };
        // This camera's evidence as of this observation, with the other cameras' as of their
        // own clocks.
        let score = self.cells.get(grid).map_or(own, |by_camera| {
            by_camera
                .iter()
                .filter(|(other, _)| *other != camera)
                .fold(own, |score, (other, c)| {
                    let at = self.clocks.get(other).copied().unwrap_or(c.at);
                    fuse(score, c.decayed(at, half_life))
                })
        });
        metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string()).set(f64::from(score));
        score
    }

    fn revise(open: &mut OpenIncident, status: IncidentStatus, at: DateTime<Utc>) -> Incident {
        let incident = &mut open.incident;
        incident.revision = incident.revision.saturating_add(1);
        incident.status = status;
        open.changed = false;
        // Monotone, so an out-of-order time cannot make the next update due early.
        open.last_revision_at = open.last_revision_at.max(at);
        incident.clone()
    }

    fn update_due(&self, open: &OpenIncident, now: DateTime<Utc>) -> bool {
        open.changed && now.signed_duration_since(open.last_revision_at) >= self.config.update_every
    }

    fn quiet(&self, open: &OpenIncident, now: DateTime<Utc>) -> bool {
        !open.held && now.signed_duration_since(open.incident.last_seen) >= self.config.close_after
    }

    fn close(&mut self, key: &IncidentKey, now: DateTime<Utc>) -> Option<Incident> {
        let mut open = self.open.remove(key)?;
        open.incident.risk_score = self.cell_score(&key.0);
        tracing::info!(incident = %open.incident.id, grid = %key.0, camera = %key.1, "incident closed");
        Some(Self::revise(&mut open, IncidentStatus::Closed, now))
    }

    /// A UUIDv5 of node, cell, camera, rule and first-seen time, so a replay gives the same
    /// ids, and never one this key was given before (the engine remembers, across restores).
    fn new_incident_id(&mut self, key: &IncidentKey, first_seen: DateTime<Utc>) -> String {
        let ms = first_seen.timestamp_millis();
        let base = |ms: i64| format!("{}/{}/{}/{}/{ms}", self.config.node, key.0, key.1, key.2);
        let name = match self.ids.get_mut(key) {
            Some(state) if ms <= state.first_seen_ms => {
                // Not later than an earlier incident of this key (a camera clock that went
                // back, the same file replayed again): its plain name may be taken, so count.
                // Names are then `<latest first-seen>#n`, n rising, all distinct.
                state.reopened = state.reopened.saturating_add(1);
                format!("{}#{}", base(state.first_seen_ms), state.reopened)
            }
            _ => {
                // Later than every earlier incident of this key: the plain name is unused.
                self.ids.insert(
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

    fn set_open_gauge(&self) {
        metrics::gauge!("skynet_incidents_open").set(self.open.len() as f64);
    }
}

impl RiskEngine for GridRiskEngine {
    fn open_incidents(&self) -> usize {
        self.open.len()
    }

    fn observe(&mut self, obs: &Observation) -> Vec<Incident> {
        let key: IncidentKey = (obs.grid.clone(), obs.camera.clone(), obs.rule.name.clone());
        let mut out = Vec::new();
        // The engine keeps its own lifecycle whatever the caller's order: evidence after the
        // quiet period starts a new incident rather than reviving the old one.
        if self.open.get(&key).is_some_and(|o| self.quiet(o, obs.at)) {
            out.extend(self.close(&key, obs.at));
            self.set_open_gauge();
        }
        let score = self.raise(&obs.grid, &obs.camera, obs.weight, obs.at);
        self.feeds
            .entry(obs.camera.clone())
            .or_default()
            .insert(obs.grid.clone());
        let level = self.config.thresholds.level(score);
        let mut detections = obs.detections.clone();
        detections.truncate(self.config.max_detections);

        if let Some(mut open) = self.open.remove(&key) {
            // Evidence for an open incident always reaches it, whatever the cell's level:
            // otherwise `last_seen` stops and the incident closes while evidence still arrives.
            let incident = &mut open.incident;
            incident.last_seen = incident.last_seen.max(obs.at);
            incident.observations = incident.observations.saturating_add(1);
            incident.detections = detections;
            if obs.reading.is_some() {
                incident.reading = obs.reading.clone();
            }
            incident.risk_score = score;
            open.changed = true;
            if let Some(level) = level
                && level > incident.level
            {
                incident.level = level;
                incident.level_colour = level.colour().into();
                tracing::info!(incident = %incident.id, grid = %obs.grid, level = %level, "incident escalated");
                out.push(Self::revise(&mut open, IncidentStatus::Escalated, obs.at));
            } else if self.update_due(&open, obs.at) {
                out.push(Self::revise(&mut open, IncidentStatus::Updated, obs.at));
            }
            self.open.insert(key, open);
            return out;
        }
        let Some(level) = level.filter(|l| *l >= self.config.open_at) else {
            return out;
        };
        let incident = Incident {
            id: self.new_incident_id(&key, obs.at),
            revision: 1,
            status: IncidentStatus::Opened,
            category: obs.category.clone(),
            level,
            level_colour: level.colour().into(),
            risk_score: score,
            grid: obs.grid.clone(),
            camera: CameraId::default(),
            sensor: None,
            owner: obs.owner,
            first_seen: obs.at,
            last_seen: obs.at,
            observations: 1,
            detections,
            reading: obs.reading.clone(),
            rule: obs.rule.clone(),
        };
        let mut incident = incident;
        incident.set_device(&obs.camera, obs.source);
        tracing::info!(incident = %incident.id, grid = %obs.grid, camera = %obs.camera, level = %level, "incident opened");
        self.open.insert(
            key,
            OpenIncident {
                incident: incident.clone(),
                changed: false,
                last_revision_at: obs.at,
                held: false,
            },
        );
        self.set_open_gauge();
        out.push(incident);
        out
    }

    fn advance(&mut self, camera: &CameraId, now: DateTime<Utc>) -> Vec<Incident> {
        self.tick(camera, now);
        let mine: Vec<IncidentKey> = self
            .open
            .keys()
            .filter(|(_, c, _)| c == camera)
            .cloned()
            .collect();
        let mut out = Vec::new();
        let mut closed_any = false;
        for key in mine {
            let Some(open) = self.open.get(&key) else {
                continue;
            };
            if self.quiet(open, now) {
                out.extend(self.close(&key, now));
                closed_any = true;
            } else if self.update_due(open, now)
                && let Some(open) = self.open.get_mut(&key)
            {
                out.push(Self::revise(open, IncidentStatus::Updated, now));
            }
        }
        if closed_any {
            self.set_open_gauge();
        }

        // Refresh the gauges of this camera's cells: without it a cell's gauge would keep its
        // last raised value for ever once evidence stops. Only this camera's own contribution
        // is forgotten once it has decayed away.
        let half_life = self.config.half_life;
        let grids: Vec<GridId> = self
            .feeds
            .get(camera)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        for grid in grids {
            let faded = self
                .cells
                .get(&grid)
                .and_then(|by_camera| by_camera.get(camera))
                .is_none_or(|c| c.decayed(now, half_life) < FORGET_BELOW);
            if faded {
                if let Some(by_camera) = self.cells.get_mut(&grid) {
                    by_camera.remove(camera);
                    if by_camera.is_empty() {
                        self.cells.remove(&grid);
                    }
                }
                if let Some(feeds) = self.feeds.get_mut(camera) {
                    feeds.remove(&grid);
                }
            }
            let score = self.cell_score(&grid);
            let score = if score < FORGET_BELOW { 0.0 } else { score };
            metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string())
                .set(f64::from(score));
        }
        if self.feeds.get(camera).is_some_and(BTreeSet::is_empty) {
            self.feeds.remove(camera);
        }
        out
    }

    fn flush(&mut self) -> Vec<Incident> {
        self.open
            .values_mut()
            .filter(|o| o.changed)
            .map(|o| {
                let at = o.incident.last_seen;
                Self::revise(o, IncidentStatus::Updated, at)
            })
            .collect()
    }

    fn device_fault(&mut self, fault: &DeviceFault) -> Vec<Incident> {
        let key: IncidentKey = (
            fault.grid.clone(),
            fault.camera.clone(),
            fault.category.clone(),
        );
        if self.open.contains_key(&key) {
            return Vec::new();
        }
        let incident = Incident {
            id: self.new_incident_id(&key, fault.since),
            revision: 1,
            status: IncidentStatus::Opened,
            category: fault.category.clone(),
            level: DEVICE_FAULT_LEVEL,
            level_colour: DEVICE_FAULT_LEVEL.colour().into(),
            risk_score: self.cell_score(&fault.grid),
            grid: fault.grid.clone(),
            camera: CameraId::default(),
            sensor: None,
            owner: fault.owner,
            first_seen: fault.since,
            last_seen: fault.at,
            observations: 1,
            detections: Vec::new(),
            reading: None,
            rule: RuleRef {
                name: fault.category.clone(),
                kind: DEVICE_FAULT_KIND.into(),
                zone: None,
            },
        };
        let mut incident = incident;
        incident.set_device(&fault.camera, fault.source);
        tracing::warn!(incident = %incident.id, grid = %fault.grid, camera = %fault.camera, category = %fault.category, "device fault incident opened");
        self.open.insert(
            key,
            OpenIncident {
                incident: incident.clone(),
                changed: false,
                last_revision_at: fault.at,
                held: true,
            },
        );
        self.set_open_gauge();
        vec![incident]
    }

    fn faulty_devices(&self) -> Vec<CameraId> {
        let devices: BTreeSet<CameraId> = self
            .open
            .iter()
            .filter(|(_, o)| o.held)
            .map(|((_, camera, _), _)| camera.clone())
            .collect();
        devices.into_iter().collect()
    }

    fn device_recovered(
        &mut self,
        camera: &CameraId,
        category: &str,
        at: DateTime<Utc>,
    ) -> Vec<Incident> {
        let keys: Vec<IncidentKey> = self
            .open
            .iter()
            .filter(|((_, c, rule), o)| c == camera && rule == category && o.held)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(open) = self.open.get_mut(&key) {
                open.incident.last_seen = open.incident.last_seen.max(at);
            }
            out.extend(self.close(&key, at));
        }
        if !out.is_empty() {
            self.set_open_gauge();
        }
        out
    }

    fn snapshot(&self) -> serde_json::Value {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            node: self.config.node.clone(),
            cells: self
                .cells
                .iter()
                .flat_map(|(grid, by_camera)| {
                    by_camera.iter().map(|(camera, c)| CellSnapshot {
                        grid: grid.clone(),
                        camera: camera.clone(),
                        score: f64::from(c.score),
                        at: c.at,
                    })
                })
                .collect(),
            clocks: self
                .clocks
                .iter()
                .map(|(camera, at)| ClockSnapshot {
                    camera: camera.clone(),
                    at: *at,
                })
                .collect(),
            open: self
                .open
                .values()
                .map(|o| OpenSnapshot {
                    risk_score: f64::from(o.incident.risk_score),
                    incident: o.incident.clone(),
                    changed: o.changed,
                    last_revision_at: o.last_revision_at,
                    held: o.held,
                })
                .collect(),
            ids: self
                .ids
                .iter()
                .map(|((grid, camera, rule), s)| IdSnapshot {
                    grid: grid.clone(),
                    camera: camera.clone(),
                    rule: rule.clone(),
                    first_seen_ms: s.first_seen_ms,
                    reopened: s.reopened,
                })
                .collect(),
            feeds: self
                .feeds
                .iter()
                .map(|(camera, grids)| FeedSnapshot {
                    camera: camera.clone(),
                    grids: grids.iter().cloned().collect(),
                })
                .collect(),
        };
        // Only structs, sequences and string-keyed fields: serializing into a `Value`
        // cannot fail for these types.
        serde_json::to_value(&snapshot).expect("risk snapshot types serialize to JSON")
    }

    fn restore(&mut self, snapshot: serde_json::Value) -> Result<(), RiskError> {
        if !(self.cells.is_empty()
            && self.open.is_empty()
            && self.ids.is_empty()
            && self.feeds.is_empty())
        {
            return Err(RiskError::NotFresh {
                cells: self.cells.len(),
                open: self.open.len(),
            });
        }
        // Check the version before the shape, so an old or newer snapshot says so instead
        // of failing on a field it does not know.
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
        let unit_score = |what: &str, s: f64| {
            if (0.0..=1.0).contains(&s) {
                Ok(s as f32)
            } else {
                Err(invalid(format!("{what} has score {s}, outside [0, 1]")))
            }
        };
        if snapshot.node != self.config.node {
            // Not an error: a renamed node keeps its incidents (their ids stay as issued).
            tracing::warn!(snapshot = %snapshot.node, node = %self.config.node, "risk snapshot was taken under another node name");
        }

        let mut cells: BTreeMap<GridId, BTreeMap<CameraId, CellRisk>> = BTreeMap::new();
        for c in snapshot.cells {
            let score = unit_score(&format!("cell `{}`", c.grid), c.score)?;
            if cells
                .entry(c.grid.clone())
                .or_default()
                .insert(c.camera.clone(), CellRisk { score, at: c.at })
                .is_some()
            {
                return Err(invalid(format!(
                    "cell `{}` has camera `{}` twice",
                    c.grid, c.camera
                )));
            }
        }
        let clocks = snapshot
            .clocks
            .into_iter()
            .map(|c| (c.camera, c.at))
            .collect();
        let mut ids = BTreeMap::new();
        for s in snapshot.ids {
            let key = (s.grid, s.camera, s.rule);
            let state = IdState {
                first_seen_ms: s.first_seen_ms,
                reopened: s.reopened,
            };
            if ids.insert(key.clone(), state).is_some() {
                return Err(invalid(format!("id bookkeeping for {key:?} appears twice")));
            }
        }
        let mut open = BTreeMap::new();
        for o in snapshot.open {
            let mut incident = o.incident;
            // JSON text may round an f32 twice on the way back; the f64 of the f32 is exact.
            incident.risk_score = unit_score(&format!("incident {}", incident.id), o.risk_score)?;
            if incident.status == IncidentStatus::Closed || incident.revision == 0 {
                return Err(invalid(format!(
                    "incident {} is listed as open but is {:?} at revision {}",
                    incident.id, incident.status, incident.revision
                )));
            }
            let key: IncidentKey = (
                incident.grid.clone(),
                incident.device(),
                incident.rule.name.clone(),
            );
            if !ids.contains_key(&key) {
                // Without it a reopened incident of this key could be given an old id.
                return Err(invalid(format!(
                    "incident {} has no id bookkeeping",
                    incident.id
                )));
            }
            let id = incident.id.clone();
            let entry = OpenIncident {
                incident,
                changed: o.changed,
                last_revision_at: o.last_revision_at,
                held: o.held,
            };
            if open.insert(key, entry).is_some() {
                return Err(invalid(format!(
                    "two open incidents share the cell, camera and rule of incident {id}"
                )));
            }
        }
        let feeds = snapshot
            .feeds
            .into_iter()
            .map(|f| (f.camera, f.grids.into_iter().collect()))
            .collect();

        self.cells = cells;
        self.clocks = clocks;
        self.open = open;
        self.ids = ids;
        self.feeds = feeds;
        self.set_open_gauge();
        Ok(())
    }
}

// ---- The snapshot's JSON shape ---------------------------------------------------------

/// Bumped whenever the shape below changes incompatibly.
const SNAPSHOT_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    node: String,
    cells: Vec<CellSnapshot>,
    clocks: Vec<ClockSnapshot>,
    open: Vec<OpenSnapshot>,
    ids: Vec<IdSnapshot>,
    feeds: Vec<FeedSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellSnapshot {
    grid: GridId,
    /// Whose contribution this is.
    camera: CameraId,
    /// The f32 score widened to f64, which survives JSON text exactly.
    score: f64,
    at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSnapshot {
    camera: CameraId,
    at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenSnapshot {
    /// The latest revision as emitted, plus what it has learned since (when `changed`).
    incident: Incident,
    /// `incident.risk_score` exactly (see `CellSnapshot::score`).
    risk_score: f64,
    changed: bool,
    last_revision_at: DateTime<Utc>,
    /// A device fault (absent in snapshots from before device faults: false).
    #[serde(default)]
    held: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdSnapshot {
    grid: GridId,
    camera: CameraId,
    rule: String,
    first_seen_ms: i64,
    reopened: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedSnapshot {
    camera: CameraId,
    grids: Vec<GridId>,
}

#[cfg(test)]
mod tests;
