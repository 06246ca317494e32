//! The console role (`skynet run --role console` with `[cluster] url` and `[api]`): the
//! people's console of a whole cluster, or of a city of districts. No camera, sensor, risk
//! stage or sink runs here. The console is started as on a single node and fed by:
//!
//! - a projection of the incidents stream (`SKYNET_INCIDENTS`, the stream the scorers' NATS
//!   sinks publish to, or in a city the hub's stream that sources every district's): read
//!   from its start on every start, each incident CloudEvent stored in this process's own
//!   state database as a local revision would be (the latest revision of an incident wins,
//!   an older one than held is ignored, an event id already stored changes nothing), cell
//!   level changes alike, and pushed to the browsers once stored;
//! - the cluster's health: the live members of each role (`Membership::view`) and which
//!   node holds each camera's lease (`camera.<id>` in `skynet_leases`), for the Sources view.
//!
//! Status changes and acknowledgements made here are not applied locally (no risk stage
//! runs here): each goes out as a signed `skynet.case_status.v1` event on the `[cases]`
//! subject (`<subject_prefix>.<incident>`), the path the case system's take, which the
//! scorer owning the incident's cell applies; its revision then comes back through the
//! projection, which is what the API waits for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use chrono::Utc;
use futures_util::StreamExt;
use skynet_cluster::{Leases, Role};
use skynet_core::{CASE_STATUS_EVENT_TYPE, CaseStatus, ComponentHealth, RiskEvent, Shutdown};
use skynet_emit::{
    CASE_SIGNATURE_HEADER, CasesSettings, EmitError, GRID_RISK_EVENT_TYPE, INCIDENT_EVENT_TYPE,
    Outbox, OutboxEvent,
};
use skynet_serve::console::{CameraRegistration, ClusterHealth, Console};

use super::cluster::ClusterNode;
use super::{POLL, PipelineError, Services};
use crate::config::PipelineConfig;

/// The incidents stream: the NATS sink's default name, which `configs/city.toml` and
/// `deploy/three-level/` use.
pub(crate) const INCIDENTS_STREAM: &str = "SKYNET_INCIDENTS";

/// The CloudEvent `source` of the status events a console sends. Scorers of a cluster take
/// it besides `[cases] sources` (signed with `[cases] secret` like the case system's).
pub(crate) const CONSOLE_CASE_SOURCE: &str = "skynet-console";

/// Events taken from the stream before they are stored in one transaction.
const BATCH: usize = 256;
/// How long a batch waits for more events once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How long a person's status change may wait for JetStream's ack before the API answers
/// 503 (nothing is applied then: the scorer never saw it, or dedups it when it comes again).
const PUBLISH_WAIT: Duration = Duration::from_secs(5);
/// How often the Sources view's cluster health is read.
const CLUSTER_EVERY: Duration = Duration::from_secs(2);

/// What `--role console` needs of the config before it joins: `[cases]` with a secret. The
/// scorers take a console's status changes only when signed (an unsigned `source` is a claim
/// anyone on the bus can make), so a console without the secret could only fail every change
/// its users make; it refuses to start instead, naming the key and the variable.
pub(crate) fn check_config(config: &PipelineConfig) -> Result<(), PipelineError> {
    let signed = config
        .cases
        .as_ref()
        .and_then(|cases| cases.secret.as_ref())
        .is_some_and(|secret| !secret.is_empty());
    if signed {
        return Ok(());
    }
    Err(PipelineError::Console(
        "--role console needs `[cases] secret`: the scorers take a console's status changes only when signed with it. \
         Set `secret` (or `secret_env`) in [cases], the same on the scorers; deploy/city.toml and configs/city.toml \
         read it from the environment variable SKYNET_CASES_SECRET (`openssl rand -hex 32`)"
            .into(),
    ))
}

