//! Evidence fusion per grid cell and the incident lifecycle.
//!
//! Each cell keeps one risk score in `[0, 1]`. New evidence of weight `w` combines as an
//! independent signal, `score = 1 - (1 - score) * (1 - w)`, so any mix of cameras and
//! sensors raises it without exceeding 1; the score halves every `half_life` without
//! evidence. Thresholds map the score to levels IV to I.
//!
//! An incident is one rule's finding on one camera in one cell. It opens when the cell
//! reaches `open_at`, is re-emitted when the cell's level rises, and closes after
//! `close_after` without new evidence. All times are event times from the frames, so a
//! replayed file gives the same incidents at any speed.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use skynet_core::{CameraId, GridId, Incident, IncidentStatus, Observation, RiskLevel};
use uuid::Uuid;

/// The stage trait: observations in, incident revisions out.
pub trait RiskEngine: Send {
    /// Takes one observation; returns the incident revisions it causes.
    fn observe(&mut self, observation: &Observation) -> Vec<Incident>;
    /// Moves the engine's clock to `now` (event time), closing quiet incidents.
    fn advance(&mut self, now: DateTime<Utc>) -> Vec<Incident>;
    /// Emits what open incidents learned since their last revision (at shutdown).
    fn flush(&mut self) -> Vec<Incident>;
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
            thresholds: LevelThresholds::default(),
            open_at: RiskLevel::IV,
            max_detections: 16,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CellRisk {
    score: f32,
    at: DateTime<Utc>,
}

impl CellRisk {
    fn decayed(&self, now: DateTime<Utc>, half_life: Duration) -> f32 {
        let elapsed = (now - self.at).num_milliseconds().max(0) as f64;
        let half = half_life.num_milliseconds().max(1) as f64;
        (f64::from(self.score) * 0.5f64.powf(elapsed / half)) as f32
    }
}

#[derive(Debug)]
struct OpenIncident {
    incident: Incident,
    changed_since_emit: bool,
}

type IncidentKey = (GridId, CameraId, String);

// Fixed namespace so the same node, cell, camera, rule and start give the same id on every run.
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c7e_a1d0_2b4f_4e8a_9c61_7d3f_0e9b_a4c2);

pub struct GridRiskEngine {
    config: RiskConfig,
    cells: BTreeMap<GridId, CellRisk>,
    open: BTreeMap<IncidentKey, OpenIncident>,
}

impl GridRiskEngine {
    pub fn new(config: RiskConfig) -> Self {
        Self {
            config,
            cells: BTreeMap::new(),
            open: BTreeMap::new(),
        }
    }

    /// A cell's current score and level, decayed to `now`.
    pub fn cell_risk(&self, grid: &GridId, now: DateTime<Utc>) -> (f32, Option<RiskLevel>) {
        let score = self
            .cells
            .get(grid)
            .map_or(0.0, |c| c.decayed(now, self.config.half_life));
        (score, self.config.thresholds.level(score))
    }

    pub fn open_incidents(&self) -> usize {
        self.open.len()
    }

    fn raise(&mut self, grid: &GridId, weight: f32, at: DateTime<Utc>) -> f32 {
        let half_life = self.config.half_life;
        let cell = self
            .cells
            .entry(grid.clone())
            .or_insert(CellRisk { score: 0.0, at });
        let now = at.max(cell.at);
        let decayed = cell.decayed(now, half_life);
        let score = 1.0 - (1.0 - decayed) * (1.0 - weight.clamp(0.0, 1.0));
        *cell = CellRisk { score, at: now };
        metrics::gauge!("skynet_grid_risk_score", "grid" => grid.to_string()).set(f64::from(score));
        score
    }

    fn revise(incident: &mut Incident, status: IncidentStatus) -> Incident {
        incident.revision += 1;
        incident.status = status;
        incident.clone()
    }
}

impl RiskEngine for GridRiskEngine {
    fn observe(&mut self, obs: &Observation) -> Vec<Incident> {
        let score = self.raise(&obs.grid, obs.weight, obs.at);
        let Some(level) = self.config.thresholds.level(score) else {
            return Vec::new();
        };
        let key: IncidentKey = (obs.grid.clone(), obs.camera.clone(), obs.rule.name.clone());
        let mut detections = obs.detections.clone();
        detections.truncate(self.config.max_detections);

        if let Some(open) = self.open.get_mut(&key) {
            let incident = &mut open.incident;
            incident.last_seen = incident.last_seen.max(obs.at);
            incident.observations += 1;
            incident.detections = detections;
            incident.risk_score = score;
            if level > incident.level {
                incident.level = level;
                incident.level_colour = level.colour().into();
                open.changed_since_emit = false;
                tracing::info!(incident = %incident.id, grid = %obs.grid, level = %level, "incident escalated");
                return vec![Self::revise(incident, IncidentStatus::Escalated)];
            }
            open.changed_since_emit = true;
            return Vec::new();
        }
        if level < self.config.open_at {
            return Vec::new();
        }
        let name = format!(
            "{}/{}/{}/{}/{}",
            self.config.node,
            obs.grid,
            obs.camera,
            obs.rule.name,
            obs.at.timestamp_millis()
        );
        let incident = Incident {
            id: Uuid::new_v5(&INCIDENT_NAMESPACE, name.as_bytes()).to_string(),
            revision: 1,
            status: IncidentStatus::Opened,
            category: obs.category.clone(),
            level,
            level_colour: level.colour().into(),
            risk_score: score,
            grid: obs.grid.clone(),
            camera: obs.camera.clone(),
            owner: obs.owner,
            first_seen: obs.at,
            last_seen: obs.at,
            observations: 1,
            detections,
            rule: obs.rule.clone(),
        };
        tracing::info!(incident = %incident.id, grid = %obs.grid, camera = %obs.camera, level = %level, "incident opened");
        self.open.insert(
            key,
            OpenIncident {
                incident: incident.clone(),
                changed_since_emit: false,
            },
        );
        metrics::gauge!("skynet_incidents_open").set(self.open.len() as f64);
        vec![incident]
    }

