//! The routes under `/api/v1`, and the web console's files at `/`.
//!
//! Every route but `/login` and `/openapi.json` needs a caller: a bearer token
//! (`Authorization: Bearer …`) or the session cookie a login sets. Each checks the caller's
//! permission (403 when missing) and, for incidents, the caller's scope (an inspector's
//! department; out-of-scope incidents answer 404, so their existence does not leak). Every
//! change is written to the audit log. Errors are JSON: `{"error": code, "message": text}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use skynet_core::{CaseStatus, Incident, IncidentState};
use skynet_emit::IncidentQuery;

use super::auth::{Permission, Role, User};
use super::live::{Console, LiveMessage};
use super::store::{AuditQuery, TokenKind};

const SESSION_COOKIE: &str = "skynet_session";
/// How long a status change waits for its revision to be committed before answering 202.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The console's routes, for serving or for tests.
pub fn router(console: Arc<Console>) -> Router {
    let api = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/incidents", get(list_incidents))
        .route("/incidents/{id}", get(incident_detail))
        .route("/incidents/{id}/ack", post(acknowledge))
        .route("/incidents/{id}/notes", post(add_note))
        .route("/incidents/{id}/status", post(change_status))
        .route("/evidence/{incident}/{file}", get(evidence_file))
        .route("/grids", get(grids))
        .route("/grids/{id}/history", get(grid_history))
        .route("/cameras", get(cameras))
        .route("/cameras/{id}/frame", get(camera_frame))
        .route("/cameras/{id}/thresholds", put(set_thresholds))
        .route("/sensors", get(sensors))
        .route("/tickets", get(tickets))
        .route("/audit", get(audit))
        .route("/users", get(list_users).post(add_user))
        .route("/events", get(events))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(guard_changes));
    Router::new()
        .nest("/api/v1", api)
        .fallback(super::assets::serve)
        .with_state(console)
}

/// Changes come as JSON from this origin only. A page on another site (or another port of
/// this host) can post a form or a `no-cors` fetch with the browser's cookie, but neither can
/// send `application/json`; and a browser names the page's origin on every such request.
async fn guard_changes(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    let headers = request.headers();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send changes as `Content-Type: application/json` (an empty object when there is nothing to say)",
        )
        .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host);
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "changes are accepted only from the console's own pages",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    fn forbidden(permission: Permission) -> Self {
        let name = serde_json::to_value(permission)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role does not have `{name}`"),
        )
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        // The cause goes to the log; the caller learns only that it failed.
        tracing::error!(error = %error, "console request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; the server log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("skynet_api_errors_total", "code" => self.code).increment(1);
        let mut response = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking database work off the I/O threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// A JSON body, with a JSON error when it is not one.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(format!("the request body: {}", e.body_text())))
}

/// Query parameters, with a JSON error when they do not parse.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<Query<T>> {
    query.map_err(|e| ApiError::bad_request(format!("the query string: {}", e.body_text())))
}

/// The authenticated caller.
pub struct Caller {
    user: User,
    token: String,
}

impl Caller {
    fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.user.may(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(permission))
        }
    }

    fn audit(
        &self,
        console: &Console,
        action: &str,
        target: &str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> ApiResult<()> {
        console
            .store
            .audit(
                &self.user.name,
                self.user.role.as_str(),
                action,
                target,
                before,
                after,
            )
            .map_err(ApiError::internal)
    }
}

fn token_from(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in first: POST /api/v1/login, then send the token as `Authorization: Bearer …` or the session cookie",
            )
        };
        let token = token_from(&parts.headers).ok_or_else(unauthorized)?;
        let console = Arc::clone(console);
        let lookup = token.clone();
        let user = blocking(move || {
            console
                .store
                .user_for_token(&lookup)
                .map_err(ApiError::internal)
        })
        .await?
        .ok_or_else(unauthorized)?;
        Ok(Caller { user, token })
    }
}

