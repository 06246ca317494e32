//! Incidents: the list and one incident's detail, acknowledgements, notes, status changes
//! made by people, and the evidence images.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skynet_core::{CaseStatus, Contribution, Incident, IncidentChange, IncidentState, RiskLevel};
use skynet_emit::IncidentQuery;
use tokio::io::AsyncReadExt;

use super::error::{ApiError, ApiResult, Reply, blocking, body, query};
use super::session::Caller;
use crate::console::auth::Permission;
use crate::console::live::{Console, LiveMessage};
use crate::console::store::{AuditEntry, AuditQuery, Note};
use crate::console::views::{AckView, IncidentView};

/// How long a status change waits for its revision to be committed before answering 202.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// A page of incidents, and the cursor of the next (`null` on the last).
#[derive(Serialize)]
pub(super) struct IncidentsPage {
    incidents: Vec<IncidentView>,
    next: Option<String>,
}

/// One incident with its revisions and its timeline.
#[derive(Serialize)]
pub(super) struct IncidentDetail {
    incident: IncidentView,
    /// The observations that contributed, per source and category.
    observations: Vec<Contribution>,
    revisions: Vec<Incident>,
    timeline: Vec<TimelineEntry>,
}

/// One entry of an incident's timeline (`TimelineEntry` in openapi.json): the system's
/// (a revision) or a person's (an acknowledgement, a note), whose revision fields are `null`.
#[derive(Serialize)]
pub(super) struct TimelineEntry {
    at: DateTime<Utc>,
    /// `system`, `status`, `ack` or `note`.
    kind: &'static str,
    /// Who made it: a person (the authenticated caller the audit log names), the case system
    /// (its event source), or `null` for the system's own revisions.
    actor: Option<String>,
    /// For a status change: whom the incident is assigned to (never the actor's stand-in).
    assignee: Option<String>,
    text: Option<String>,
    state: Option<IncidentState>,
    level: Option<RiskLevel>,
    revision: Option<u32>,
    change: Option<IncidentChange>,
}

impl TimelineEntry {
    fn person(
        at: DateTime<Utc>,
        kind: &'static str,
        actor: Option<String>,
        text: Option<String>,
    ) -> Self {
        Self {
            at,
            kind,
            actor,
            assignee: None,
            text,
            state: None,
            level: None,
            revision: None,
            change: None,
        }
    }
}

/// What a change to one incident answers: the incident as it stands.
#[derive(Serialize)]
pub(super) struct IncidentReply {
    incident: IncidentView,
}

#[derive(Serialize)]
pub(super) struct NoteReply {
    note: Note,
}

/// The audit log's before of an acknowledgement (`acknowledged` is `null`), and its after.
#[derive(Serialize)]
struct AckBefore {
    state: IncidentState,
    acknowledged: Option<AckView>,
}

#[derive(Serialize)]
struct AckAfter {
    state: IncidentState,
    acknowledged: Option<AckView>,
    note: Option<String>,
}

#[derive(Serialize)]
struct NoteAudit<'a> {
    text: &'a str,
}

/// The audit log's before of a status change: the state only.
#[derive(Serialize)]
struct StatusBefore {
    state: IncidentState,
}

/// The audit log's after of a status change: what was asked, written in the transaction
/// that hands it to the risk stage (which applies it, or refuses it after a race: the
/// revisions tell which).
#[derive(Serialize)]
struct StatusAfter {
    requested: IncidentState,
    note: Option<String>,
    assignee: Option<String>,
}

