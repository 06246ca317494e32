//! Serve stage: what operators, supervisors and engineers reach over HTTP.
//!
//! - `/metrics`: Prometheus text.
//! - `/healthz`: 200 while the process is alive and serving (a liveness probe).
//! - `/readyz`: 200 when every component is up (or has finished its work), else 503; the
//!   JSON body lists every component with its state and, when it is not up, why. Its
//!   `status` is `ready`, `not_ready`, or `degraded`: every component works but one shows
//!   the detail `degraded` (the outbox's disk below `[outbox] min_free_mb`). Degraded is
//!   still 200: the node takes and stores data, and taking it out of rotation would stop
//!   intake on every node sharing the volume; the body and `skynet_disk_free_bytes` carry
//!   the alarm.
//!
//! - `/platforms`: `{"platforms": [...]}`, one JSON report per video platform the pipeline
//!   registered in [`PlatformReports`] (`skynet platforms list` reads it); this crate does
//!   not look inside them.
//!
//! With `[metrics] auth_token`, `/metrics`, `/readyz` and `/platforms` need `Authorization:
//! Bearer <token>` (401 without); `/healthz` stays open for liveness probes.
//!
//! The people's console (the API under `/api/v1` and the web console at `/`) is served on a
//! listener of its own, `[api] listen`: see [`console`]. Both listeners run the accept loop
//! of [`listener`]: header and idle timeouts, a connection cap, optional TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use skynet_core::Health;

pub mod console;
pub mod listener;

pub use listener::{Limits, Tls, serve_router};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("metrics recorder: {0}")]
    Recorder(String),
    #[error("HTTP endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP endpoint stopped: {0}")]
    Serve(#[source] std::io::Error),
    /// `[api] tls_cert` or `tls_key` cannot be used; names the file, never its content.
    #[error("TLS file {}: {message}", path.display())]
    Tls {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Latency buckets for inference and end-to-end timings, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide metrics recorder once and returns its handle (the same handle
/// on every later call, from any thread). Metrics recorded before this call are lost.
pub fn install_metrics() -> Result<PrometheusHandle, ServeError> {
    // Held across the install, so two threads starting at once get the same recorder.
    let mut installed = RECORDER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| ServeError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| ServeError::Recorder(e.to_string()))?;
    *installed = Some(handle.clone());
    describe_metrics();
    Ok(handle)
}

/// One platform's report for `/platforms`, made when it is asked for.
pub type PlatformReport = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What `/platforms` lists: the reports the pipeline registers, one per platform, in the
/// order registered. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct PlatformReports(Arc<Mutex<Registered>>);

/// The registered reports, by platform id.
type Registered = Vec<(String, Arc<PlatformReport>)>;

impl std::fmt::Debug for PlatformReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformReports")
            .field("registered", &self.lock().len())
            .finish()
    }
}

impl PlatformReports {
    /// Adds platform `id`'s report to `/platforms`, in place of one registered before under
    /// that id (a pipeline run again on the same services).
    pub fn register(&self, id: impl Into<String>, report: PlatformReport) {
        let id = id.into();
        let mut reports = self.lock();
        match reports.iter_mut().find(|(known, _)| *known == id) {
            Some(slot) => slot.1 = Arc::new(report),
            None => reports.push((id, Arc::new(report))),
        }
    }

    /// Every registered report, made now.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        // (Made outside the lock: a report may take its own locks.)
        let reports: Vec<Arc<PlatformReport>> =
            self.lock().iter().map(|(_, r)| Arc::clone(r)).collect();
        reports.iter().map(|report| report()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
    platforms: PlatformReports,
}

/// The routes, for serving or for tests.
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    router_with_token(metrics, health, None)
}

/// The routes; with `auth_token`, `/metrics`, `/readyz` and `/platforms` need it as a
/// bearer token.
pub fn router_with_token(
    metrics: PrometheusHandle,
    health: Health,
    auth_token: Option<skynet_core::Secret>,
) -> Router<()> {
    ops_router(metrics, health, PlatformReports::default(), auth_token)
}

