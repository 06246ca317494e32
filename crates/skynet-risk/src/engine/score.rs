//! Scoring: level thresholds, how evidence fuses and decays, and each cell's state, score
//! and level.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{GridId, GridRisk, RiskEvent, RiskLevel, SourceKind, SourceRef};
use uuid::Uuid;

use super::GridRiskEngine;
use super::fusion::Recent;
use super::incidents::{CellKey, ClosedIncident, OpenIncident};
use super::snapshot::pairs;
use crate::settings::{CategoryPolicy, GridKindPolicy, level_index};

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

pub(super) fn raise(level: RiskLevel, steps: u8) -> RiskLevel {
    (0..steps).fold(level, |l, _| match l {
        RiskLevel::IV => RiskLevel::III,
        RiskLevel::III => RiskLevel::II,
        _ => RiskLevel::I,
    })
}

/// Below this a decayed contribution is forgotten: it no longer matters to any level, and
/// forgetting keeps a long run's state bounded by the active cells.
const FORGET_BELOW: f32 = 1e-4;

// Fixed namespace so the same inputs give the same ids on every run.
const GRID_RISK_NAMESPACE: Uuid = Uuid::from_u128(0x9b1f_04c3_7e2a_4d55_8a90_31c6_f2d8_1e7b);

/// `1 - (1 - a)(1 - b)`: independent evidence, monotone in both, never above 1.
pub(super) fn fuse(a: f32, b: f32) -> f32 {
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
pub(super) struct Held {
    pub(super) score: f32,
    pub(super) at: DateTime<Utc>,
}

/// Everything the engine keeps about one cell. All of it lives here, so an observation
/// touches one cell's small maps after one lookup, however large the city.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct CellState {
    /// By category, then source (a fusion rule's parts count as the source `fusion/<rule>`).
    #[serde(with = "pairs")]
    pub(super) held: BTreeMap<String, BTreeMap<String, Held>>,
    pub(super) level: Option<RiskLevel>,
    /// A cache of the score at the last rescore: not stored (it changes with every sweep's
    /// decay, and storing it would make every cell a changed row on every commit); a restore
    /// recomputes it.
    #[serde(skip_serializing, default)]
    pub(super) score: f32,
    /// Counts level changes.
    pub(super) revision: u64,
    /// The latest observation of each source and category, for fusion windows.
    pub(super) recent: Vec<Recent>,
    #[serde(with = "pairs")]
    pub(super) open: BTreeMap<CellKey, OpenIncident>,
    /// Closed within the cooldown: evidence now reopens them.
    #[serde(with = "pairs")]
    pub(super) closed: BTreeMap<CellKey, ClosedIncident>,
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
    pub(super) fn hazard(&self, category: &str) -> Option<&OpenIncident> {
        // A cell has a handful of incidents: a scan, with no key to allocate.
        self.open
            .iter()
            .find(|((c, device), _)| c == category && device.is_empty())
            .map(|(_, o)| o)
    }
}

impl GridRiskEngine {
    pub(super) fn policy(&self, category: &str) -> &CategoryPolicy {
        self.config
            .categories
            .get(category)
            .unwrap_or(&self.default_policy)
    }

    pub(super) fn grid_kind(&self, grid: &GridId) -> Option<GridKindPolicy> {
        if !self.context.grids.is_h3() {
            return self.kind_of_cell.get(grid).copied();
        }
        // H3 cells are generated, all of one configured kind.
        let kind = self.context.grids.cell(grid.as_str())?.kind?;
        self.config.grid_kinds.get(&kind).copied()
    }

    pub(super) fn reliability(&self, source: &SourceRef) -> f32 {
        self.config
            .reliability
            .get(source.id.as_str())
            .copied()
            .unwrap_or(match source.kind {
                SourceKind::Camera => self.config.reliability_camera,
                SourceKind::Sensor => self.config.reliability_sensor,
            })
    }

    /// A category's score in a cell at `now`: its sources combined, capped at its ceiling;
    /// an incident that missed a deadline holds the category at its (raised) level.
    pub(super) fn category_score(
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
    pub(super) fn cell_score(&self, grid: &GridId, cell: &CellState, now: DateTime<Utc>) -> f32 {
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
    pub(super) fn rescore(&mut self, grid: &GridId, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
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
            // The cached score alone: not a changed row.
            if let Some(cell) = self.state.cells.get_mut_unpersisted(grid) {
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
    pub(super) fn hold(
        &mut self,
        grid: &GridId,
        category: &str,
        source: &str,
        score: f32,
        at: DateTime<Utc>,
    ) {
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

    /// Drops what has decayed away, passed fusion windows and cooldowns, and the cell itself
    /// once nothing is left: a long run's state stays bounded by the active cells.
    pub(super) fn forget_faded(&mut self, grid: &GridId, now: DateTime<Utc>) {
        let (window, cooldown) = (self.window, self.config.cooldown);
        let half_lives: Vec<Duration> = self
            .state
            .cells
            .get(grid)
            .map(|c| c.held.keys().map(|k| self.policy(k).half_life).collect())
            .unwrap_or_default();
        // Looked at first, so a sweep changes (and a commit writes) only the cells that lose
        // something.
        let fades = self.state.cells.get(grid).is_some_and(|cell| {
            cell.held
                .values()
                .zip(&half_lives)
                .any(|(by_source, half_life)| {
                    by_source
                        .values()
                        .any(|h| decay(h.score, h.at, now, *half_life) < FORGET_BELOW)
                })
                || cell.held.values().any(BTreeMap::is_empty)
                || cell
                    .recent
                    .iter()
                    .any(|r| now.signed_duration_since(r.at) > window)
                || cell
                    .closed
                    .values()
                    .any(|c| now.signed_duration_since(c.closed_at) >= cooldown)
                || cell.is_idle()
        });
        if !fades {
            return;
        }
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
}
