//! Patrols (issue 26): each patrol with its recent rounds and each camera's last look, one
//! patrol's rounds, a round's snapshot of a camera, and per grid cell how many rounds ago a
//! patrol camera there was last checked (for the map).
//!
//! Every route needs `incidents.read` (as the grid map). Which cameras a caller sees is as
//! for a camera's live video: all of them with `sources.read`; else (an inspector) only the
//! cameras whose owner is the caller's owner. Rounds and counts are of those cameras only;
//! a patrol with none of them, and a snapshot of a camera out of scope, answer 404.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skynet_core::{DeviceId, LookStatus, OwnerKind, PatrolLook, PatrolRound};

use super::error::{ApiError, ApiResult, Reply, blocking, jpeg, query};
use super::incidents::safe_segment;
use super::session::Caller;
use crate::console::auth::{Permission, User};
use crate::console::live::Console;
use crate::console::patrol::{PatrolCamera, PatrolCopy};

/// Rounds each patrol of `GET /patrols` summarises, newest first.
const SUMMARY_ROUNDS: usize = 10;
/// `limit` of `GET /patrols/{patrol}/rounds` when none is given.
const DEFAULT_ROUNDS: usize = 20;

#[derive(Serialize)]
pub(super) struct Patrols {
    patrols: Vec<PatrolView>,
}

/// A patrol as configured, its latest rounds and each camera's last look.
#[derive(Serialize)]
struct PatrolView {
    name: String,
    every_s: f64,
    dwell_s: f64,
    max_concurrent: usize,
    /// Rounds the console keeps (the latest 100 since it started).
    rounds_kept: usize,
    /// The latest rounds, newest first (at most 10).
    rounds: Vec<RoundSummary>,
    /// Each camera in visiting order.
    cameras: Vec<CameraLook>,
    /// The cameras not checked in the latest round (offline or failed), per grid cell.
    offline: Vec<GridOffline>,
}

/// A round in numbers.
#[derive(Serialize)]
struct RoundSummary {
    round: u64,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    /// `finished - started`.
    seconds: f64,
    cameras: usize,
    checked: usize,
    offline: usize,
    failed: usize,
}

/// A camera of a patrol and its last look.
#[derive(Serialize)]
struct CameraLook {
    id: String,
    grid: Option<String>,
    owner: Option<OwnerKind>,
    /// The latest round that looked at it (`null`: none kept yet).
    last: Option<LastLook>,
    /// When the latest round that checked it finished.
    last_checked: Option<DateTime<Utc>>,
    /// Rounds kept since it was last checked: 0 when the latest round checked it; `null`
    /// when no kept round did.
    rounds_since_checked: Option<u64>,
}

#[derive(Serialize)]
struct LastLook {
    round: u64,
    /// When that round finished.
    at: DateTime<Utc>,
    status: LookStatus,
    frames: u64,
    observations: u64,
    snapshot_url: Option<String>,
}

/// The cameras of one cell not checked in a round.
#[derive(Serialize)]
struct GridOffline {
    grid: String,
    cameras: Vec<OfflineCamera>,
}

#[derive(Serialize)]
struct OfflineCamera {
    id: String,
    status: LookStatus,
}

#[derive(Serialize)]
pub(super) struct Rounds {
    patrol: String,
    rounds: Vec<RoundView>,
}

/// A round with each camera's look.
#[derive(Serialize)]
struct RoundView {
    #[serde(flatten)]
    summary: RoundSummary,
    looks: Vec<LookView>,
}

#[derive(Serialize)]
struct LookView {
    id: String,
    grid: String,
    owner: OwnerKind,
    status: LookStatus,
    frames: u64,
    observations: u64,
    snapshot_url: Option<String>,
}

#[derive(Serialize)]
pub(super) struct PatrolGrids {
    grids: Vec<GridPatrol>,
}

/// A cell with patrol cameras: how long since one of them was last checked.
#[derive(Serialize)]
struct GridPatrol {
    grid: String,
    /// The fewest rounds since any of its cameras was checked (each camera counted in its
    /// own patrol's rounds); `null` when none was checked in the kept rounds.
    rounds_since_checked: Option<u64>,
    /// When the latest round that checked one of them finished.
    last_checked: Option<DateTime<Utc>>,
    cameras: Vec<GridCamera>,
}