/// An audit entry's before or after, as the store keeps it.
fn audit_json<T: Serialize>(value: &T) -> ApiResult<Value> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Comma-separated values of a filter.
fn list(value: &Option<String>) -> Vec<String> {
    value
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Values one filter may list (each becomes a bound SQL parameter).
const MAX_FILTER_VALUES: usize = 100;

pub(super) fn time(name: &str, value: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .as_deref()
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!("`{name}` must be an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

#[derive(Deserialize, Default)]
pub(super) struct IncidentFilters {
    state: Option<String>,
    level: Option<String>,
    grid: Option<String>,
    category: Option<String>,
    owner: Option<String>,
    department: Option<String>,
    /// The districts (comma-separated): the events' `source` without `skynet/`.
    district: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

fn encode_cursor((last_seen, id): &(String, String)) -> String {
    format!("{last_seen}|{id}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> ApiResult<(String, String)> {
    let bad = || ApiError::bad_request("`before` is not a cursor this server gave");
    if !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (last_seen, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((last_seen.to_string(), id.to_string()))
}

/// Narrows a filter to the caller's scope; `None` when the caller asked for nothing they
/// may see.
fn scoped(asked: Vec<String>, own: &Option<String>) -> Option<Vec<String>> {
    match own {
        None => Some(asked),
        Some(own) if asked.is_empty() || asked.contains(own) => Some(vec![own.clone()]),
        Some(_) => None,
    }
}

fn incident_query(caller: &Caller, filters: &IncidentFilters) -> ApiResult<Option<IncidentQuery>> {
    for state in list(&filters.state) {
        if IncidentState::parse(&state).is_none() {
            return Err(ApiError::bad_request(format!(
                "`state` `{state}` is not one of open, acknowledged, dispatched, resolved, verified, rejected, closed"
            )));
        }
    }
    for level in list(&filters.level) {
        if skynet_core::RiskLevel::parse(&level).is_none() {
            return Err(ApiError::bad_request(format!(
                "`level` `{level}` is not one of I, II, III, IV"
            )));
        }
    }
    for (name, value) in [
        ("state", &filters.state),
        ("level", &filters.level),
        ("grid", &filters.grid),
        ("category", &filters.category),
        ("owner", &filters.owner),
        ("department", &filters.department),
        ("district", &filters.district),
    ] {
        if list(value).len() > MAX_FILTER_VALUES {
            return Err(ApiError::bad_request(format!(
                "`{name}` lists more than {MAX_FILTER_VALUES} values"
            )));
        }
    }
    let scope = caller.user.scope();
    let (Some(departments), Some(owners)) = (
        scoped(list(&filters.department), &scope.department),
        scoped(list(&filters.owner), &scope.owner),
    ) else {
        return Ok(None);
    };
    Ok(Some(IncidentQuery {
        states: list(&filters.state),
        levels: list(&filters.level)
            .iter()
            .filter_map(|l| skynet_core::RiskLevel::parse(l))
            .map(|l| l.as_str().to_string())
            .collect(),
        grids: list(&filters.grid),
        categories: list(&filters.category),
        owners,
        departments,
        districts: list(&filters.district),
        since: time("since", &filters.since)?,
        until: time("until", &filters.until)?,
        active_only: false,
        by_deadline: false,
        after: filters.before.as_deref().map(decode_cursor).transpose()?,
        limit: filters.limit.unwrap_or(100).clamp(1, 1000),
    }))
}

pub(super) async fn list_incidents(
    State(console): State<Arc<Console>>,
    caller: Caller,
    filters: Result<Query<IncidentFilters>, QueryRejection>,
) -> ApiResult<Reply<IncidentsPage>> {
    caller.require(Permission::IncidentsRead)?;
    let Query(filters) = query(filters)?;
    let Some(query) = incident_query(&caller, &filters)? else {
        return Ok(Reply(IncidentsPage {
            incidents: Vec::new(),
            next: None,
        }));
    };
    let c = Arc::clone(&console);
    let (page, incidents) = blocking(move || {
        let page = c
            .outbox
            .with(|o| o.query_incidents(&query))
            .map_err(ApiError::internal)?;
        let views = c.incident_views(&page.incidents);
        Ok::<_, ApiError>((page, views))
    })
    .await?;
    Ok(Reply(IncidentsPage {
        incidents,
        next: page.next.as_ref().map(encode_cursor),
    }))
}

/// The incident, when it exists and the caller may see it.
fn load_incident(
    console: &Console,
    caller_scope: &crate::console::Scope,
    id: &str,
) -> ApiResult<Incident> {
    let incident = console
        .outbox
        .with(|o| o.incident(id))
        .map_err(ApiError::internal)?;
    match incident {
        Some(incident) if caller_scope.allows_incident(&incident) => Ok(incident),
        _ => Err(ApiError::not_found("incident")),
    }
}

pub(super) async fn incident_detail(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Reply<IncidentDetail>> {
    caller.require(Permission::IncidentsRead)?;
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let (incident, revisions, notes, changes) = blocking(move || {
        let incident = load_incident(&c, &scope, &id)?;
        let revisions = c
            .outbox
            .with(|o| o.incident_revisions(&id))
            .map_err(ApiError::internal)?;
        let notes = c.store.notes(&id).map_err(ApiError::internal)?;
        let changes = c
            .store
            .audit_entries(&AuditQuery {
                target: Some(id.clone()),
                limit: 1000,
                ..AuditQuery::default()
            })
            .map_err(ApiError::internal)?;
        Ok((incident, revisions, notes, changes))
    })
    .await?;
    let mut timeline = timeline(&revisions, &changes);
    let view = console.incident_view(&incident);
    // An acknowledgement that moved the lifecycle is already the `acknowledged` status entry.
    let acknowledged_in_lifecycle = revisions
        .iter()
        .any(|r| r.state == IncidentState::Acknowledged);
    if let Some(AckView { by, at: Some(at) }) = &view.acknowledged
        && !acknowledged_in_lifecycle
    {
        timeline.push(TimelineEntry::person(*at, "ack", by.clone(), None));
    }
    for note in notes {
        timeline.push(TimelineEntry::person(
            note.at,
            "note",
            Some(note.actor),
            Some(note.text),
        ));
    }
    // In the order of the times as written (RFC 3339 text, as the entries have always been
    // sorted), not as instants.
    timeline.sort_by_cached_key(|entry| entry.at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    // The observations that contributed, per source and category: what explains a fusion.
    let observations = incident.contributions.clone();
    Ok(Reply(IncidentDetail {
        incident: view,
        observations,
        revisions,
        timeline,
    }))
}

/// The state a status-changing audit entry asked for: a person's status change
/// (`requested`), an acknowledgement that moved the lifecycle (`state`), or the case
/// system's event (`status`).
fn requested_state(entry: &AuditEntry) -> Option<IncidentState> {
    let after = entry.after.as_ref()?;
    let state = match (entry.action.as_str(), entry.role.as_str()) {
        ("incident.status", "case_system") => after.get("status"),
        ("incident.status", _) => after.get("requested"),
        // An acknowledgement that left the state as it was (already past open, or the
        // risk stage could not take it) asked for nothing: it must not be credited with a
        // later revision that reaches that state.
        ("incident.ack", _) => after
            .get("state")
            .filter(|state| entry.before.as_ref().and_then(|b| b.get("state")) != Some(*state)),
        _ => None,
    }?;
    IncidentState::parse(state.as_str()?)
}

/// Who made each status revision: the audit entries that asked for a state, oldest first,
/// matched in order to the revisions that reached it (an entry whose request the risk stage
/// refused matches nothing, or is passed over by the next of the same state).
fn actors(revisions: &[Incident], changes: &[AuditEntry]) -> Vec<Option<String>> {
    let mut asked: Vec<(IncidentState, &str)> = changes
        .iter()
        .rev()
        .filter_map(|e| requested_state(e).map(|s| (s, e.actor.as_str())))
        .collect();
    revisions
        .iter()
        .map(|revision| {
            if revision.change != IncidentChange::Feedback {
                return None;
            }
            let at = asked.iter().position(|(s, _)| *s == revision.state)?;
            let actor = asked[at].1.to_string();
            asked.drain(..=at);
            Some(actor)
        })
        .collect()
}

/// The system's entries: one for each revision that changed the state or the level, or
/// brought feedback from the case system.
fn timeline(revisions: &[Incident], changes: &[AuditEntry]) -> Vec<TimelineEntry> {
    let actors = actors(revisions, changes);
    let mut entries = Vec::new();
    let mut previous: Option<&Incident> = None;
    for (revision, actor) in revisions.iter().zip(actors) {
        let changed = previous.is_none_or(|p| {
            p.state != revision.state || p.level != revision.level || p.status != revision.status
        });
        if changed {
            let kind = if revision.change == skynet_core::IncidentChange::Feedback {
                "status"
            } else {
                "system"
            };
            entries.push(TimelineEntry {
                at: if kind == "status" {
                    revision
                        .last_seen
                        .max(previous.map_or(revision.last_seen, |p| p.last_seen))
                } else {
                    revision.last_seen
                },
                kind,
                actor,
                assignee: revision.assignee.clone(),
                text: revision.note.clone(),
                state: Some(revision.state),
                level: Some(revision.level),
                revision: Some(revision.revision),
                change: Some(revision.change),
            });
        }
        previous = Some(revision);
    }
    entries
}

/// Why an acknowledgement's transaction was rolled back: an error, or the risk stage could
/// not take the lifecycle move (then it is made again without it).
enum Refused {
    Api(ApiError),
    HandOver,
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::console::store::StoreError> for Refused {
    fn from(e: crate::console::store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

#[derive(Deserialize, Default)]
pub(super) struct AckRequest {
    note: Option<String>,
}

/// Waits for the revision that applies a status change to the incident (the risk stage
/// committed it), or gives up after [`APPLY_WAIT`] (the stage is busy, or refused it: two
/// people racing, say; the caller then reads the state as it is).
async fn applied(
    mut rx: tokio::sync::broadcast::Receiver<LiveMessage>,
    id: &str,
    status: IncidentState,
) -> bool {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(message) => {
                    if message.applied_status == Some(status)
                        && message.incident.as_ref().is_some_and(|(i, _)| i == id)
                    {
                        return true;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(APPLY_WAIT, wait)
        .await
        .unwrap_or(false)
}

fn check_note(note: &Option<String>) -> ApiResult<()> {
    if note.as_ref().is_some_and(|n| n.chars().count() > 4096) {
        return Err(ApiError::bad_request(
            "`note` is longer than 4096 characters",
        ));
    }
    Ok(())
}

pub(super) async fn acknowledge(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Option<Json<AckRequest>>,
) -> ApiResult<Reply<IncidentReply>> {
    caller.require(Permission::IncidentsAck)?;
    let request = request.map(|Json(r)| r).unwrap_or_default();
    check_note(&request.note)?;
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let before = blocking(move || load_incident(&c, &scope, &lookup)).await?;
    let after_scope = caller.user.scope();
    let rx = console.events.subscribe();
    let c = Arc::clone(&console);
    let target = id.clone();
    let note = request.note.clone();
    // The acknowledgement, its audit entry and its hand-over to the risk stage: one
    // transaction, the hand-over last (see `change_status`).
    let handed = blocking(move || {
        let previous = c
            .acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target)
            .cloned();
        let acknowledge = |hand_over: bool| {
            c.store.audited(|| {
                let ack = c.store.acknowledge(&target, &caller.user.name)?;
                // Known before the revision it causes is published, which shows it.
                c.remember_ack(&target, ack.clone());
                let before_json = audit_json(&AckBefore {
                    state: before.state,
                    acknowledged: None,
                })?;
                let after_json = audit_json(&AckAfter {
                    state: if hand_over {
                        IncidentState::Acknowledged
                    } else {
                        before.state
                    },
                    acknowledged: Some(AckView {
                        by: Some(ack.by.clone()),
                        at: Some(ack.at),
                    }),
                    note: note.clone(),
                })?;
                let entry =
                    caller.entry("incident.ack", &target, Some(before_json), Some(after_json));
                c.store.record(&entry)?;
                if hand_over {
                    let status = CaseStatus {
                        incident: target.clone(),
                        status: IncidentState::Acknowledged,
                        department: None,
                        assignee: Some(caller.user.name.clone()),
                        note: note.clone(),
                        at: Utc::now(),
                    };
                    c.submit_status(status).map_err(|e| {
                        tracing::warn!(incident = %target, error = %e, "acknowledged in the console only");
                        Refused::HandOver
                    })?;
                }
                Ok::<_, Refused>(((), None))
            })
        };
        // An open incident moves to acknowledged in its lifecycle too, as the case system's
        // acknowledgement would move it; one already past it keeps its state. When the risk
        // stage cannot take it, the acknowledgement is kept in the console only.
        let wanted = before.state == IncidentState::Open;
        let done = match acknowledge(wanted) {
            Err(Refused::HandOver) => acknowledge(false).map(|()| false),
            other => other.map(|()| wanted),
        };
        if done.is_err() {
            // Not kept: the console forgets it too.
            let mut acks = c.acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match previous {
                Some(ack) => acks.insert(target.clone(), ack),
                None => acks.remove(&target),
            };
        }
        done.map_err(|e| match e {
            Refused::Api(e) => e,
            Refused::HandOver => ApiError::internal("the acknowledgement could not be kept"),
        })
    })
    .await?;
    let moved = handed && applied(rx, &id, IncidentState::Acknowledged).await;
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let after = blocking(move || load_incident(&c, &after_scope, &lookup)).await?;
    if !moved {
        // No new revision carries the acknowledgement: tell the other browsers directly.
        let _ = console.events.send(console.incident_message(&after));
    }
    Ok(Reply(IncidentReply {
        incident: console.incident_view(&after),
    }))
}

#[derive(Deserialize)]
pub(super) struct NoteRequest {
    text: String,
}

pub(super) async fn add_note(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<NoteRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Reply<NoteReply>)> {
    caller.require(Permission::IncidentsNote)?;
    let request = body(request)?;
    let text = request.text.trim().to_string();
    if text.is_empty() || text.chars().count() > 4096 {
        return Err(ApiError::bad_request("`text` must be 1 to 4096 characters"));
    }
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let note = blocking(move || {
        load_incident(&c, &scope, &id)?;
        // The note and its audit entry: both, or neither.
        c.store.audited(|| {
            let note = c.store.add_note(&id, &caller.user.name, &text)?;
            let after = audit_json(&NoteAudit { text: &text })?;
            let entry = caller.entry("incident.note", &id, None, Some(after));
            Ok::<_, ApiError>((note, Some(entry)))
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Reply(NoteReply { note })))
}

#[derive(Deserialize)]
pub(super) struct StatusRequest {
    status: String,
    note: Option<String>,
    assignee: Option<String>,
}

/// An assignee named in a status change must be a console user of the incident's
/// department whose scope allows the incident (its owner too): anyone else could not act on
/// it, and a made-up name would stand in the incident's record as if someone had taken it.
fn check_assignee(console: &Console, assignee: &str, incident: &Incident) -> ApiResult<()> {
    let user = console.store.user(assignee).map_err(ApiError::internal)?;
    if user.is_some_and(|u| {
        u.department.as_deref() == Some(incident.department.as_str())
            && u.scope().allows_incident(incident)
    }) {
        return Ok(());
    }
    // The message names what the caller already sees (the incident's department and
    // owner), nothing of the assignee's own scope.
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "assignee",
        format!(
            "`assignee` `{}` is not a console user of department `{}` who may see incident {} (owner `{}`)",
            assignee.escape_debug(),
            incident.department,
            incident.id,
            incident.owner.as_str()
        ),
    ))
}

pub(super) async fn change_status(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<StatusRequest>, JsonRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::IncidentsStatus)?;
    let request = body(request)?;
    check_note(&request.note)?;
    let status = IncidentState::parse(&request.status)
        .filter(|s| skynet_core::CASE_STATUSES.contains(s))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`status` `{}` is not one of acknowledged, dispatched, resolved, verified, rejected",
                request.status
            ))
        })?;
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let assignee = request.assignee.clone();
    let before = blocking(move || {
        let before = load_incident(&c, &scope, &lookup)?;
        if let Some(assignee) = &assignee {
            check_assignee(&c, assignee, &before)?;
        }
        Ok(before)
    })
    .await?;
    if !before.state.may_become(status) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "transition",
            format!(
                "incident {id} is {}; it cannot become {}",
                before.state.as_str(),
                status.as_str()
            ),
        ));
    }
    let case_status = CaseStatus {
        incident: id.clone(),
        status,
        department: None,
        assignee: request
            .assignee
            .clone()
            .or_else(|| Some(caller.user.name.clone())),
        note: request.note.clone(),
        at: Utc::now(),
    };
    case_status.validate().map_err(ApiError::bad_request)?;
    let after_scope = caller.user.scope();
    let rx = console.events.subscribe();
    let c = Arc::clone(&console);
    let target = id.clone();
    // Decided here, applied by the risk stage: the audit entry is written first in the
    // transaction that hands the change over, and the hand-over is its last step. An entry
    // that cannot be written hands nothing over (500); a change that cannot be handed over
    // (503) rolls its entry back. Whether the risk stage then applied it (or refused it after
    // a race) is the answer's 200 or 202, and the revisions.
    blocking(move || {
        c.store.audited(|| {
            let before_json = audit_json(&StatusBefore {
                state: before.state,
            })?;
            let after_json = audit_json(&StatusAfter {
                requested: status,
                note: request.note,
                assignee: request.assignee,
            })?;
            let entry = caller.entry(
                "incident.status",
                &target,
                Some(before_json),
                Some(after_json),
            );
            c.store.record(&entry)?;
            c.submit_status(case_status).map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the status change cannot be applied now: {e}"),
                )
            })?;
            Ok::<_, ApiError>(((), None))
        })
    })
    .await?;
    let waited = applied(rx, &id, status).await;
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let after = blocking(move || load_incident(&c, &after_scope, &lookup)).await?;
    let done = waited || after.state == status;
    let code = if done {
        StatusCode::OK
    } else {
        // Taken, but not applied yet (or refused by the risk stage after a race): the live
        // stream brings the revision if it comes.
        StatusCode::ACCEPTED
    };
    Ok((
        code,
        Reply(IncidentReply {
            incident: console.incident_view(&after),
        }),
    )
        .into_response())
}

/// Letters, digits, `.`, `_`, `-`: an id or a file name that cannot leave its directory.
pub(super) fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// The part of an evidence file a `Range` header asks for (RFC 9110, one `bytes` range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// The whole file: no header, or one this route answers whole (several ranges, another
    /// unit, a malformed one: a server may ignore those).
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    /// No byte of the file is in it: 416.
    Unsatisfiable,
}

