//! Incidents: the list and one incident's detail, acknowledgements, notes, status changes
//! made by people, and the evidence images.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skynet_core::{CaseStatus, Contribution, Incident, IncidentChange, IncidentState, RiskLevel};
use skynet_emit::IncidentQuery;

use super::error::{ApiError, ApiResult, Reply, blocking, body, jpeg, query};
use super::session::Caller;
use crate::console::auth::Permission;
use crate::console::live::{Console, LiveMessage};
use crate::console::store::Note;
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
    actor: Option<String>,
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

/// The audit log's after of a status change: what was asked, and where the incident stood
/// when the request answered.
#[derive(Serialize)]
struct StatusAfter {
    requested: IncidentState,
    state: IncidentState,
    applied: bool,
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
    let page = blocking(move || {
        c.outbox
            .with(|o| o.query_incidents(&query))
            .map_err(ApiError::internal)
    })
    .await?;
    let incidents = page
        .incidents
        .iter()
        .map(|i| console.incident_view(i))
        .collect();
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
    let (incident, revisions, notes) = blocking(move || {
        let incident = load_incident(&c, &scope, &id)?;
        let revisions = c
            .outbox
            .with(|o| o.incident_revisions(&id))
            .map_err(ApiError::internal)?;
        let notes = c.store.notes(&id).map_err(ApiError::internal)?;
        Ok((incident, revisions, notes))
    })
    .await?;
    let mut timeline = timeline(&revisions);
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

/// The system's entries: one for each revision that changed the state or the level, or
/// brought feedback from the case system.
fn timeline(revisions: &[Incident]) -> Vec<TimelineEntry> {
    let mut entries = Vec::new();
    let mut previous: Option<&Incident> = None;
    for revision in revisions {
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
                actor: revision.assignee.clone(),
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
    let c = Arc::clone(&console);
    let (actor, target) = (caller.user.name.clone(), id.clone());
    let ack = blocking(move || {
        c.store
            .acknowledge(&target, &actor)
            .map_err(ApiError::internal)
    })
    .await?;
    console.remember_ack(&id, ack.clone());
    // An open incident moves to acknowledged in its lifecycle too, as the case system's
    // acknowledgement would move it; one already past it keeps its state.
    let mut moved = false;
    if before.state == IncidentState::Open {
        let rx = console.events.subscribe();
        let status = CaseStatus {
            incident: id.clone(),
            status: IncidentState::Acknowledged,
            department: None,
            assignee: Some(caller.user.name.clone()),
            note: request.note.clone(),
            at: Utc::now(),
        };
        match console.submit_status(status) {
            Ok(()) => moved = applied(rx, &id, IncidentState::Acknowledged).await,
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "acknowledged in the console only")
            }
        }
    }
    let c = Arc::clone(&console);
    let (lookup, scope) = (id.clone(), caller.user.scope());
    let after = blocking(move || load_incident(&c, &scope, &lookup)).await?;
    if !moved {
        // No new revision carries the acknowledgement: tell the other browsers directly.
        let _ = console.events.send(console.incident_message(&after));
    }
    let view = console.incident_view(&after);
    let c = Arc::clone(&console);
    let before_json = audit_json(&AckBefore {
        state: before.state,
        acknowledged: None,
    })?;
    let after_json = audit_json(&AckAfter {
        state: after.state,
        acknowledged: view.acknowledged.clone(),
        note: request.note,
    })?;
    blocking(move || {
        caller.audit(
            &c,
            "incident.ack",
            &id,
            Some(&before_json),
            Some(&after_json),
        )
    })
    .await?;
    Ok(Reply(IncidentReply { incident: view }))
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
        let note = c
            .store
            .add_note(&id, &caller.user.name, &text)
            .map_err(ApiError::internal)?;
        let after = audit_json(&NoteAudit { text: &text })?;
        caller.audit(&c, "incident.note", &id, None, Some(&after))?;
        Ok(note)
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
    let before = blocking(move || load_incident(&c, &scope, &lookup)).await?;
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
    let rx = console.events.subscribe();
    console.submit_status(case_status).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the status change cannot be applied now: {e}"),
        )
    })?;
    let waited = applied(rx, &id, status).await;
    let c = Arc::clone(&console);
    let (lookup, scope) = (id.clone(), caller.user.scope());
    let after = blocking(move || load_incident(&c, &scope, &lookup)).await?;
    let done = waited || after.state == status;
    let c = Arc::clone(&console);
    let before_json = audit_json(&StatusBefore {
        state: before.state,
    })?;
    let after_json = audit_json(&StatusAfter {
        requested: status,
        state: after.state,
        applied: done,
        note: request.note,
        assignee: request.assignee,
    })?;
    let target = id.clone();
    blocking(move || {
        caller.audit(
            &c,
            "incident.status",
            &target,
            Some(&before_json),
            Some(&after_json),
        )
    })
    .await?;
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
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

pub(super) async fn evidence_file(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path((incident, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Permission::IncidentsRead)?;
    if !safe_segment(&incident) || !safe_segment(&file) || !file.ends_with(".jpg") {
        return Err(ApiError::not_found("evidence file"));
    }
    let dir = console
        .evidence_dir
        .clone()
        .ok_or_else(|| ApiError::not_found("evidence file"))?;
    let scope = caller.user.scope();
    let c = Arc::clone(&console);
    let bytes = blocking(move || {
        load_incident(&c, &scope, &incident)?;
        std::fs::read(dir.join(&incident).join(&file))
            .map_err(|_| ApiError::not_found("evidence file"))
    })
    .await?;
    Ok(jpeg(bytes))
}