/// Runs the console role until `shutdown`.
pub(crate) fn run(
    config: &PipelineConfig,
    services: &Arc<Services>,
    console: Option<Arc<Console>>,
    cluster: ClusterNode,
    shutdown: &Shutdown,
) -> Result<(), PipelineError> {
    let Some(console) = console else {
        return Err(PipelineError::Console(
            "--role console serves the console: the config needs [api]".into(),
        ));
    };
    let runtime = services.runtime();
    let health = services.health.clone();
    register_cameras(config, &console);

    // People's status changes: signed case-status events to the scorers.
    match &config.cases {
        Some(cases) => {
            let sender = CaseStatusSender::start(&runtime, &cluster, config, cases.clone());
            console.connect_status(Box::new(move |status| sender.send(status)));
        }
        None => console.connect_status(Box::new(|_| {
            Err("this console has no [cases]: status changes cannot reach the scorers".into())
        })),
    }

    let projection = runtime.spawn(project(
        cluster.client.clone(),
        Arc::clone(&console),
        config.outbox.clone(),
        health.register("incidents-projection", "stage"),
        shutdown.clone(),
    ));
    let watch = runtime.spawn(watch_cluster(
        cluster.client.clone(),
        config.cluster.clone(),
        cluster.membership.view(Role::Edge),
        cluster.membership.view(Role::Scorer),
        cluster.membership.view(Role::Console),
        cluster.membership.node().to_string(),
        config.cameras.iter().map(|c| c.id.to_string()).collect(),
        Arc::clone(&console),
    ));
    // Retention as on a single node; no sink holds events back here.
    let pruner = super::services::start_pruner(config, &health, Vec::new())?;
    tracing::info!(stream = INCIDENTS_STREAM, cluster = %config.cluster.name, "console role: projecting the cluster's incidents");

    while !shutdown.is_triggered() {
        std::thread::sleep(POLL);
    }
    projection.abort();
    watch.abort();
    console.disconnect_status();
    console.log_audit_head("shutdown");
    pruner.stop();
    cluster.leave();
    Ok(())
}

/// The config's cameras on the Sources view, each with the node running it (no frames or
/// counters here: those are the edge's).
fn register_cameras(config: &PipelineConfig, console: &Console) {
    for camera in &config.cameras {
        let filter = skynet_detect::DetectionFilter::new(
            &camera.id,
            &camera.allowed_classes,
            &config.classes,
            &camera.classes,
            config.detector.threshold,
        );
        console.register_camera(CameraRegistration {
            id: camera.id.clone(),
            grid: camera.grid.to_string(),
            owner: camera.owner,
            thresholds: filter.thresholds(),
        });
    }
}

/// Reads one message of the incidents stream; `None` (counted `invalid`) for anything but
/// an incident or cell-level CloudEvent.
fn read_event(payload: &[u8]) -> Option<OutboxEvent> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.get("type")?.as_str()? {
        INCIDENT_EVENT_TYPE => serde_json::from_value(value)
            .ok()
            .map(OutboxEvent::Incident),
        GRID_RISK_EVENT_TYPE => serde_json::from_value(value)
            .ok()
            .map(OutboxEvent::GridRisk),
        _ => None,
    }
}

fn count(outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("skynet_console_projection_events_total", "outcome" => outcome)
            .increment(n as u64);
    }
}

/// The projection's store: the console's own state database, and the latest cell level
/// revision held per district and cell (districts may share cell ids).
pub(crate) struct Projection {
    outbox: Outbox,
    grids: HashMap<(String, String), u64>,
}

impl Projection {
    /// Starts with no cell revisions held: the stored cell rows do not say their district,
    /// and the stream is read from its start anyway (what is stored already is skipped by
    /// its event id).
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, EmitError> {
        let outbox = Outbox::open(path)?;
        Ok(Self {
            outbox,
            grids: HashMap::new(),
        })
    }

