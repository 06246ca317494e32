//! The incident lifecycle: ids, opening, merging evidence, escalating, reopening within the
//! cooldown, closing quiet incidents and missed deadlines, and the case system's statuses.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{
    CaseStatus, Contribution, Deadlines, DeviceId, GridId, Incident, IncidentChange, IncidentState,
    IncidentStatus, Observation, OwnerKind, RiskEvent, RiskLevel, RuleRef,
};
use uuid::Uuid;

use super::score::{fuse, raise};
use super::{GridRiskEngine, RiskError};
use crate::settings::level_index;

// Fixed namespace so the same inputs give the same ids on every run.
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c7e_a1d0_2b4f_4e8a_9c61_7d3f_0e9b_a4c2);

/// An incident's key within its cell: its category, and the device for a device fault
/// (empty for hazards: one incident per cell and category).
pub(super) type CellKey = (String, DeviceId);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct IncidentKey {
    pub(super) grid: GridId,
    pub(super) category: String,
    /// A device fault's device; empty for hazards (one incident per cell and category).
    pub(super) device: DeviceId,
}

impl IncidentKey {
    pub(super) fn hazard(grid: &GridId, category: &str) -> Self {
        Self {
            grid: grid.clone(),
            category: category.to_string(),
            device: DeviceId::default(),
        }
    }