    fn advance(&mut self, now: DateTime<Utc>) -> Vec<Incident> {
        let close_after = self.config.close_after;
        let quiet: Vec<IncidentKey> = self
            .open
            .iter()
            .filter(|(_, o)| now - o.incident.last_seen >= close_after)
            .map(|(k, _)| k.clone())
            .collect();
        let mut closed = Vec::with_capacity(quiet.len());
        for key in quiet {
            if let Some(mut open) = self.open.remove(&key) {
                let (score, _) = self.cell_risk(&key.0, now);
                open.incident.risk_score = score;
                tracing::info!(incident = %open.incident.id, grid = %key.0, "incident closed");
                closed.push(Self::revise(&mut open.incident, IncidentStatus::Closed));
            }
        }
        if !closed.is_empty() {
            metrics::gauge!("skynet_incidents_open").set(self.open.len() as f64);
        }
        closed
    }

    fn flush(&mut self) -> Vec<Incident> {
        self.open
            .values_mut()
            .filter(|o| o.changed_since_emit)
            .map(|o| {
                o.changed_since_emit = false;
                Self::revise(&mut o.incident, IncidentStatus::Updated)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::{OwnerKind, RuleRef};

    fn obs(secs: i64, weight: f32) -> Observation {
        Observation {
            camera: CameraId::new("cam"),
            grid: GridId::new("G1"),
            owner: OwnerKind::Police,
            category: "intrusion".into(),
            rule: RuleRef {
                name: "r".into(),
                kind: "zone_intrusion".into(),
                zone: Some("z".into()),
            },
            at: DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(secs),
            weight,
            detections: Vec::new(),
        }
    }

    #[test]
    fn evidence_accumulates_opens_escalates_and_closes() {
        let mut engine = GridRiskEngine::new(RiskConfig::default());
        let opened = engine.observe(&obs(0, 0.3));
        assert_eq!(opened.len(), 1);
        assert_eq!(
            (opened[0].status, opened[0].level, opened[0].revision),
            (IncidentStatus::Opened, RiskLevel::IV, 1)
        );
        // 1 - 0.7^2 = 0.51: level III.
        let escalated = engine.observe(&obs(0, 0.3));
        assert_eq!(
            (
                escalated[0].status,
                escalated[0].level,
                escalated[0].revision
            ),
            (IncidentStatus::Escalated, RiskLevel::III, 2)
        );
        assert_eq!(escalated[0].id, opened[0].id);
        assert!(
            engine
                .advance(DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(60))
                .is_empty()
        );
        let closed = engine.advance(DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(120));
        assert_eq!(
            (closed[0].status, closed[0].revision),
            (IncidentStatus::Closed, 3)
        );
        assert_eq!(engine.open_incidents(), 0);
    }

    #[test]
    fn risk_decays_with_half_life_and_weak_evidence_opens_nothing() {
        let mut engine = GridRiskEngine::new(RiskConfig::default());
        assert!(engine.observe(&obs(0, 0.2)).is_empty());
        let (score, level) = engine.cell_risk(
            &GridId::new("G1"),
            DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(60),
        );
        assert!((score - 0.1).abs() < 1e-4, "{score}");
        assert_eq!(level, None);
    }

    #[test]
    fn flush_emits_only_changed_incidents_and_ids_are_deterministic() {
        let mut a = GridRiskEngine::new(RiskConfig::default());
        let mut b = GridRiskEngine::new(RiskConfig::default());
        assert_eq!(a.observe(&obs(5, 0.3))[0].id, b.observe(&obs(5, 0.3))[0].id);
        assert!(a.flush().is_empty());
        assert!(a.observe(&obs(6, 0.1)).is_empty());
        let updated = a.flush();
        assert_eq!(
            (updated[0].status, updated[0].observations),
            (IncidentStatus::Updated, 2)
        );
        assert!(a.flush().is_empty());
    }

    #[test]
    fn thresholds_must_rise() {
        assert!(LevelThresholds::default().validate().is_ok());
        assert!(
            LevelThresholds {
                iv: 0.5,
                iii: 0.4,
                ii: 0.7,
                i: 0.9
            }
            .validate()
            .is_err()
        );
    }
}