    /// Stores what is new of `batch` in one transaction and returns it, for the browsers:
    /// an incident revision newer than the one held (older ones, and the same one again,
    /// are ignored), a cell change newer than the cell's.
    fn apply(&mut self, batch: Vec<OutboxEvent>) -> Result<Vec<RiskEvent>, EmitError> {
        let mut held: HashMap<String, u32> = HashMap::new();
        // Cell revisions of this batch: held only once its commit is stored, so a batch
        // that failed is not taken for stale when it comes again.
        let mut cells: HashMap<(String, String), u64> = HashMap::new();
        let mut fresh = Vec::new();
        let mut live = Vec::new();
        let mut stale = 0;
        for event in batch {
            match event {
                OutboxEvent::Incident(e) => {
                    let id = e.data.id.clone();
                    let current = match held.get(&id) {
                        Some(revision) => Some(*revision),
                        None => self.outbox.incident(&id)?.map(|i| i.revision),
                    };
                    if current.is_some_and(|r| r >= e.data.revision) {
                        stale += 1;
                        continue;
                    }
                    held.insert(id, e.data.revision);
                    live.push(RiskEvent::Incident(e.data.clone()));
                    fresh.push(OutboxEvent::Incident(e));
                }
                OutboxEvent::GridRisk(e) => {
                    let cell = (e.source.clone(), e.data.grid.to_string());
                    let current = cells.get(&cell).or_else(|| self.grids.get(&cell)).copied();
                    if current.is_some_and(|r| r >= e.data.revision) {
                        stale += 1;
                        continue;
                    }
                    cells.insert(cell, e.data.revision);
                    live.push(RiskEvent::GridRisk(e.data.clone()));
                    fresh.push(OutboxEvent::GridRisk(e));
                }
                // Not on the incidents stream (`read_event` reads incidents and cells only).
                OutboxEvent::PatrolRound(_) => {}
            }
        }
        if !fresh.is_empty() {
            self.outbox.commit(&fresh, None)?;
        }
        self.grids.extend(cells);
        count("stale", stale);
        count("applied", live.len());
        Ok(live)
    }
}