#[derive(Serialize)]
struct GridCamera {
    id: String,
    patrol: String,
    /// Its status in the latest round that looked at it.
    status: Option<LookStatus>,
    rounds_since_checked: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct RoundsQuery {
    limit: Option<usize>,
}

/// Whether `user` sees a camera of `owner`: everything with `sources.read`, else only their
/// own owner's cameras (as the live video).
fn sees(user: &User, owner: Option<OwnerKind>) -> bool {
    user.may(Permission::SourcesRead)
        || owner.is_some_and(|owner| user.scope().owner.as_deref() == Some(owner.as_str()))
}

/// The URL of a look's snapshot, when the pipeline wrote one and the ids make a path.
fn snapshot_url(patrol: &str, round: u64, look: &PatrolLook) -> Option<String> {
    (look.snapshot.is_some() && safe_segment(patrol) && safe_segment(look.id.as_str())).then(|| {
        format!(
            "/api/v1/patrols/{patrol}/rounds/{round}/cameras/{}/snapshot",
            look.id
        )
    })
}

/// A round counted over the looks `shown`.
fn summary(round: &PatrolRound, shown: &[&PatrolLook]) -> RoundSummary {
    let count = |status| shown.iter().filter(|l| l.status == status).count();
    RoundSummary {
        round: round.round,
        started: round.started,
        finished: round.finished,
        seconds: (round.finished - round.started).num_milliseconds().max(0) as f64 / 1000.0,
        cameras: shown.len(),
        checked: count(LookStatus::Checked),
        offline: count(LookStatus::Offline),
        failed: count(LookStatus::Failed),
    }
}

/// The looks of `round` the caller sees.
fn looks<'r>(user: &User, round: &'r PatrolRound) -> Vec<&'r PatrolLook> {
    round
        .cameras
        .iter()
        .filter(|look| sees(user, Some(look.owner)))
        .collect()
}

/// The patrol's cameras the caller sees.
fn cameras<'p>(user: &User, patrol: &'p PatrolCopy) -> Vec<&'p (DeviceId, PatrolCamera)> {
    patrol
        .cameras
        .iter()
        .filter(|(_, camera)| sees(user, camera.owner))
        .collect()
}

/// A patrol the caller may see: it exists and, for a scoped caller, has one of their cameras.
fn visible_patrol(console: &Console, user: &User, name: &str) -> ApiResult<PatrolCopy> {
    let patrol = console
        .patrol_copy(name)
        .ok_or_else(|| ApiError::not_found("patrol"))?;
    if user.may(Permission::SourcesRead) || !cameras(user, &patrol).is_empty() {
        Ok(patrol)
    } else {
        Err(ApiError::not_found("patrol"))
    }
}

fn patrol_view(user: &User, patrol: &PatrolCopy) -> PatrolView {
    let name = patrol.registration.name.as_str();
    let rounds = patrol
        .rounds
        .iter()
        .rev()
        .take(SUMMARY_ROUNDS)
        .map(|round| summary(round, &looks(user, round)))
        .collect();
    let cameras = cameras(user, patrol)
        .into_iter()
        .map(|(id, camera)| CameraLook {
            id: id.to_string(),
            grid: camera.grid.clone(),
            owner: camera.owner,
            last: patrol.last_look(id).map(|(round, look)| LastLook {
                round: round.round,
                at: round.finished,
                status: look.status,
                frames: look.frames,
                observations: look.observations,
                snapshot_url: snapshot_url(name, round.round, look),
            }),
            last_checked: patrol.last_checked(id).map(|round| round.finished),
            rounds_since_checked: patrol.rounds_since_checked(id),
        })
        .collect();
    let mut offline: BTreeMap<String, Vec<OfflineCamera>> = BTreeMap::new();
    if let Some(latest) = patrol.rounds.last() {
        for look in looks(user, latest) {
            if look.status != LookStatus::Checked {
                offline
                    .entry(look.grid.to_string())
                    .or_default()
                    .push(OfflineCamera {
                        id: look.id.to_string(),
                        status: look.status,
                    });
            }
        }
    }
    PatrolView {
        name: name.to_string(),
        every_s: patrol.registration.every_s,
        dwell_s: patrol.registration.dwell_s,
        max_concurrent: patrol.registration.max_concurrent,
        rounds_kept: patrol.rounds.len(),
        rounds,
        cameras,
        offline: offline
            .into_iter()
            .map(|(grid, cameras)| GridOffline { grid, cameras })
            .collect(),
    }
}