fn user_json(user: &User) -> Value {
    json!({
        "name": user.name,
        "role": user.role,
        "department": user.department,
        "owner": user.owner,
        "permissions": user.role.permissions(),
    })
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

/// The peer's address, when the server knows it (tests calling the router directly don't).
struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

async fn login(
    State(console): State<Arc<Console>>,
    Peer(addr): Peer,
    request: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user or wrong password",
        )
    };
    // A name no user can have is counted against the address only, and never stored.
    let name = if super::store::valid_name(&request.username) {
        request.username.clone()
    } else {
        String::new()
    };
    if let Err(wait) = console.limiter.begin(&name, addr) {
        metrics::counter!("skynet_api_logins_total", "result" => "rate_limited").increment(1);
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins; wait before trying again",
        );
        error.retry_after = Some(wait.as_secs().max(1));
        return Err(error);
    }
    if name.is_empty() {
        metrics::counter!("skynet_api_logins_total", "result" => "failed").increment(1);
        return Err(invalid());
    }
    let _permit = tokio::time::timeout(Duration::from_secs(10), console.password_checks.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many logins at once; try again",
            )
        })?;
    let c = Arc::clone(&console);
    let checked = name.clone();
    let user = blocking(move || {
        c.store
            .check_password(&checked, &request.password)
            .map_err(ApiError::internal)
    })
    .await?;
    let Some(user) = user else {
        metrics::counter!("skynet_api_logins_total", "result" => "failed").increment(1);
        // The name tried is kept, never the password.
        let c = Arc::clone(&console);
        let target = addr.map(|a| a.to_string()).unwrap_or_default();
        blocking(move || {
            c.store
                .audit(&name, "", "login.failed", &target, None, None)
                .map_err(ApiError::internal)
        })
        .await?;
        return Err(invalid());
    };
    console.limiter.succeeded(&user.name, addr);
    metrics::counter!("skynet_api_logins_total", "result" => "ok").increment(1);
    let ttl = console.config.session_ttl;
    let c = Arc::clone(&console);
    let u = user.clone();
    let token = blocking(move || {
        let token = c
            .store
            .issue_token(
                &u.name,
                TokenKind::Session,
                None,
                chrono::Duration::from_std(ttl).ok(),
            )
            .map_err(ApiError::internal)?;
        c.store
            .audit(&u.name, u.role.as_str(), "login", &u.name, None, None)
            .map_err(ApiError::internal)?;
        Ok(token)
    })
    .await?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        ttl.as_secs(),
        if console.config.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Json(json!({"token": token, "user": user_json(&user)})).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

async fn logout(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Response> {
    let c = Arc::clone(&console);
    blocking(move || {
        c.store
            .revoke_token(&caller.token)
            .map_err(ApiError::internal)?;
        caller.audit(&c, "logout", &caller.user.name, None, None)
    })
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("skynet_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

async fn me(caller: Caller) -> Json<Value> {
    Json(user_json(&caller.user))
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

fn time(name: &str, value: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
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
struct IncidentFilters {
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

async fn list_incidents(
    State(console): State<Arc<Console>>,
    caller: Caller,
    filters: Result<Query<IncidentFilters>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::IncidentsRead)?;
    let Query(filters) = query(filters)?;
    let Some(query) = incident_query(&caller, &filters)? else {
        return Ok(Json(json!({"incidents": [], "next": null})));
    };
    let c = Arc::clone(&console);
    let page = blocking(move || {
        c.outbox
            .with(|o| o.query_incidents(&query))
            .map_err(ApiError::internal)
    })
    .await?;
    let incidents: Vec<Value> = page
        .incidents
        .iter()
        .map(|i| console.incident_view(i))
        .collect();
    Ok(Json(
        json!({"incidents": incidents, "next": page.next.as_ref().map(encode_cursor)}),
    ))
}

/// The incident, when it exists and the caller may see it.
fn load_incident(console: &Console, caller_scope: &super::Scope, id: &str) -> ApiResult<Incident> {
    let incident = console
        .outbox
        .with(|o| o.incident(id))
        .map_err(ApiError::internal)?;
    match incident {
        Some(incident) if caller_scope.allows_incident(&incident) => Ok(incident),
        _ => Err(ApiError::not_found("incident")),
    }
}

async fn incident_detail(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
    let ack = console.incident_view(&incident)["acknowledged"].clone();
    // An acknowledgement that moved the lifecycle is already the `acknowledged` status entry.
    let acknowledged_in_lifecycle = revisions
        .iter()
        .any(|r| r.state == IncidentState::Acknowledged);
    if let Some(at) = ack
        .get("at")
        .filter(|at| !at.is_null() && !acknowledged_in_lifecycle)
    {
        timeline.push(
            json!({"at": at, "kind": "ack", "actor": ack["by"], "text": null,
            "state": null, "level": null, "revision": null, "change": null}),
        );
    }
    for note in notes {
        timeline.push(
            json!({"at": note.at, "kind": "note", "actor": note.actor, "text": note.text,
            "state": null, "level": null, "revision": null, "change": null}),
        );
    }
    timeline.sort_by(|a, b| a["at"].as_str().cmp(&b["at"].as_str()));
    // The observations that contributed, per source and category: what explains a fusion.
    let observations = incident.contributions.clone();
    Ok(Json(json!({
        "incident": console.incident_view(&incident),
        "observations": observations,
        "revisions": revisions,
        "timeline": timeline,
    })))
}

/// The system's entries: one for each revision that changed the state or the level, or
/// brought feedback from the case system.
fn timeline(revisions: &[Incident]) -> Vec<Value> {
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
            entries.push(json!({
                "at": if kind == "status" { revision.last_seen.max(previous.map_or(revision.last_seen, |p| p.last_seen)) } else { revision.last_seen },
                "kind": kind,
                "actor": revision.assignee,
                "text": revision.note,
                "state": revision.state,
                "level": revision.level,
                "revision": revision.revision,
                "change": revision.change,
            }));
        }
        previous = Some(revision);
    }
    entries
}

#[derive(Deserialize, Default)]
struct AckRequest {
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

async fn acknowledge(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Option<Json<AckRequest>>,
) -> ApiResult<Json<Value>> {
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
    let before_json = json!({"state": before.state, "acknowledged": null});
    let after_json =
        json!({"state": after.state, "acknowledged": view["acknowledged"], "note": request.note});
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
    Ok(Json(json!({"incident": view})))
}

#[derive(Deserialize)]
struct NoteRequest {
    text: String,
}

async fn add_note(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<NoteRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
        caller.audit(&c, "incident.note", &id, None, Some(&json!({"text": text})))?;
        Ok(note)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"note": note}))))
}