/// Consumes the incidents stream into the console until aborted: from the stream's start at
/// each start of the process, and after a lost connection from the event after the last
/// one stored.
async fn project(
    client: async_nats::Client,
    console: Arc<Console>,
    state_db: std::path::PathBuf,
    health: ComponentHealth,
    shutdown: Shutdown,
) {
    let mut projection = {
        let path = state_db.clone();
        match tokio::task::spawn_blocking(move || Projection::open(&path)).await {
            Ok(Ok(projection)) => Some(projection),
            Ok(Err(e)) => {
                health.down(format!("the state database: {e}"));
                return;
            }
            Err(e) => {
                health.down(format!("the state database: {e}"));
                return;
            }
        }
    };
    let mut next_seq: u64 = 1;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_triggered() {
        match consume(
            &client,
            &console,
            &mut projection,
            &mut next_seq,
            &health,
            &shutdown,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(stream = INCIDENTS_STREAM, error = %e, retry_in = ?backoff, "the incidents projection stopped; will retry");
                health.retrying(e);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One ordered consumer's run; `Err` when the stream is missing or the consumer fails.
async fn consume(
    client: &async_nats::Client,
    console: &Arc<Console>,
    projection: &mut Option<Projection>,
    next_seq: &mut u64,
    health: &ComponentHealth,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let js = jetstream::new(client.clone());
    // Not created here: in a city it is the hub's stream sourcing the districts', with no
    // subjects of its own; in a cluster the scorers' NATS sinks create it.
    let stream = js
        .get_stream(INCIDENTS_STREAM)
        .await
        .map_err(|e| format!("stream {INCIDENTS_STREAM}: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *next_seq,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer on {INCIDENTS_STREAM}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("consumer on {INCIDENTS_STREAM}: {e}"))?;
    health.up();
    loop {
        let first = tokio::select! {
            next = messages.next() => next,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if shutdown.is_triggered() {
                    return Ok(());
                }
                continue;
            }
        };
        let mut batch = Vec::new();
        let mut invalid = 0;
        let mut last_seq = None;
        let mut next = first;
        loop {
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(format!("consumer on {INCIDENTS_STREAM}: {e}")),
                None => return Err("the consumer's message stream ended".into()),
            };
            if let Ok(info) = message.info() {
                last_seq = Some(info.stream_sequence);
            }
            match read_event(&message.payload) {
                Some(event) => batch.push(event),
                None => invalid += 1,
            }
            if batch.len() >= BATCH {
                break;
            }
            match tokio::time::timeout(BATCH_WAIT, messages.next()).await {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        count("invalid", invalid);
        let mut taken = projection
            .take()
            .ok_or_else(|| "the projection's store was lost".to_string())?;
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = taken.apply(batch);
            (taken, result)
        })
        .await
        .map_err(|e| format!("storing the projection: {e}"))?;
        *projection = Some(back);
        match result {
            Ok(live) => {
                if let Some(seq) = last_seq {
                    *next_seq = seq + 1;
                }
                // Stored: the browsers may see it now.
                console.publish(&live);
                health.up();
            }
            // The batch is read again from where the last stored one ended.
            Err(e) => return Err(format!("storing the projection: {e}")),
        }
    }
}

/// Reads the cluster's health for the Sources view every [`CLUSTER_EVERY`], until aborted.
#[allow(clippy::too_many_arguments)]
async fn watch_cluster(
    client: async_nats::Client,
    cluster: skynet_cluster::ClusterConfig,
    edges: tokio::sync::watch::Receiver<skynet_cluster::View>,
    scorers: tokio::sync::watch::Receiver<skynet_cluster::View>,
    consoles: tokio::sync::watch::Receiver<skynet_cluster::View>,
    node: String,
    cameras: Vec<String>,
    console: Arc<Console>,
) {
    let mut leases: Option<Leases> = None;
    let mut tick = tokio::time::interval(CLUSTER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut health = ClusterHealth {
            name: cluster.name.clone(),
            node: node.clone(),
            at: Some(Utc::now()),
            ..ClusterHealth::default()
        };
        for (role, view) in [
            (Role::Edge, &edges),
            (Role::Scorer, &scorers),
            (Role::Console, &consoles),
        ] {
            let view = view.borrow().clone();
            health
                .members
                .insert(role.as_str().to_string(), view.members);
            health
                .crashed
                .insert(role.as_str().to_string(), view.crashed);
        }
        if leases.is_none() && !cameras.is_empty() {
            match Leases::open(&client, &cluster, &node).await {
                Ok(opened) => leases = Some(opened),
                Err(e) => tracing::debug!(error = %e, "the lease bucket cannot be read yet"),
            }
        }
        let mut holders = BTreeMap::new();
        for camera in &cameras {
            let holder = match &leases {
                Some(leases) => leases
                    .holder(&Leases::camera_key(camera))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::debug!(camera = %camera, error = %e, "a camera's lease cannot be read");
                        None
                    }),
                None => None,
            };
            holders.insert(camera.clone(), holder);
        }
        health.cameras = holders;
        console.set_cluster(health);
    }
}

/// Sends people's status changes as signed case-status events on `[cases]`.
struct CaseStatusSender {
    runtime: tokio::runtime::Handle,
    /// Set once connected (the cluster's connection when `[cases] url` is the cluster's).
    context: Arc<OnceLock<jetstream::Context>>,
    settings: CasesSettings,
    node: String,
}

impl CaseStatusSender {
    fn start(
        runtime: &tokio::runtime::Handle,
        cluster: &ClusterNode,
        config: &PipelineConfig,
        settings: CasesSettings,
    ) -> Self {
        let context = Arc::new(OnceLock::new());
        if settings.url.trim() == config.cluster.url.trim() {
            // A JetStream context spawns a task of its own: on the runtime.
            let _entered = runtime.enter();
            let _ = context.set(cluster.jetstream());
        } else {
            // The process serves while the case system's NATS is down; changes are
            // refused (503) until it is reached.
            let (slot, settings) = (Arc::clone(&context), settings.clone());
            runtime.spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match skynet_emit::connect_nats(&settings.url, settings.credentials.as_deref())
                        .await
                    {
                        Ok(client) => {
                            let _ = slot.set(jetstream::new(client));
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(url = %skynet_core::redact_uri(&settings.url), error = %e, retry_in = ?backoff, "the console cannot reach [cases]; status changes wait");
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            });
        }
        Self {
            runtime: runtime.clone(),
            context,
            settings,
            node: config.node.clone(),
        }
    }

    /// Publishes `status` and waits (at most [`PUBLISH_WAIT`]) for JetStream's ack; called
    /// off the runtime's workers (the API's blocking section).
    fn send(&self, status: CaseStatus) -> Result<(), String> {
        let context = self
            .context
            .get()
            .cloned()
            .ok_or_else(|| "the case system's NATS is not reached yet".to_string())?;
        let (subject, body, id) = case_status_event(&self.settings, &self.node, &status)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        if let Some(secret) = self.settings.secret.as_ref().filter(|s| !s.is_empty()) {
            let signature = skynet_risk::case_status::sign(secret.expose().as_bytes(), &body);
            headers.insert(
                CASE_SIGNATURE_HEADER,
                format!("sha256={signature}").as_str(),
            );
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let settings = self.settings.clone();
        self.runtime.spawn(async move {
            let result = async {
                ensure_cases_stream(&context, &settings).await?;
                context
                    .publish_with_headers(subject, headers, body.into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
            .await;
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(PUBLISH_WAIT)
            .unwrap_or_else(|_| Err("the case system's NATS did not answer in time".into()));
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        metrics::counter!("skynet_console_case_status_sent_total", "outcome" => outcome)
            .increment(1);
        result.map_err(|e| format!("the status change could not be sent: {e}"))
    }
}

/// The stream status events go to, as the scorers' consumer creates it (so a change sent
/// before any scorer ran is kept for it).
async fn ensure_cases_stream(
    context: &jetstream::Context,
    settings: &CasesSettings,
) -> Result<(), String> {
    context
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            max_age: Duration::from_secs_f64(settings.max_age_days * 86_400.0),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("stream {}: {e}", settings.stream))
}

/// The subject, body and id of `status` as a `skynet.case_status.v1` CloudEvent from
/// [`CONSOLE_CASE_SOURCE`]. The id names the console node, the incident, the status and the
/// time, so a publish retried by the API is one event.
pub(crate) fn case_status_event(
    settings: &CasesSettings,
    node: &str,
    status: &CaseStatus,
) -> Result<(String, Vec<u8>, String), String> {
    let id = format!(
        "{node}/{}/{}/{}",
        status.incident,
        status.status.as_str(),
        status.at.timestamp_nanos_opt().unwrap_or_default()
    );
    let subject = format!("{}.{}", settings.subject_prefix, status.incident);
    let body = serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": CONSOLE_CASE_SOURCE,
        "type": CASE_STATUS_EVENT_TYPE,
        "subject": status.incident,
        "time": Utc::now(),
        "datacontenttype": "application/json",
        "data": status,
    }))
    .map_err(|e| e.to_string())?;
    Ok((subject, body, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::IncidentState;

    fn incident(id: &str, revision: u32) -> skynet_core::Incident {
        serde_json::from_value(serde_json::json!({
            "id": id, "revision": revision, "status": "opened", "state": "open",
            "change": "opened", "category": "gas_leak", "level": "II", "level_colour": "orange",
            "risk_score": 0.7, "confidence": 1.0, "grid": "G-1", "department": "fire",
            "deadlines": {}, "owner": "safety_production",
            "first_seen": "2026-11-27T08:00:00Z", "last_seen": "2026-11-27T08:00:00Z",
            "observations": 1, "detections": [], "rule": {"name": "co-leak", "kind": "threshold"},
        }))
        .unwrap()
    }

    fn cell(revision: u64) -> skynet_core::GridRisk {
        serde_json::from_value(serde_json::json!({
            "id": format!("g-1/{revision}"), "grid": "G-1", "revision": revision, "level": "II",
            "level_colour": "orange", "previous_level": null, "score": 0.7,
            "at": "2026-11-27T10:00:00Z", "categories": {}, "incidents": []
        }))
        .unwrap()
    }

    #[test]
    fn the_projection_keeps_the_latest_revisions_and_ignores_older_and_repeated_ones() {
        let mut projection = Projection::open(std::path::Path::new(":memory:")).unwrap();
        let inc = |district: &str, id: &str, revision| {
            OutboxEvent::Incident(skynet_emit::CloudEvent::incident(
                district,
                &incident(id, revision),
            ))
        };
        let grid = |revision| {
            OutboxEvent::GridRisk(skynet_emit::CloudEvent::grid_risk("north", &cell(revision)))
        };
        let live = projection
            .apply(vec![
                inc("north", "a", 2),
                inc("north", "a", 1),
                inc("south", "b", 1),
                grid(2),
                grid(1),
            ])
            .unwrap();
        assert_eq!(
            live.len(),
            3,
            "a/2, b/1 and the cell's revision 2: {live:?}"
        );
        // Again, as after a restart: nothing new; a newer revision is.
        assert!(
            projection
                .apply(vec![inc("north", "a", 2), grid(2)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            projection.apply(vec![inc("north", "a", 3)]).unwrap().len(),
            1
        );
        let outbox = &projection.outbox;
        assert_eq!(outbox.incident("a").unwrap().unwrap().revision, 3);
        let districts = outbox.incident_districts(&["a", "b"]).unwrap();
        assert_eq!(
            (districts["a"].as_str(), districts["b"].as_str()),
            ("north", "south")
        );
        assert_eq!(outbox.latest_grid_risk().unwrap()[0].revision, 2);
    }

    #[test]
    fn a_cell_of_one_district_is_not_taken_for_stale_by_another_districts_cell_of_that_id() {
        let mut projection = Projection::open(std::path::Path::new(":memory:")).unwrap();
        let grid = |district: &str, revision| {
            OutboxEvent::GridRisk(skynet_emit::CloudEvent::grid_risk(
                district,
                &cell(revision),
            ))
        };
        assert_eq!(projection.apply(vec![grid("north", 2)]).unwrap().len(), 1);
        assert_eq!(projection.apply(vec![grid("south", 1)]).unwrap().len(), 1);
        assert!(projection.apply(vec![grid("north", 1)]).unwrap().is_empty());
    }

    #[test]
    fn a_console_status_change_is_a_case_status_event_the_intake_takes() {
        let mut settings = CasesSettings::for_url("nats://127.0.0.1:4222");
        settings.secret = Some(skynet_core::Secret::from("k-console-1".to_string()));
        let status = CaseStatus {
            incident: "inc-1".into(),
            status: IncidentState::Acknowledged,
            department: None,
            assignee: Some("ana".into()),
            note: None,
            at: Utc::now(),
        };
        let (subject, body, _) = case_status_event(&settings, "console-1", &status).unwrap();
        let intake = skynet_risk::case_status::CaseIntake {
            subject_prefix: settings.subject_prefix.clone(),
            sources: [CONSOLE_CASE_SOURCE.to_string()].into(),
            secret: settings.secret.clone(),
            departments: Default::default(),
        };
        let signature = format!(
            "sha256={}",
            skynet_risk::case_status::sign(b"k-console-1", &body)
        );
        let event = intake.check(&subject, &body, Some(&signature)).unwrap();
        assert_eq!(event.status, status);
        assert_eq!(event.source, CONSOLE_CASE_SOURCE);
        assert!(intake.check(&subject, &body, None).is_err(), "unsigned");
    }
}
