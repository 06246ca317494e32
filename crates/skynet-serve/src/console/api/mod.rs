//! The routes under `/api/v1`, and the web console's files at `/`.
//!
//! Every route but `/login` and `/openapi.json` needs a caller: a bearer token
//! (`Authorization: Bearer …`) or the session cookie a login sets. Each checks the caller's
//! permission (403 when missing) and, for incidents, the caller's scope (an inspector's
//! department; out-of-scope incidents answer 404, so their existence does not leak). Every
//! change is written to the audit log. Errors are JSON: `{"error": code, "message": text}`.
//!
//! One job per file: [`session`] (who is calling), [`incidents`], [`sources`] (grid cells,
//! cameras, sensors, tickets), [`patrols`] (patrol rounds, issue 26), [`admin`] (users,
//! audit), [`events`] (the live stream), and [`error`] (the JSON plumbing they share). Every body is a typed struct; `openapi.json`
//! is written by hand, and tests/console_api.rs checks every answer against it.

mod admin;
mod error;
mod events;
mod incidents;
mod patrols;
mod session;
mod sources;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use super::live::Console;
use admin::{add_user, audit, list_users};
use error::ApiError;
use events::events;
use incidents::{
    acknowledge, add_note, change_status, evidence_file, incident_detail, list_incidents,
};
use patrols::{patrol_grids, patrol_rounds, patrol_snapshot, patrols};
use session::{login, logout, me};
use sources::{
    camera_frame, camera_live, cameras, grid_history, grids, platforms, sensors, set_thresholds,
    threshold_what_if, tickets,
};

/// Request bodies: login, notes, acknowledgements and status changes are a few fields of
/// text (a note is at most a few thousand characters). Past the limit: 413.
const SMALL_BODY: usize = 16 * 1024;
/// Threshold changes (a score per class) and new users (with a department and owner).
const LARGER_BODY: usize = 64 * 1024;

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
        .route("/cameras/{id}/live.mp4", get(camera_live))
        .route(
            "/cameras/{id}/thresholds",
            put(set_thresholds).layer(DefaultBodyLimit::max(LARGER_BODY)),
        )
        .route(
            "/cameras/{id}/thresholds/what-if",
            post(threshold_what_if).layer(DefaultBodyLimit::max(LARGER_BODY)),
        )
        .route("/patrols", get(patrols))
        .route("/patrols/grids", get(patrol_grids))
        .route("/patrols/{patrol}/rounds", get(patrol_rounds))
        .route(
            "/patrols/{patrol}/rounds/{round}/cameras/{camera}/snapshot",
            get(patrol_snapshot),
        )
        .route("/sensors", get(sensors))
        .route("/platforms", get(platforms))
        .route("/tickets", get(tickets))
        .route("/audit", get(audit))
        .route(
            "/users",
            get(list_users)
                .post(add_user)
                .layer(DefaultBodyLimit::max(LARGER_BODY)),
        )
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
        .layer(axum::middleware::from_fn(guard_changes))
        // The routes above that take a body say otherwise; every other is small JSON.
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        // Outermost: every error leaves as JSON, axum's own rejections included.
        .layer(axum::middleware::map_response(error::json_errors));
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

const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