/// [`router_with_token`], with the platforms `/platforms` lists.
pub fn ops_router(
    metrics: PrometheusHandle,
    health: Health,
    platforms: PlatformReports,
    auth_token: Option<skynet_core::Secret>,
) -> Router<()> {
    let guarded = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/readyz", get(readyz))
        .route("/platforms", get(platforms_route));
    let guarded = match auth_token {
        Some(token) => guarded.layer(axum::middleware::from_fn_with_state(
            Arc::new(digest(token.expose().as_bytes())),
            require_token,
        )),
        None => guarded,
    };
    // Added after the layer: liveness probes need no token.
    guarded
        .route("/healthz", get(healthz))
        .with_state(AppState {
            metrics,
            health,
            platforms,
        })
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// `Authorization: Bearer <token>` against `[metrics] auth_token`. Both sides are hashed
/// first and the digests compared without an early exit, so the time taken says nothing
/// about how much of a guess was right (nor the token's length).
async fn require_token(
    State(expected): State<Arc<[u8; 32]>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| digest(token.trim().as_bytes()));
    let same = presented.is_some_and(|presented| {
        presented
            .iter()
            .zip(expected.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    });
    if same {
        return next.run(request).await;
    }
    metrics::counter!("skynet_metrics_unauthorized_total").increment(1);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "send `Authorization: Bearer <[metrics] auth_token>`\n",
    )
        .into_response()
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

/// What `/readyz` answers: the health report with its one-word `status`.
#[derive(serde::Serialize)]
struct Readiness {
    status: &'static str,
    #[serde(flatten)]
    report: skynet_core::HealthReport,
}

/// The component detail that makes a ready process `degraded` (see the module doc).
const DEGRADED: &str = "degraded";

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let report = state.health.report();
    let (code, status) = if !report.ready {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    } else if report
        .components
        .iter()
        .any(|c| c.detail.as_deref() == Some(DEGRADED))
    {
        (StatusCode::OK, DEGRADED)
    } else {
        (StatusCode::OK, "ready")
    };
    (code, axum::Json(Readiness { status, report }))
}

/// `/platforms`: every registered platform's report, made now.
async fn platforms_route(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "platforms": state.platforms.reports() }))
}

/// Binds `listen` now, so a taken port fails at start-up with a clear error.
pub fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let listener = std::net::TcpListener::bind(listen).map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    Ok(listener)
}

/// Serves the routes on `listener` until `shutdown` completes, with the metrics listener's
/// [`Limits`]. With `auth_token`, `/metrics` and `/readyz` need it. Runs on the I/O runtime.
///
/// Bound to one address (loopback, or a given one), every route answers only the default
/// `Host` values of that address, as the console's do (421 otherwise): a DNS-rebinding page
/// names its own host. Bound to every address (0.0.0.0, ::), no `Host` is checked: the
/// names it is reached by (a pod's IP in a kubelet probe or a Prometheus scrape, a Service
/// name) cannot be listed here; a warning says so when no `auth_token` guards it.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    auth_token: Option<skynet_core::Secret>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_ops(
        listener,
        metrics,
        health,
        PlatformReports::default(),
        auth_token,
        shutdown,
    )
    .await
}

/// [`serve`], with the platforms `/platforms` lists.
pub async fn serve_ops(
    listener: std::net::TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    platforms: PlatformReports,
    auth_token: Option<skynet_core::Secret>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Serve)?;
    let bound = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(addr = %bound, token = auth_token.is_some(), "serving /metrics, /healthz, /readyz and /platforms");
    let unspecified = bound.ip().is_unspecified();
    if unspecified && auth_token.is_none() {
        tracing::warn!(addr = %bound, "the metrics listener is on every address with no [metrics] auth_token: any Host is answered, so a DNS-rebinding page can read /metrics and /readyz; set auth_token or listen on one address");
    }
    let app = ops_router(metrics, health, platforms, auth_token);
    let app = if unspecified {
        app
    } else {
        // The console's default list for this address (localhost, 127.0.0.1, [::1] and the
        // address itself, with and without the port).
        let hosts = console::AllowedHosts::new(&console::ApiConfig::local(bound), bound.port());
        app.layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            console::check_host,
        ))
    };
    serve_router(listener, app, Limits::metrics(), None, shutdown).await
}

