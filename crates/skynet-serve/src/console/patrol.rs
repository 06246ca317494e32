//! The patrol page's data: each patrol as configured, and its recent rounds (issue 26).
//!
//! The pipeline registers each `[[patrols]]` entry at start and records every finished
//! round (`skynet.patrol_round.v1`'s data) once it is stored in the outbox. A patrol
//! registered for the first time (after a restart) reads its latest rounds back from the
//! outbox's stored events, so the page does not start empty.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{PoisonError, RwLock};

use skynet_core::{
    DeviceId, LookStatus, OwnerKind, PATROL_ROUND_EVENT_TYPE, PatrolLook, PatrolRound,
};

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
    /// Adds a patrol (at start, and again after a reload: its rounds are kept). A new one
    /// starts with its latest rounds still stored in the outbox.
    pub fn register_patrol(&self, registration: PatrolRegistration) {
        let known = self
            .patrols
            .patrols
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&registration.name);
        let stored = if known {
            Vec::new()
        } else {
            self.stored_rounds(&registration.name)
        };
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
                        rounds: stored.into(),
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
    /// Per camera: where its last look and its last check are in `rounds`.
    history: HashMap<DeviceId, CameraHistory>,
}

/// Indices into [`PatrolCopy::rounds`] (and the round's `cameras`), found in one pass.
#[derive(Debug, Clone, Copy, Default)]
struct CameraHistory {
    last_look: Option<(usize, usize)>,
    last_checked: Option<usize>,
}

impl PatrolCopy {
    fn history(&self, camera: &DeviceId) -> CameraHistory {
        self.history.get(camera).copied().unwrap_or_default()
    }

    /// How many of the kept rounds came after the last one that checked `camera`: 0 when
    /// the latest round checked it; `None` when none of the kept rounds did.
    pub(crate) fn rounds_since_checked(&self, camera: &DeviceId) -> Option<u64> {
        self.history(camera)
            .last_checked
            .map(|i| (self.rounds.len() - 1 - i) as u64)
    }

    /// The latest round that looked at `camera`, and its look.
    pub(crate) fn last_look(&self, camera: &DeviceId) -> Option<(&PatrolRound, &PatrolLook)> {
        let (round, look) = self.history(camera).last_look?;
        let round = self.rounds.get(round)?;
        Some((round, round.cameras.get(look)?))
    }

    /// The latest round that checked `camera`.
    pub(crate) fn last_checked(&self, camera: &DeviceId) -> Option<&PatrolRound> {
        self.rounds.get(self.history(camera).last_checked?)
    }
}

/// The SSE `patrol` message: a round was recorded (the page fetches what it shows).
#[derive(serde::Serialize)]
struct PatrolMessage<'a> {
    patrol: &'a str,
    round: u64,
    finished: chrono::DateTime<chrono::Utc>,
}

/// A stored `skynet.patrol_round.v1` event, for its data.
#[derive(serde::Deserialize)]
struct StoredRound {
    data: PatrolRound,
}

impl Console {
    /// The latest rounds of `patrol` (at most [`ROUNDS_KEPT`], oldest first) still stored in
    /// the outbox (events `skynet.patrol_round.v1` whose subject is the patrol; retention
    /// may have removed older ones). Read once, when the patrol is first registered; a
    /// failure is logged and the page starts empty.
    fn stored_rounds(&self, patrol: &str) -> Vec<PatrolRound> {
        let read = || -> Result<Vec<PatrolRound>, String> {
            let path = self
                .outbox
                .with(|o| Ok(o.path().to_path_buf()))
                .map_err(|e| e.to_string())?;
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| e.to_string())?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let mut stmt = conn
                .prepare(
                    "SELECT body FROM events WHERE type = ?1 AND subject = ?2 ORDER BY seq DESC LIMIT ?3",
                )
                .map_err(|e| e.to_string())?;
            let bodies = stmt
                .query_map(
                    rusqlite::params![PATROL_ROUND_EVENT_TYPE, patrol, ROUNDS_KEPT as i64],
                    |row| row.get::<_, String>(0),
                )
                .map_err(|e| e.to_string())?;
            let mut rounds: Vec<PatrolRound> = Vec::new();
            for body in bodies {
                let body = body.map_err(|e| e.to_string())?;
                match serde_json::from_str::<StoredRound>(&body) {
                    Ok(stored) if stored.data.patrol == patrol => {
                        if !rounds.iter().any(|r| r.round == stored.data.round) {
                            rounds.push(stored.data);
                        }
                    }
                    Ok(_) => {}
                    // Another version's round: left out, the rest still shown.
                    Err(e) => tracing::debug!(error = %e, "a stored patrol round not read back"),
                }
            }
            rounds.sort_by_key(|r| r.round);
            Ok(rounds)
        };
        match read() {
            Ok(rounds) => rounds,
            Err(e) => {
                tracing::warn!(patrol, error = %e, "the patrol's stored rounds could not be read back; the page starts empty");
                Vec::new()
            }
        }
    }

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
        // One pass over every look, oldest round first: the later ones win.
        let mut history: HashMap<DeviceId, CameraHistory> = HashMap::new();
        let mut order: Vec<DeviceId> = registration.cameras.clone();
        let mut listed: HashSet<DeviceId> = order.iter().cloned().collect();
        for (r, round) in rounds.iter().enumerate() {
            for (l, look) in round.cameras.iter().enumerate() {
                if listed.insert(look.id.clone()) {
                    order.push(look.id.clone());
                }
                let entry = history.entry(look.id.clone()).or_default();
                entry.last_look = Some((r, l));
                if look.status == LookStatus::Checked {
                    entry.last_checked = Some(r);
                }
            }
        }
        let registered = self.cameras.read().unwrap_or_else(PoisonError::into_inner);
        let cameras = order
            .into_iter()
            .map(|id| {
                let seen = history
                    .get(&id)
                    .and_then(|h| h.last_look)
                    .and_then(|(r, l)| rounds.get(r)?.cameras.get(l));
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
            history,
        })
    }

    /// For a round's snapshot: `None` when `camera` is not of the patrol `name` (or there is
    /// no such patrol), else the camera's owner in that round when it is kept, else as last
    /// seen or registered (`Some(None)`: not known). Reads under the lock, copying nothing.
    pub(crate) fn patrol_camera_owner(
        &self,
        name: &str,
        round: u64,
        camera: &DeviceId,
    ) -> Option<Option<OwnerKind>> {
        let patrols = self
            .patrols
            .patrols
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = patrols.get(name)?;
        let look_in = |r: &PatrolRound| {
            r.cameras
                .iter()
                .find(|look| look.id == *camera)
                .map(|l| l.owner)
        };
        if let Some(owner) = entry
            .rounds
            .iter()
            .find(|r| r.round == round)
            .and_then(look_in)
        {
            return Some(Some(owner));
        }
        let seen = entry.rounds.iter().rev().find_map(look_in);
        let member = seen.is_some() || entry.registration.cameras.contains(camera);
        if !member {
            return None;
        }
        let registered = self
            .cameras
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(camera)
            .map(|c| c.owner);
        Some(seen.or(registered))
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
