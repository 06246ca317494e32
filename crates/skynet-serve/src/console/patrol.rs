//! The patrol page's data: each patrol as configured, and its recent rounds (issue 26).
//!
//! The pipeline registers each `[[patrols]]` entry at start and records every finished
//! round (`skynet.patrol_round.v1`'s data) once it is stored in the outbox.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{PoisonError, RwLock};

use skynet_core::{DeviceId, LookStatus, OwnerKind, PatrolLook, PatrolRound};

use super::Console;

/// A patrol as configured, for the console.
#[derive(Debug, Clone)]
pub struct PatrolRegistration {
    pub name: String,
    pub every_s: f64,
    pub dwell_s: f64,
    pub max_concurrent: usize,
    /// Its cameras, in visiting order.
    pub cameras: Vec<DeviceId>,
}

/// How many finished rounds each patrol keeps in memory for the page.
pub(crate) const ROUNDS_KEPT: usize = 100;

#[derive(Debug, Default)]
pub(crate) struct PatrolBoard {
    pub(crate) patrols: RwLock<BTreeMap<String, PatrolEntry>>,
}

#[derive(Debug)]
pub(crate) struct PatrolEntry {
    pub(crate) registration: PatrolRegistration,
    /// The latest rounds, oldest first (at most [`ROUNDS_KEPT`]).
    pub(crate) rounds: VecDeque<PatrolRound>,
}

impl Console {
    /// Adds a patrol (at start, and again after a reload: its rounds are kept).
    pub fn register_patrol(&self, registration: PatrolRegistration) {
        let mut patrols = self
            .patrols
            .patrols
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match patrols.get_mut(&registration.name) {
            Some(entry) => entry.registration = registration,
            None => {
                patrols.insert(
                    registration.name.clone(),
                    PatrolEntry {
                        registration,
                        rounds: VecDeque::new(),
                    },
                );
            }
        }
    }

    /// Records a finished round (once it is stored in the outbox).
    pub fn record_patrol_round(&self, round: &PatrolRound) {
        let mut patrols = self
            .patrols
            .patrols
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = patrols.get_mut(&round.patrol) else {
            tracing::warn!(patrol = %round.patrol, "a round of a patrol the console does not know; not shown");
            return;
        };
        // The same round again (a redelivery, a reload): replaced, not shown twice.
        if let Some(kept) = entry.rounds.iter_mut().find(|r| r.round == round.round) {
            *kept = round.clone();
        } else {
            if entry.rounds.len() == ROUNDS_KEPT {
                entry.rounds.pop_front();
            }
            entry.rounds.push_back(round.clone());
        }
        drop(patrols);
        self.publish_patrol_round(round);
    }
}

/// What the console knows of one camera of a patrol: its cell and owner, from the latest
/// round that looked at it, else from the camera's registration (`None`: not known yet).
#[derive(Debug, Clone, Default)]
pub(crate) struct PatrolCamera {
    pub(crate) grid: Option<String>,
    pub(crate) owner: Option<OwnerKind>,
}

/// A copy of one patrol for a request: its registration and rounds, newest last.
#[derive(Debug, Clone)]
pub(crate) struct PatrolCopy {
    pub(crate) registration: PatrolRegistration,
    pub(crate) rounds: Vec<PatrolRound>,
    /// Per camera of the registration or of a kept round, in visiting order.
    pub(crate) cameras: Vec<(DeviceId, PatrolCamera)>,
}

impl PatrolCopy {
    /// How many of the kept rounds came after the last one that checked `camera`: 0 when
    /// the latest round checked it; `None` when none of the kept rounds did.
    pub(crate) fn rounds_since_checked(&self, camera: &DeviceId) -> Option<u64> {
        self.rounds
            .iter()
            .rev()
            .position(|round| {
                round
                    .cameras
                    .iter()
                    .any(|look| look.id == *camera && look.status == LookStatus::Checked)
            })
            .map(|n| n as u64)
    }

    /// The latest round that looked at `camera`, and its look.
    pub(crate) fn last_look(&self, camera: &DeviceId) -> Option<(&PatrolRound, &PatrolLook)> {
        self.rounds.iter().rev().find_map(|round| {
            round
                .cameras
                .iter()
                .find(|look| look.id == *camera)
                .map(|look| (round, look))
        })
    }

    /// The latest round that checked `camera`.
    pub(crate) fn last_checked(&self, camera: &DeviceId) -> Option<&PatrolRound> {
        self.rounds.iter().rev().find(|round| {
            round
                .cameras
                .iter()
                .any(|look| look.id == *camera && look.status == LookStatus::Checked)
        })
    }
}

/// The SSE `patrol` message: a round was recorded (the page fetches what it shows).
#[derive(serde::Serialize)]
struct PatrolMessage<'a> {
    patrol: &'a str,
    round: u64,
    finished: chrono::DateTime<chrono::Utc>,
}

impl Console {
    /// Every patrol, copied for a request (the lock is not held while answering).
    pub(crate) fn patrol_copies(&self) -> Vec<PatrolCopy> {
        let names: Vec<String> = self
            .patrols
            .patrols
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.iter().filter_map(|n| self.patrol_copy(n)).collect()
    }

    /// One patrol, copied for a request; `None` when no patrol has that name.
    pub(crate) fn patrol_copy(&self, name: &str) -> Option<PatrolCopy> {
        let (registration, rounds) = {
            let patrols = self
                .patrols
                .patrols
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = patrols.get(name)?;
            (
                entry.registration.clone(),
                entry.rounds.iter().cloned().collect::<Vec<_>>(),
            )
        };
        let mut order: Vec<DeviceId> = registration.cameras.clone();
        for round in &rounds {
            for look in &round.cameras {
                if !order.contains(&look.id) {
                    order.push(look.id.clone());
                }
            }
        }
        let registered = self.cameras.read().unwrap_or_else(PoisonError::into_inner);
        let cameras = order
            .into_iter()
            .map(|id| {
                let seen = rounds
                    .iter()
                    .rev()
                    .find_map(|round| round.cameras.iter().find(|look| look.id == id));
                let camera = match (seen, registered.get(&id)) {
                    (Some(look), _) => PatrolCamera {
                        grid: Some(look.grid.as_str().to_string()),
                        owner: Some(look.owner),
                    },
                    (None, Some(entry)) => PatrolCamera {
                        grid: Some(entry.grid.clone()),
                        owner: Some(entry.owner),
                    },
                    (None, None) => PatrolCamera::default(),
                };
                (id, camera)
            })
            .collect();
        drop(registered);
        Some(PatrolCopy {
            registration,
            rounds,
            cameras,
        })
    }

    /// Tells the browsers that `round` was recorded.
    fn publish_patrol_round(&self, round: &PatrolRound) {
        let data = super::views::json_text(&PatrolMessage {
            patrol: &round.patrol,
            round: round.round,
            finished: round.finished,
        });
        // No receiver (no browser open) is not an error.
        let _ = self.events.send(super::live::LiveMessage {
            kind: "patrol",
            department: None,
            owner: None,
            incident: None,
            applied_status: None,
            data: data.into(),
            grid: None,
        });
    }
}