fn byte_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `bytes=-n`: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part(len.saturating_sub(n), len - 1)
            }
        }
        // `bytes=a-`: from a to the end.
        (false, Some(a), None) if last.is_empty() => {
            if a >= len {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part(a, len - 1)
            }
        }
        // `bytes=a-b`.
        (false, Some(a), Some(b)) if a <= b => {
            if a >= len {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part(a, b.min(len - 1))
            }
        }
        _ => ByteRange::Whole,
    }
}

/// Bytes read from an evidence file per chunk of the answer: a clip is never read whole.
const EVIDENCE_CHUNK: usize = 64 * 1024;

/// `GET /api/v1/evidence/{incident}/{file}`: an annotated JPEG or an MP4 event clip, whole or
/// one byte range of it (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`: 206 with
/// `Content-Range`; a range past the end: 416), so that a `<video>` can seek in a clip.
pub(super) async fn evidence_file(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path((incident, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::IncidentsRead)?;
    let content_type = if file.ends_with(".jpg") {
        "image/jpeg"
    } else if file.ends_with(".mp4") {
        "video/mp4"
    } else {
        return Err(ApiError::not_found("evidence file"));
    };
    if !safe_segment(&incident) || !safe_segment(&file) {
        return Err(ApiError::not_found("evidence file"));
    }
    let dir = console
        .evidence_dir
        .clone()
        .ok_or_else(|| ApiError::not_found("evidence file"))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let (opened, len, part) = blocking(move || {
        load_incident(&c, &scope, &incident)?;
        let mut opened = std::fs::File::open(dir.join(&incident).join(&file))
            .map_err(|_| ApiError::not_found("evidence file"))?;
        let len = opened
            .metadata()
            .map_err(|_| ApiError::not_found("evidence file"))?
            .len();
        let part = byte_range(range.as_deref(), len);
        if part == ByteRange::Unsatisfiable {
            return Ok((None, len, part));
        }
        if let ByteRange::Part(first, _) = part {
            opened
                .seek(SeekFrom::Start(first))
                .map_err(ApiError::internal)?;
        }
        // Who looked at which evidence, from where: one row per image or clip part served
        // (the console shows a few per incident opened; a player asks for a few parts of a
        // clip). No entry, no bytes.
        let target = format!("{incident}/{file}");
        c.store
            .record(&caller.entry("evidence.read", &target, None, None))
            .map_err(ApiError::internal)?;
        Ok((Some(opened), len, part))
    })
    .await?;
    let Some(opened) = opened else {
        let mut response = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the file has {len} bytes"),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return Ok(response);
    };
    let (status, count, content_range) = match part {
        ByteRange::Part(first, last) => (
            StatusCode::PARTIAL_CONTENT,
            last - first + 1,
            Some(format!("bytes {first}-{last}/{len}")),
        ),
        _ => (StatusCode::OK, len, None),
    };
    let reader = tokio::fs::File::from_std(opened).take(count);
    let stream = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut chunk = vec![0; EVIDENCE_CHUNK];
        match reader.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(chunk), Some(reader)))
            }
            // The answer ends there (its length falls short of Content-Length).
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store");
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    response
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_header_gives_one_part_the_whole_file_or_none() {
        use ByteRange::{Part, Unsatisfiable, Whole};
        let cases = [
            (None, 100, Whole),
            (Some("bytes=0-9"), 100, Part(0, 9)),
            (Some("bytes=10-"), 100, Part(10, 99)),
            (Some("bytes=-10"), 100, Part(90, 99)),
            (Some("bytes=-1000"), 100, Part(0, 99)),
            (Some("bytes=90-1000"), 100, Part(90, 99)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=200-300"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            // Answered whole: several ranges, another unit, malformed or reversed ones.
            (Some("bytes=0-1,5-6"), 100, Whole),
            (Some("items=0-1"), 100, Whole),
            (Some("bytes=a-b"), 100, Whole),
            (Some("bytes=9-1"), 100, Whole),
            (Some("bytes=+1-2"), 100, Whole),
            (Some("bytes=-"), 100, Whole),
        ];
        for (header, len, expected) in cases {
            assert_eq!(byte_range(header, len), expected, "{header:?} of {len}");
        }
    }

    fn revision(state: &str, change: &str) -> Incident {
        serde_json::from_value(serde_json::json!({
            "id": "inc-1", "revision": 1, "status": "opened", "state": state, "change": change,
            "category": "gas_leak", "level": "II", "level_colour": "orange", "risk_score": 0.7,
            "confidence": 0.9, "grid": "G-1", "department": "emergency",
            "deadlines": {}, "owner": "police",
            "first_seen": "2026-11-27T10:00:00Z", "last_seen": "2026-11-27T10:00:00Z",
            "observations": 1, "contributions": [], "detections": [],
            "rule": {"name": "r", "kind": "threshold"}
        }))
        .unwrap()
    }

    fn entry(id: i64, actor: &str, role: &str, action: &str, after: Value) -> AuditEntry {
        AuditEntry {
            id,
            at: Utc::now(),
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            target: "inc-1".into(),
            before: None,
            after: Some(after),
            client: None,
            hash: None,
        }
    }

    #[test]
    fn each_status_revision_is_credited_to_whoever_asked_for_it() {
        let revisions = [
            revision("open", "opened"),
            revision("acknowledged", "feedback"),
            revision("dispatched", "feedback"),
            revision("resolved", "feedback"),
        ];
        // Newest first, as the audit log reads; one request the risk stage refused.
        let changes = [
            entry(
                5,
                "case-system",
                "case_system",
                "incident.status",
                serde_json::json!({"status": "resolved"}),
            ),
            entry(
                4,
                "insp",
                "inspector",
                "incident.status",
                serde_json::json!({"requested": "dispatched", "assignee": "insp-b"}),
            ),
            entry(
                3,
                "insp-b",
                "inspector",
                "incident.status",
                serde_json::json!({"requested": "verified"}),
            ),
            entry(
                2,
                "op",
                "operator",
                "incident.note",
                serde_json::json!({"text": "x"}),
            ),
            entry(
                1,
                "op",
                "operator",
                "incident.ack",
                serde_json::json!({"state": "acknowledged"}),
            ),
        ];
        let actors = actors(&revisions, &changes);
        assert_eq!(
            actors,
            [
                None,
                Some("op".into()),
                Some("insp".into()),
                Some("case-system".into())
            ]
        );
        // An acknowledgement that left the state where it was (dispatched) asked for
        // nothing: the dispatched revision stays the inspector's.
        let mut changes = changes.to_vec();
        let mut idle_ack = entry(
            3,
            "op-2",
            "operator",
            "incident.ack",
            serde_json::json!({"state": "dispatched"}),
        );
        idle_ack.before = Some(serde_json::json!({"state": "dispatched"}));
        changes.insert(2, idle_ack);
        let actors = self::actors(&revisions, &changes);
        assert_eq!(
            actors,
            [
                None,
                Some("op".into()),
                Some("insp".into()),
                Some("case-system".into())
            ]
        );
        let timeline = timeline(&revisions, &changes);
        assert_eq!(timeline[2].actor.as_deref(), Some("insp"));
    }
}