#[derive(Deserialize)]
struct StatusRequest {
    status: String,
    note: Option<String>,
    assignee: Option<String>,
}

async fn change_status(
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
    let before_json = json!({"state": before.state});
    // What was asked, and where the incident stood when this answered.
    let after_json = json!({"requested": status, "state": after.state, "applied": done,
        "note": request.note, "assignee": request.assignee});
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
        Json(json!({"incident": console.incident_view(&after)})),
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

fn jpeg(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

async fn evidence_file(
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

async fn grids(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Json<Value>> {
    let c = Arc::clone(&console);
    // Cell levels are the city's; incident counts are the caller's scope's.
    let scope = caller.user.scope();
    let (latest, active) = blocking(move || {
        c.outbox
            .with(|o| {
                Ok((
                    o.latest_grid_risk()?,
                    o.active_incidents_by_grid(
                        scope.department.as_deref(),
                        scope.owner.as_deref(),
                    )?,
                ))
            })
            .map_err(ApiError::internal)
    })
    .await?;
    let sources = caller.user.may(Permission::SourcesRead);
    let cameras: Vec<(String, String)> = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(id, c)| (id.to_string(), c.grid.clone()))
        .collect();
    let sensors: Vec<(String, String)> = console
        .sensors
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(id, s)| (id.clone(), s.grid.clone()))
        .collect();
    let features: Vec<Value> = console
        .grids
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|feature| {
            let mut feature = feature.clone();
            let id = feature["properties"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let risk = latest.iter().find(|r| r.grid.as_str() == id);
            let props = &mut feature["properties"];
            props["level"] = json!(risk.and_then(|r| r.level));
            props["colour"] = json!(risk.and_then(|r| r.level).map(|l| l.colour()));
            props["score"] = json!(risk.map_or(0.0, |r| r.score));
            props["open_incidents"] =
                json!(active.iter().find(|(g, _)| *g == id).map_or(0, |(_, n)| *n));
            // Which devices sit where is for those who may see the sources.
            let in_cell = |devices: &[(String, String)]| -> Value {
                if !sources {
                    return json!([]);
                }
                json!(
                    devices
                        .iter()
                        .filter(|(_, g)| *g == id)
                        .map(|(d, _)| d)
                        .collect::<Vec<_>>()
                )
            };
            props["cameras"] = in_cell(&cameras);
            props["sensors"] = in_cell(&sensors);
            feature["id"] = json!(id);
            feature
        })
        .collect();
    Ok(Json(
        json!({"type": "FeatureCollection", "features": features}),
    ))
}

async fn grid_history(
    State(console): State<Arc<Console>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let known = console
        .grids
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|f| f["properties"]["id"] == id.as_str());
    let c = Arc::clone(&console);
    let lookup = id.clone();
    let history = blocking(move || {
        c.outbox
            .with(|o| o.grid_risk_history(&lookup))
            .map_err(ApiError::internal)
    })
    .await?;
    if !known && history.is_empty() {
        return Err(ApiError::not_found("grid cell"));
    }
    Ok(Json(json!({"grid": id, "history": history})))
}

async fn cameras(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Permission::SourcesRead)?;
    Ok(Json(json!({"cameras": console.camera_views()})))
}