/// `GET /api/v1/patrols`.
pub(super) async fn patrols(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Patrols>> {
    caller.require(Permission::IncidentsRead)?;
    let user = &caller.user;
    let patrols = console
        .patrol_copies()
        .iter()
        .filter(|p| user.may(Permission::SourcesRead) || !cameras(user, p).is_empty())
        .map(|p| patrol_view(user, p))
        .collect();
    Ok(Reply(Patrols { patrols }))
}

/// `GET /api/v1/patrols/{patrol}/rounds?limit=N`: the latest rounds, newest first.
pub(super) async fn patrol_rounds(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<RoundsQuery>, QueryRejection>,
) -> ApiResult<Reply<Rounds>> {
    caller.require(Permission::IncidentsRead)?;
    let Query(params) = query(params)?;
    let limit = params
        .limit
        .unwrap_or(DEFAULT_ROUNDS)
        .clamp(1, crate::console::patrol::ROUNDS_KEPT);
    let user = &caller.user;
    let patrol = visible_patrol(&console, user, &name)?;
    let rounds = patrol
        .rounds
        .iter()
        .rev()
        .take(limit)
        .map(|round| {
            let shown = looks(user, round);
            RoundView {
                summary: summary(round, &shown),
                looks: shown
                    .iter()
                    .map(|look| LookView {
                        id: look.id.to_string(),
                        grid: look.grid.to_string(),
                        owner: look.owner,
                        status: look.status,
                        frames: look.frames,
                        observations: look.observations,
                        snapshot_url: snapshot_url(&name, round.round, look),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Reply(Rounds {
        patrol: patrol.registration.name,
        rounds,
    }))
}

/// `GET /api/v1/patrols/{patrol}/rounds/{round}/cameras/{camera}/snapshot`: the annotated
/// JPEG the pipeline wrote of that camera in that round (`[evidence] dir` followed by
/// `patrol/<patrol>/<round>/<camera>.jpg`). A path that is not a patrol's camera, a camera
/// out of scope and a file not written answer the same 404.
pub(super) async fn patrol_snapshot(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path((name, round, camera)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    caller.require(Permission::IncidentsRead)?;
    let missing = || ApiError::not_found("patrol snapshot");
    // Digits only: no sign, no `+`, nothing a file name could hide.
    let round =
        (!round.is_empty() && round.len() <= 20 && round.bytes().all(|b| b.is_ascii_digit()))
            .then(|| round.parse::<u64>().ok())
            .flatten()
            .ok_or_else(missing)?;
    if !safe_segment(&name) || !safe_segment(&camera) {
        return Err(missing());
    }
    let camera = DeviceId::new(camera.as_str());
    // The camera's owner in that round when it is kept, else as known now.
    let owner = console
        .patrol_camera_owner(&name, round, &camera)
        .ok_or_else(missing)?;
    if !sees(&caller.user, owner) {
        return Err(missing());
    }
    let dir = console.evidence_dir.clone().ok_or_else(missing)?;
    let path = dir.join(skynet_core::patrol_snapshot_path(&name, round, &camera));
    let bytes = blocking(move || std::fs::read(&path).map_err(|_| missing())).await?;
    Ok(jpeg(bytes))
}

/// `GET /api/v1/patrols/grids`: per grid cell with patrol cameras the caller sees, how many
/// rounds ago one of them was last checked (the map's "not looked at for more than N rounds").
pub(super) async fn patrol_grids(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<PatrolGrids>> {
    caller.require(Permission::IncidentsRead)?;
    let user = &caller.user;
    let mut cells: BTreeMap<String, GridPatrol> = BTreeMap::new();
    for patrol in console.patrol_copies() {
        for (id, camera) in cameras(user, &patrol) {
            let Some(grid) = &camera.grid else {
                continue;
            };
            let since = patrol.rounds_since_checked(id);
            let checked = patrol.last_checked(id).map(|round| round.finished);
            let cell = cells.entry(grid.clone()).or_insert_with(|| GridPatrol {
                grid: grid.clone(),
                rounds_since_checked: None,
                last_checked: None,
                cameras: Vec::new(),
            });
            cell.rounds_since_checked = match (cell.rounds_since_checked, since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            cell.last_checked = cell.last_checked.max(checked);
            cell.cameras.push(GridCamera {
                id: id.to_string(),
                patrol: patrol.registration.name.clone(),
                status: patrol.last_look(id).map(|(_, look)| look.status),
                rounds_since_checked: since,
            });
        }
    }
    Ok(Reply(PatrolGrids {
        grids: cells.into_values().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::auth::Role;

    fn user(role: Role, owner: Option<&str>) -> User {
        User {
            name: "u".into(),
            role,
            department: Some("emergency".into()),
            owner: owner.map(str::to_string),
        }
    }

    #[test]
    fn cameras_are_seen_with_sources_read_or_by_their_owners_inspector() {
        let police = Some(OwnerKind::Police);
        assert!(sees(&user(Role::Operator, None), police));
        assert!(sees(&user(Role::Engineer, None), None));
        assert!(sees(&user(Role::Inspector, Some("police")), police));
        assert!(!sees(
            &user(Role::Inspector, Some("safety_production")),
            police
        ));
        assert!(!sees(&user(Role::Inspector, None), police));
        assert!(!sees(&user(Role::Inspector, Some("police")), None));
    }
}