    pub(super) fn in_cell(&self) -> CellKey {
        (self.category.clone(), self.device.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OpenIncident {
    pub(super) incident: Incident,
    /// Evidence arrived since the last revision.
    pub(super) changed: bool,
    /// Event time of the last revision, for `update_every`.
    pub(super) last_revision_at: DateTime<Utc>,
    /// A device fault: open until the device recovers, never closed for being quiet.
    pub(super) held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClosedIncident {
    pub(super) incident: Incident,
    pub(super) closed_at: DateTime<Utc>,
}

/// An open incident's next timed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// No evidence for `close_after` while nobody acted on it.
    Quiet,
    /// Deadlines passed (both when they fall at one time).
    Missed { dispatch: bool, resolve: bool },
    /// New evidence, `update_every` after the last revision.
    Update,
}

/// What ids a key has been given: names use `first_seen_ms` (the latest first-seen time of
/// the key's incidents), plus `#n` once an incident did not start later than that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct IdState {
    first_seen_ms: i64,
    reopened: u64,
}

impl GridRiskEngine {
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

    pub(super) fn revise(
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

    pub(super) fn set_open_gauge(&self) {
        metrics::gauge!("skynet_incidents_open").set(self.open_count as f64);
    }

    pub(super) fn close(
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

    pub(super) fn insert_open(&mut self, key: &IncidentKey, open: OpenIncident) {
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
    pub(super) fn first_revision(
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
    pub(super) fn incident_evidence(
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

        // What this incident had due before the evidence happens first, whenever the last
        // sweep was: the same revisions live (swept often) and in replay (swept at inputs).
        self.run_due(&key, obs.at, out);
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
        // A false alarm stays closed while its evidence goes on: the rejected incident is not
        // reopened, and nothing new opens until the cooldown after the rejection has passed.
        let closed = match closed {
            Some(rejected)
                if rejected.incident.state == IncidentState::Rejected
                    && obs.at.signed_duration_since(rejected.closed_at) < self.config.cooldown =>
            {
                tracing::debug!(incident = %rejected.incident.id, grid = %key.grid, "evidence for a rejected incident within its cooldown; nothing opened");
                if let Some(cell) = self.state.cells.get_mut(&key.grid) {
                    cell.closed.insert(in_cell.clone(), rejected);
                }
                return;
            }
            other => other,
        };
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

    /// An open incident's earliest timed action, and when it falls due: closing when quiet
    /// (`last_seen + close_after`), a missed deadline, or an update of new evidence
    /// (`update_every` after the last revision). At one time, closing comes first.
    fn next_due(&self, open: &OpenIncident) -> Option<(DateTime<Utc>, Due)> {
        let incident = &open.incident;
        let missed = |what: &str| incident.missed.iter().any(|m| m == what);
        let quiet = (!open.held && incident.state == IncidentState::Open)
            .then(|| {
                incident
                    .last_seen
                    .checked_add_signed(self.config.close_after)
            })
            .flatten();
        let dispatch = incident.deadlines.dispatch_by.filter(|_| {
            matches!(
                incident.state,
                IncidentState::Open | IncidentState::Acknowledged
            ) && !missed("dispatch")
        });
        let resolve = incident.deadlines.resolve_by.filter(|_| {
            !matches!(
                incident.state,
                IncidentState::Resolved | IncidentState::Verified
            ) && !missed("resolve")
        });
        let update = open
            .changed
            .then(|| {
                open.last_revision_at
                    .checked_add_signed(self.config.update_every)
            })
            .flatten();
        let at = [quiet, dispatch, resolve, update]
            .into_iter()
            .flatten()
            .min()?;
        let due = if quiet == Some(at) {
            Due::Quiet
        } else if dispatch == Some(at) || resolve == Some(at) {
            Due::Missed {
                dispatch: dispatch == Some(at),
                resolve: resolve == Some(at),
            }
        } else {
            Due::Update
        };
        Some((at, due))
    }

    /// Runs the earliest timed action of `key`'s open incident if it is due by `until`, at
    /// its own time; returns when its next one is due, if that is by `until` too.
    fn run_next_due(
        &mut self,
        key: &IncidentKey,
        until: DateTime<Utc>,
        out: &mut Vec<RiskEvent>,
    ) -> Option<DateTime<Utc>> {
        let open = self.state.cells.get(&key.grid)?.open.get(&key.in_cell())?;
        let (at, due) = self.next_due(open).filter(|(at, _)| *at <= until)?;
        match due {
            Due::Quiet => {
                // Dated when it went quiet, not when a sweep noticed: after a gap the
                // cooldown runs from here, as it did live.
                out.extend(self.close(key, IncidentChange::Quiet, IncidentState::Closed, at));
                return None;
            }
            Due::Missed { dispatch, resolve } => {
                let open = self
                    .state
                    .cells
                    .get_mut(&key.grid)?
                    .open
                    .get_mut(&key.in_cell())?;
                let incident = &mut open.incident;
                for (missed, what) in [(dispatch, "dispatch"), (resolve, "resolve")] {
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
                    at,
                ));
            }
            Due::Update => {
                let open = self
                    .state
                    .cells
                    .get_mut(&key.grid)?
                    .open
                    .get_mut(&key.in_cell())?;
                out.push(Self::revise(
                    open,
                    IncidentStatus::Updated,
                    IncidentChange::Evidence,
                    at,
                ));
            }
        }
        let open = self.state.cells.get(&key.grid)?.open.get(&key.in_cell())?;
        self.next_due(open)
            .map(|(at, _)| at)
            .filter(|at| *at <= until)
    }

    /// Every timed action of `key`'s open incident due by `until`, in time order: before
    /// evidence at `until` joins it, it closes if it went quiet before.
    pub(super) fn run_due(
        &mut self,
        key: &IncidentKey,
        until: DateTime<Utc>,
        out: &mut Vec<RiskEvent>,
    ) {
        while self.run_next_due(key, until, out).is_some() {}
    }

    /// Every incident's timed actions due by `now`, each at its own time, in time order over
    /// all cells (then by cell and key): quiet ones close, missed deadlines escalate, due
    /// updates go out. However far the clock moved since the last sweep, they come out as
    /// they would have at one sweep a second. Only the cells with something due are touched.
    pub(super) fn sweep_incidents(&mut self, now: DateTime<Utc>, out: &mut Vec<RiskEvent>) {
        let this = &*self;
        let mut due: BinaryHeap<Reverse<(DateTime<Utc>, IncidentKey)>> = this
            .state
            .cells
            .iter()
            .flat_map(|(grid, cell)| {
                cell.open
                    .iter()
                    .filter_map(move |((category, device), open)| {
                        let (at, _) = this.next_due(open).filter(|(at, _)| *at <= now)?;
                        Some(Reverse((
                            at,
                            IncidentKey {
                                grid: grid.clone(),
                                category: category.clone(),
                                device: device.clone(),
                            },
                        )))
                    })
            })
            .collect();
        while let Some(Reverse((_, key))) = due.pop() {
            if let Some(next) = self.run_next_due(&key, now, out) {
                due.push(Reverse((next, key)));
            }
        }
    }

    /// Emits what open incidents learned since their last revision (at shutdown).
    pub(super) fn flush_changed(&mut self) -> Vec<RiskEvent> {
        let mut grids: Vec<GridId> = self.state.cells.keys().cloned().collect();
        grids.sort_unstable();
        let mut out = Vec::new();
        for grid in grids {
            // Only cells with news become changed rows.
            if !self.state.cells[&grid].open.values().any(|o| o.changed) {
                continue;
            }
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

    /// The case system's status for an incident: moves its lifecycle and makes a revision.
    /// Resolved, verified and rejected incidents take their category's evidence out of the
    /// cell (the hazard was dealt with, or was never there), which lowers its risk.
    pub(super) fn apply_case_status(
        &mut self,
        update: &CaseStatus,
    ) -> Result<Vec<RiskEvent>, RiskError> {
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
}

fn earlier(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