async fn camera_frame(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Permission::SourcesRead)?;
    let frame = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&skynet_core::DeviceId::new(id.as_str()))
        .and_then(|c| c.frame.as_ref().map(|(jpeg, _)| Arc::clone(jpeg)));
    match frame {
        Some(frame) => Ok(jpeg(frame.to_vec())),
        None => Err(ApiError::not_found("frame for this camera yet")),
    }
}

async fn set_thresholds(
    State(console): State<Arc<Console>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Result<Json<std::collections::BTreeMap<String, f32>>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::ThresholdsWrite)?;
    let changes = body(request)?;
    if changes.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one label and its score, like {\"person\": 0.45}",
        ));
    }
    let thresholds = console
        .cameras
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&skynet_core::DeviceId::new(id.as_str()))
        .map(|c| Arc::clone(&c.thresholds))
        .ok_or_else(|| ApiError::not_found("camera"))?;
    let rounded = |scores: std::collections::BTreeMap<String, f32>| -> Value {
        scores
            .into_iter()
            .map(|(label, score)| (label, json!(super::live::round4(score))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let c = Arc::clone(&console);
    let target = id.clone();
    let after = blocking(move || {
        // Applied, saved and audited as one step, one change at a time, so what runs, what
        // a restart applies and what the audit log says never differ.
        let _one_at_a_time = c
            .threshold_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = thresholds
            .set(&changes)
            .map_err(|e| ApiError::bad_request(format!("camera {target}: {e}")))?;
        let saved = c.store.save_thresholds(&target, &changes).and_then(|()| {
            c.store.audit(
                &caller.user.name,
                caller.user.role.as_str(),
                "camera.thresholds",
                &target,
                Some(&rounded(before.clone())),
                Some(&rounded(thresholds.snapshot())),
            )
        });
        if let Err(e) = saved {
            // Not kept, not audited: not applied either.
            let _ = thresholds.set(&before);
            return Err(ApiError::internal(e));
        }
        Ok(rounded(thresholds.snapshot()))
    })
    .await?;
    tracing::info!(camera = %id, thresholds = ?after, "detection thresholds changed from the console");
    Ok(Json(json!({"thresholds": after})))
}

async fn sensors(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Permission::SourcesRead)?;
    Ok(Json(json!({"sensors": console.sensor_views()})))
}

/// The earliest deadline still ahead of the incident: dispatch until dispatched, then
/// resolution.
fn next_deadline(incident: &Incident) -> Option<DateTime<Utc>> {
    let before_dispatch = matches!(
        incident.state,
        IncidentState::Open | IncidentState::Acknowledged
    );
    let dispatch = incident.deadlines.dispatch_by.filter(|_| before_dispatch);
    dispatch.or(incident.deadlines.resolve_by)
}

async fn tickets(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Permission::TicketsRead)?;
    let scope = caller.user.scope();
    let query = IncidentQuery {
        departments: scope.department.into_iter().collect(),
        owners: scope.owner.into_iter().collect(),
        active_only: true,
        // The most urgent first, also when there are more than a page of them.
        by_deadline: true,
        limit: 1000,
        ..IncidentQuery::default()
    };
    let c = Arc::clone(&console);
    let page = blocking(move || {
        c.outbox
            .with(|o| o.query_incidents(&query))
            .map_err(ApiError::internal)
    })
    .await?;
    let mut incidents: Vec<&Incident> = page
        .incidents
        .iter()
        .filter(|i| i.status != skynet_core::IncidentStatus::Closed)
        .collect();
    incidents.sort_by_key(|i| next_deadline(i).unwrap_or(DateTime::<Utc>::MAX_UTC));
    let tickets: Vec<Value> = incidents
        .into_iter()
        .map(|i| {
            let mut view = console.incident_view(i);
            view["next_deadline"] = json!(next_deadline(i));
            view
        })
        .collect();
    Ok(Json(json!({"tickets": tickets})))
}