/// Loads `[api] tls_cert` and `tls_key` when set: call at start-up, so a bad file stops the
/// start with an error that names it.
pub fn console_tls(config: &console::ApiConfig) -> Result<Option<Tls>, ServeError> {
    config
        .tls
        .as_ref()
        .map(|files| Tls::load(&files.cert, &files.key))
        .transpose()
}

/// Serves the console on `listener` until `shutdown` completes, over TLS when `tls` is
/// given, with `[api]`'s limits and `Host` allow-list. Runs on the I/O runtime.
pub async fn serve_console(
    listener: std::net::TcpListener,
    console: Arc<console::Console>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Serve)?;
    let bound = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(addr = %bound, tls = tls.is_some(), "serving the console at / and its API at /api/v1");
    let limits = Limits::console(console.config());
    let hosts = console::AllowedHosts::new(console.config(), bound.port());
    let app = console::console_router(console)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            console::check_host,
        ))
        .layer(axum::middleware::from_fn(record_request));
    serve_router(listener, app, limits, tls, shutdown).await
}

/// Times every console request, by route (the route's pattern, never its ids).
async fn record_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| {
            if request.uri().path().starts_with("/api/") {
                "unmatched".into()
            } else {
                "static".into()
            }
        });
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("skynet_api_request_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("skynet_api_requests_total", "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

/// Names and explains every metric the pipeline records.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "skynet_api_request_seconds",
        Unit::Seconds,
        "Console API request time, per route pattern."
    );
    describe_counter!(
        "skynet_api_requests_total",
        "Console API requests, per route pattern and HTTP status."
    );
    describe_counter!(
        "skynet_api_errors_total",
        "Console API errors answered, per error code (unauthorized, forbidden, not_found, transition, rate_limited, ...)."
    );
    describe_counter!(
        "skynet_api_logins_total",
        "Console logins, per outcome: ok, failed, rate_limited (slowed by the guessing limits), busy (no password check free in time)."
    );
    describe_counter!(
        "skynet_api_refused_total",
        "Console requests refused before any work, per reason: streams_per_user and streams_total (a live stream past [api] max_streams_per_user or max_streams: 429 with Retry-After), host (a Host header not in [api] hosts: 421)."
    );
    describe_gauge!(
        "skynet_http_connections",
        "Open connections, per listener (console, metrics)."
    );
    describe_counter!(
        "skynet_http_connections_capped_total",
        "Times a listener reached its connection cap ([api] max_connections; 256 for metrics) and stopped accepting until a connection closed, per listener."
    );
    describe_counter!(
        "skynet_http_connections_per_client_capped_total",
        "Connections closed at once because their client address already held [api] max_connections_per_client (64 for metrics) open, per listener. trusted_proxies are exempt."
    );
    describe_counter!(
        "skynet_http_timeouts_total",
        "Connections closed by a timeout, per listener and reason: header (a request head not complete within [api] header_timeout_s), idle (a kept-alive connection silent for connection_idle_s), write (the client read nothing of its answer for connection_idle_s), handshake (TLS)."
    );
    describe_counter!(
        "skynet_metrics_unauthorized_total",
        "Requests to /metrics, /readyz or /platforms without the [metrics] auth_token."
    );
    describe_gauge!(
        "skynet_api_live_clients",
        "Browser tabs connected to the live stream (/api/v1/events)."
    );
    describe_counter!(
        "skynet_api_live_lagged_total",
        "Live messages a slow browser missed (it was told to reload its lists)."
    );
    describe_counter!("skynet_frames_decoded_total", "Frames decoded, per camera.");
    describe_counter!(
        "skynet_frames_invalid_total",
        "Decoded frames skipped as malformed, per camera."
    );
    describe_counter!(
        "skynet_frames_dropped_total",
        "Frames lost, per camera and reason: overload (the oldest dropped for a newer one), invalid (malformed)."
    );
    describe_counter!(
        "skynet_frames_skipped_total",
        "Frames kept from the detector on purpose, per camera and reason: static (motion gating), rate (above the camera's analysis fps)."
    );
    describe_gauge!(
        "skynet_camera_up",
        "1 while a camera's frames flow, else 0."
    );
    describe_gauge!(
        "skynet_camera_state",
        "1 for a camera's current state (starting, running, stalled, retrying, stopped), 0 for the others."
    );
    describe_counter!(
        "skynet_camera_reconnects_total",
        "Reconnection attempts, per camera."
    );
    describe_gauge!(
        "skynet_camera_decoder",
        "1 for the video decoder a camera uses, with whether it is hardware."
    );
    describe_counter!(
        "skynet_camera_events_dropped_total",
        "Camera state-change notifications lost because nobody read them, per camera."
    );
    describe_counter!(
        "skynet_frames_analysed_total",
        "Frames that went through detection, per camera."
    );
    describe_counter!(
        "skynet_frames_late_total",
        "Frames dropped because their event time was not after the camera's last applied frame (out of order, or already applied before a restart), per camera."
    );
    describe_counter!(
        "skynet_frame_gaps_total",
        "Frames missing between two analysed frames of a camera (dropped under overload; frames skipped on purpose are not gaps), per camera."
    );
    describe_counter!(
        "skynet_queue_dropped_total",
        "Items dropped from a full queue (oldest first), per queue and source."
    );
    describe_gauge!(
        "skynet_queue_depth",
        "Items waiting in a stage queue, per queue and source."
    );
    describe_histogram!(
        "skynet_inference_seconds",
        Unit::Seconds,
        "Model inference time per frame, per model."
    );
    describe_histogram!(
        "skynet_inference_batch_size",
        "Images per model call, per model."
    );
    describe_histogram!(
        "skynet_inference_queue_wait_seconds",
        Unit::Seconds,
        "Decode to the model call (the camera's queue and the wait for a batch to fill), per camera."
    );
    describe_gauge!(
        "skynet_execution_provider",
        "1 for the execution provider a model's sessions run on."
    );
    describe_counter!(
        "skynet_frames_inferred_total",
        "Analysed frames the detector ran on, per camera (the others were carried by the tracker)."
    );
    describe_counter!(
        "skynet_detections_filtered_total",
        "Detections a camera dropped, per camera and reason: class (not one its owner looks for), score, area."
    );
    describe_gauge!(
        "skynet_tracks_active",
        "Confirmed tracks in view at a camera's last frame."
    );
    describe_counter!(
        "skynet_tracks_started_total",
        "Tracks confirmed (ids given), per camera."
    );
    describe_counter!(
        "skynet_tracker_rejected_detections_total",
        "Detections the tracker skipped as malformed (NaN or empty box or score), per camera."
    );
    describe_counter!(
        "skynet_line_crossings_total",
        "Crossings of a line_crossing rule's line, per camera, rule and direction (in, out)."
    );
    describe_histogram!(
        "skynet_frame_latency_seconds",
        Unit::Seconds,
        "From decode to rules applied, per camera."
    );
    describe_counter!(
        "skynet_source_errors_total",
        "Camera stream failures, per camera."
    );
    describe_counter!(
        "skynet_source_restarts_total",
        "Camera streams restarted after a failure, per camera."
    );
    describe_counter!(
        "skynet_detect_errors_total",
        "Frames the detector could not process, per camera."
    );
    describe_counter!(
        "skynet_observations_total",
        "Rule hits that became evidence, per camera and rule."
    );
    describe_gauge!(
        "skynet_grid_risk_score",
        "Fused risk score of a grid cell, 0 to 1, decayed to the cell's cameras' event time."
    );
    describe_gauge!("skynet_incidents_open", "Incidents currently open.");
    describe_counter!(
        "skynet_incidents_stored_total",
        "Incident revisions committed to the outbox."
    );
    describe_counter!(
        "skynet_outbox_retries_total",
        "Failed outbox commits that were retried."
    );
    describe_gauge!(
        "skynet_outbox_commit_failing",
        "1 while outbox commits fail and are retried (a full disk, a locked file): intake waits and nothing committed is lost; 0 once a commit succeeds."
    );
    describe_counter!(
        "skynet_outbox_conflicts_total",
        "Events refused because their id was already stored with other content."
    );
    describe_counter!(
        "skynet_incidents_emitted_total",
        "Incident events delivered, per sink."
    );
    describe_counter!(
        "skynet_sink_retries_total",
        "Failed deliveries that will be retried, per sink."
    );
    describe_gauge!(
        "skynet_outbox_pending",
        "Events in the outbox a sink has not acknowledged, per sink."
    );
    describe_gauge!(
        "skynet_component_up",
        "1 while a component works (or has finished its work), 0 while it starts, retries or is down; per component and kind (source, stage, sink)."
    );
}

