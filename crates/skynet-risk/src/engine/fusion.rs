//! Fusion rules: `all` rules that make incidents of their own from correlated parts, and
//! `unconfirmed` rules that hold a sensor's alarm until a camera confirms it.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{
    Contribution, GridId, IncidentChange, IncidentStatus, Observation, RiskEvent, RiskLevel,
    RuleRef, SourceKind, SourceRef,
};

use super::GridRiskEngine;
use super::incidents::{CellKey, IncidentKey};
use super::score::fuse;
use crate::settings::{FusionRule, FusionScope};

/// The rule kind of fused incidents.
pub const FUSION_KIND: &str = "fusion";

/// The latest observation of one source and category in a cell, for fusion windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Recent {
    pub(super) source: SourceRef,
    pub(super) category: String,
    pub(super) at: DateTime<Utc>,
    pub(super) weight: f32,
    pub(super) confidence: f32,
    pub(super) count: u32,
}

impl GridRiskEngine {
    pub(super) fn fused_level(&self, category: &str) -> Option<RiskLevel> {
        self.config.fusion.iter().find_map(|f| match f {
            FusionRule::All {
                category: c, level, ..
            } if c == category => Some(*level),
            _ => None,
        })
    }

    pub(super) fn remember(&mut self, obs: &Observation) {
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

    /// The `all` fusion rules this observation completes: each one's incident evidence.
    pub(super) fn fuse_rules(
        &mut self,
        obs: &Observation,
        now: DateTime<Utc>,
        out: &mut Vec<RiskEvent>,
    ) {
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
    pub(super) fn unconfirmed(&self, obs: &Observation) -> Option<f32> {
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
    pub(super) fn confirm(&mut self, obs: &Observation, out: &mut Vec<RiskEvent>) {
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
}