#[derive(Deserialize)]
struct AuditFilters {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(console): State<Arc<Console>>,
    caller: Caller,
    filters: Result<Query<AuditFilters>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::AuditRead)?;
    let Query(filters) = query(filters)?;
    let query = AuditQuery {
        actor: filters.actor,
        action: filters.action,
        target: filters.target,
        since: time("since", &filters.since)?,
        limit: filters.limit.unwrap_or(200),
    };
    let c = Arc::clone(&console);
    let entries =
        blocking(move || c.store.audit_entries(&query).map_err(ApiError::internal)).await?;
    Ok(Json(json!({"entries": entries})))
}

async fn list_users(State(console): State<Arc<Console>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Permission::UsersManage)?;
    let c = Arc::clone(&console);
    let users = blocking(move || c.store.users().map_err(ApiError::internal)).await?;
    Ok(Json(
        json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: String,
    password: String,
    department: Option<String>,
    owner: Option<String>,
}

async fn add_user(
    State(console): State<Arc<Console>>,
    caller: Caller,
    request: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::UsersManage)?;
    let request = body(request)?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`role` `{}` is not one of operator, inspector, engineer, admin",
            request.role
        ))
    })?;
    let user = User {
        name: request.name,
        role,
        department: request.department,
        owner: request.owner,
    };
    let c = Arc::clone(&console);
    let added = user.clone();
    let replaced = blocking(move || {
        let before = c
            .store
            .put_user(&added, &request.password)
            .map_err(|e| match e {
                super::StoreError::Invalid(message) => ApiError::bad_request(message),
                e => ApiError::internal(e),
            })?;
        caller.audit(
            &c,
            "user.put",
            &added.name,
            before.as_ref().map(user_json).as_ref(),
            Some(&user_json(&added)),
        )?;
        Ok(before.is_some())
    })
    .await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({"user": user_json(&user)}))))
}

/// How often a live stream checks that its token still stands (logout, expiry, a removed
/// user or a changed role end the stream).
const RECHECK: Duration = Duration::from_secs(30);

/// One stream per browser tab: incidents (scoped), cell changes and source health.
async fn events(State(console): State<Arc<Console>>, caller: Caller) -> Response {
    let rx = console.events.subscribe();
    metrics::gauge!("skynet_api_live_clients").increment(1.0);
    struct Live {
        console: Arc<Console>,
        rx: tokio::sync::broadcast::Receiver<LiveMessage>,
        user: User,
        token: String,
        hello: Option<Value>,
        recheck: tokio::time::Instant,
    }
    impl Drop for Live {
        fn drop(&mut self) {
            metrics::gauge!("skynet_api_live_clients").decrement(1.0);
        }
    }
    let state = Live {
        console,
        rx,
        hello: Some(json!({"user": user_json(&caller.user)})),
        user: caller.user,
        token: caller.token,
        recheck: tokio::time::Instant::now() + RECHECK,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(hello) = state.hello.take() {
            let event = Event::default().event("hello").data(hello.to_string());
            return Some((Ok::<_, std::convert::Infallible>(event), state));
        }
        loop {
            let received = tokio::select! {
                received = state.rx.recv() => received,
                () = tokio::time::sleep_until(state.recheck) => {
                    let (c, token) = (Arc::clone(&state.console), state.token.clone());
                    let now = blocking(move || c.store.user_for_token(&token).map_err(ApiError::internal)).await;
                    match now {
                        Ok(Some(user)) if user == state.user => {
                            state.recheck = tokio::time::Instant::now() + RECHECK;
                            continue;
                        }
                        // Logged out, expired, removed or changed: the tab logs in again.
                        _ => return None,
                    }
                }
            };
            match received {
                Ok(message) => {
                    if visible(&state.user, &message) {
                        let event = Event::default().event(message.kind).data(&*message.data);
                        return Some((Ok(event), state));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("skynet_api_live_lagged_total").increment(missed);
                    let event = Event::default().event("resync").data("{}");
                    return Some((Ok(event), state));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("ping"),
        )
        .into_response()
}

fn visible(user: &User, message: &LiveMessage) -> bool {
    match message.kind {
        "incident" => {
            user.may(Permission::IncidentsRead)
                && user.scope().allows(
                    message.department.as_deref().unwrap_or_default(),
                    message.owner.as_deref().unwrap_or_default(),
                )
        }
        "source" => user.may(Permission::SourcesRead),
        _ => true,
    }
}

const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