#[cfg(test)]
mod readyz_tests {
    use super::*;
    use tower::ServiceExt;

    async fn readyz_of(health: &Health) -> (StatusCode, serde_json::Value) {
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let response = router(metrics, health.clone())
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_low_disk_is_degraded_with_200_and_a_component_down_is_503() {
        let health = Health::new();
        let disk = health.register("disk", "storage");
        disk.up();
        let (code, body) = readyz_of(&health).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (StatusCode::OK, Some("ready"))
        );
        disk.set(skynet_core::ComponentState::Up, Some("10 MiB free".into()));
        disk.describe(Some(DEGRADED), None);
        let (code, body) = readyz_of(&health).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (StatusCode::OK, Some("degraded"))
        );
        assert_eq!(body["ready"], true);
        assert_eq!(body["components"][0]["detail"], "degraded");
        health.register("sink", "sink").retrying("down");
        let (code, body) = readyz_of(&health).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
        );
    }

    async fn get(router: Router, path: &str, token: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut request = axum::http::Request::get(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn platforms_lists_the_registered_reports_made_when_asked_and_needs_the_token() {
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let platforms = PlatformReports::default();
        let app = |token: Option<&str>| {
            ops_router(
                metrics.clone(),
                Health::new(),
                platforms.clone(),
                token.map(skynet_core::Secret::from),
            )
        };
        let (code, body) = get(app(None), "/platforms", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({ "platforms": [] })
        );
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&asked);
        // Registered twice under one id (a pipeline run again): listed once, the last.
        platforms.register(
            "34020000002000000001",
            Box::new(|| serde_json::json!({ "id": "34020000002000000001", "asked": 0 })),
        );
        platforms.register(
            "34020000002000000001",
            Box::new(move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                serde_json::json!({ "id": "34020000002000000001", "asked": n })
            }),
        );
        let (code, body) = get(app(Some("s3cret")), "/platforms", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
        let (code, _) = get(app(Some("s3cret")), "/platforms", Some("wrong")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 0);
        let (code, body) = get(app(Some("s3cret")), "/platforms", Some("s3cret")).await;
        assert_eq!(code, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["platforms"][0]["id"], "34020000002000000001");
        assert_eq!(body["platforms"][0]["asked"], 1);
        let (_, body) = get(app(None), "/platforms", None).await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["platforms"][0]["asked"], 2);
        assert_eq!(body["platforms"].as_array().unwrap().len(), 1);
    }

    /// A `[[platforms]]` entry is a component like a camera: waiting for its lower platform
    /// (or with one offline) is 503 with the reason; online, 200.
    #[tokio::test]
    async fn a_platform_is_a_component_with_its_reason() {
        let health = Health::new();
        let platform = health.register("platform 34020000002000000001", "platform");
        platform.set(
            skynet_core::ComponentState::Starting,
            Some("no lower platform registered yet".into()),
        );
        let (code, body) = readyz_of(&health).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let entry = &body["components"][0];
        assert_eq!(entry["component"], "platform 34020000002000000001");
        assert_eq!(entry["kind"], "platform");
        assert_eq!(entry["state"], "starting");
        assert_eq!(entry["reason"], "no lower platform registered yet");
        platform.retrying("lower platform 34020000002000000002 offline: keepalive timeout");
        let (code, body) = readyz_of(&health).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["components"][0]["state"], "retrying");
        platform.up();
        let (code, _) = readyz_of(&health).await;
        assert_eq!(code, StatusCode::OK);
    }
}
