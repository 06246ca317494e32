//! The edge's camera side (`skynet run --role edge`): its cameras run only while this node
//! holds their leases, and what their rules see goes on the bus instead of into a risk
//! engine of its own.
//!
//! - [`CameraClaims`]: `camera.<id>` leases among the live edges ([`skynet_cluster::Claims`]);
//!   each camera's source thread runs the camera while its key is runnable
//!   ([`CameraGate::run`]), stopping it when the lease leaves the set.
//! - [`ObservationPublisher`]: the rules stage's [`RiskEngine`]. Each observation (its
//!   public JSON) goes to a bounded queue read by a task on the services runtime, which
//!   publishes it on `skynet.observations.<grid>` with a `Nats-Msg-Id` made from its
//!   content, and retries until JetStream acknowledges it. `take_changes` and `flush` wait
//!   until everything handed over is acknowledged: the commit after them saves the cameras'
//!   clocks, so a restart never skips evidence the stream does not have.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use skynet_cluster::{Claims, Leases, Role};
use skynet_core::{CaseStatus, GridId, Observation, RiskEvent, Shutdown, SourceRef};
use skynet_ingest::{IngestError, SourceExit};
use skynet_risk::state::{EngineChanges, EngineRows};
use skynet_risk::{GridRiskEngine, RiskContext, RiskEngine, RiskError};
use tokio::sync::{mpsc, watch};

use super::cluster::ClusterNode;
use super::{POLL, PipelineError};
use crate::config::PipelineConfig;

/// Observations waiting for the publisher task. Bounded: when the stream is slow or down,
/// the rules stage waits here (and, behind it, live cameras drop their oldest frames,
/// counted) rather than anything being dropped.
const QUEUE: usize = 1024;
/// Published before their acks are awaited, in order.
const MAX_IN_FLIGHT: usize = 256;
/// How long, once the stop signal is given, hand-over and the barrier keep waiting for an
/// unreachable stream before giving up (logged, with how much was not acknowledged).
const GIVE_UP_AFTER_SHUTDOWN: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The `kind` label of this publisher's metrics.
const KIND: &str = "observation";

/// The `Nats-Msg-Id` of a message: the first 128 bits of its payload's SHA-256, in hex.
/// The same observation gives the same id, so a publish retried after a lost ack, or
/// re-sent after a restart, is stored once within the stream's duplicate window.
pub(crate) fn message_id(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// One message for the publisher task.
struct Outgoing {
    subject: String,
    id: String,
    payload: bytes::Bytes,
    handed_at: Instant,
}

/// How far the publisher task has got: messages done (acknowledged, or refused for good).
#[derive(Default)]
struct Progress {
    done: Mutex<u64>,
    moved: Condvar,
}

impl Progress {
    fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) += n;
        self.moved.notify_all();
    }
}

/// The edge's "risk engine": publishes every observation on the bus and keeps nothing.
pub(crate) struct ObservationPublisher {
    queue: mpsc::Sender<Outgoing>,
    runtime: tokio::runtime::Handle,
    progress: Arc<Progress>,
    /// Messages handed to the queue so far.
    handed: u64,
    shutdown: Shutdown,
    /// The stop signal came and the stream stayed unreachable: further waits end at once.
    gave_up: bool,
    /// A fresh grid engine's small state part: what a commit saves as the engine's, so the
    /// edge's saved state reads back (into any role) as an empty engine.
    meta: String,
    depth: metrics::Gauge,
}

impl ObservationPublisher {
    /// Opens the observation stream (creating it when missing) and starts the publisher task
    /// on the services runtime.
    pub(crate) fn start(
        cluster: &ClusterNode,
        config: &PipelineConfig,
        shutdown: Shutdown,
    ) -> Result<Self, PipelineError> {
        cluster
            .runtime
            .block_on(skynet_cluster::bus::observation_stream(
                &cluster.client,
                &config.cluster,
            ))
            .map_err(|e| PipelineError::Cluster(format!("the observation stream: {e}")))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let progress = Arc::new(Progress::default());
        let (client, task_progress) = (cluster.client.clone(), Arc::clone(&progress));
        // The JetStream context is made on the runtime (it spawns a task of its own).
        cluster.runtime.spawn(async move {
            publish(jetstream::new(client), rx, task_progress).await;
        });
        let meta = GridRiskEngine::new(config.risk.clone(), RiskContext::default())
            .take_changes()
            .meta;
        Ok(Self {
            queue,
            runtime: cluster.runtime.clone(),
            progress,
            handed: 0,
            shutdown,
            gave_up: false,
            meta,
            depth: metrics::gauge!("skynet_bus_publish_queue_depth", "kind" => KIND),
        })
    }

    /// Hands one message to the publisher task, waiting while its queue is full. Gives up
    /// only once the stop signal has come and the queue stayed full for a while.
    fn hand_over(&mut self, message: Outgoing) {
        // Most of the time there is room: no runtime round trip.
        let message = match self.queue.try_send(message) {
            Ok(()) => {
                self.handed += 1;
                self.depth.increment(1.0);
                return;
            }
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => m,
        };
        let mut message = Some(message);
        let mut stopping_since: Option<Instant> = None;
        while let Some(m) = message.take() {
            let sent = self.runtime.block_on(async {
                match tokio::time::timeout(POLL, self.queue.reserve()).await {
                    Ok(Ok(permit)) => {
                        permit.send(m);
                        Ok(())
                    }
                    Ok(Err(_)) => Err(None),
                    Err(_) => Err(Some(m)),
                }
            });
            match sent {
                Ok(()) => {
                    self.handed += 1;
                    self.depth.increment(1.0);
                }
                Err(None) => {
                    // The task is gone (the runtime stopped): nothing can publish any more.
                    tracing::error!("the observation publisher has stopped; observation lost");
                }
                Err(Some(m)) => {
                    if self.gave_up {
                        tracing::error!(
                            "the observation stream is unreachable at shutdown; observation lost"
                        );
                        return;
                    }
                    if self.shutdown.is_triggered() {
                        let since = *stopping_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= GIVE_UP_AFTER_SHUTDOWN {
                            self.gave_up = true;
                            tracing::error!(
                                "the observation stream is unreachable at shutdown; observation lost"
                            );
                            return;
                        }
                    }
                    message = Some(m);
                }
            }
        }
    }

    /// Waits until every message handed over so far is acknowledged (or refused for good).
    /// While the stop signal is not given it waits however long the stream is unreachable;
    /// after it, for a bounded time.
    fn barrier(&mut self) {
        let target = self.handed;
        let mut stopping_since: Option<Instant> = None;
        let mut done = self
            .progress
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *done < target {
            if self.shutdown.is_triggered() {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if self.gave_up || since.elapsed() >= GIVE_UP_AFTER_SHUTDOWN {
                    if !self.gave_up {
                        tracing::error!(
                            unacknowledged = target - *done,
                            "the observation stream did not acknowledge everything before shutdown; those observations are lost"
                        );
                    }
                    self.gave_up = true;
                    return;
                }
            }
            done = self
                .progress
                .moved
                .wait_timeout(done, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for ObservationPublisher {
    /// What this publisher got acknowledged over its life (its share of
    /// `skynet_bus_published_total`, plus any refused for good, which
    /// `skynet_bus_publish_refused_total` counts apart), said once it is done, after the
    /// stage's last barrier: what a rolling restart's audit sums over an edge's incarnations.
    fn drop(&mut self) {
        let done = *self
            .progress
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tracing::info!(
            published = done,
            unacknowledged = self.handed.saturating_sub(done),
            "observation publisher stopped"
        );
    }
}

impl RiskEngine for ObservationPublisher {
    fn observe(&mut self, observation: &Observation) -> Vec<RiskEvent> {
        match serde_json::to_vec(observation) {
            Ok(payload) => self.hand_over(Outgoing {
                subject: skynet_cluster::bus::observation_subject(observation.grid.as_str()),
                id: message_id(&payload),
                payload: payload.into(),
                handed_at: Instant::now(),
            }),
            // Plain data: this cannot happen, but it must not take the stage down.
            Err(e) => tracing::error!(error = %e, "an observation could not be serialised"),
        }
        Vec::new()
    }

    fn advance(&mut self, _now: DateTime<Utc>) -> Vec<RiskEvent> {
        Vec::new()
    }

    fn flush(&mut self) -> Vec<RiskEvent> {
        self.barrier();
        Vec::new()
    }

    fn feedback(&mut self, _update: &CaseStatus) -> Result<Vec<RiskEvent>, RiskError> {
        Ok(Vec::new())
    }

    fn faulty_devices(&self) -> Vec<(SourceRef, GridId, String)> {
        Vec::new()
    }

    fn open_incidents(&self) -> usize {
        0
    }

    fn snapshot(&self) -> Box<RawValue> {
        RawValue::from_string("{}".into()).unwrap_or_else(|_| RawValue::NULL.to_owned())
    }

    fn restore(&mut self, _snapshot: &RawValue) -> Result<(), RiskError> {
        Ok(())
    }

    fn take_changes(&mut self) -> EngineChanges {
        self.barrier();
        EngineChanges {
            meta: self.meta.clone(),
            cells: Vec::new(),
            ids: Vec::new(),
        }
    }

    fn restore_rows(&mut self, _rows: &EngineRows) -> Result<(), RiskError> {
        Ok(())
    }
}

/// The publisher task: publishes what is queued in order, up to [`MAX_IN_FLIGHT`] before
/// awaiting the acks in order. On a failure, that message and every one after it are
/// published again after a backoff (those already stored are dropped by the stream as
/// duplicates), so nothing is lost and the order is kept as far as the stream allows.
async fn publish(
    js: jetstream::Context,
    mut queue: mpsc::Receiver<Outgoing>,
    progress: Arc<Progress>,
) {
    let published = metrics::counter!("skynet_bus_published_total", "kind" => KIND);
    let retries = metrics::counter!("skynet_bus_publish_retries_total", "kind" => KIND);
    let refused = metrics::counter!("skynet_bus_publish_refused_total", "kind" => KIND);
    let depth = metrics::gauge!("skynet_bus_publish_queue_depth", "kind" => KIND);
    let latency = metrics::histogram!("skynet_bus_publish_seconds", "kind" => KIND);
    let mut window: VecDeque<Outgoing> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        if window.is_empty() {
            match queue.recv().await {
                Some(m) => window.push_back(m),
                None => return,
            }
        }
        while window.len() < MAX_IN_FLIGHT {
            match queue.try_recv() {
                Ok(m) => window.push_back(m),
                Err(_) => break,
            }
        }
        let mut acks = Vec::with_capacity(window.len());
        let mut failure = None;
        for m in &window {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.id.as_str());
            match js
                .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        // How many from the window's front are done, in order.
        let mut done = 0;
        for ack in acks {
            match ack.await {
                Ok(_) => done += 1,
                Err(e) if refused_for_good(&e) => {
                    // Retrying cannot help (too large for the stream): counted and logged,
                    // and the rest goes on.
                    refused.increment(1);
                    tracing::error!(subject = %window[done].subject, error = %e, "the observation stream refused an observation for good");
                    done += 1;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        for m in window.drain(..done) {
            latency.record(m.handed_at.elapsed().as_secs_f64());
        }
        published.increment(done as u64);
        depth.decrement(done as f64);
        progress.add(done as u64);
        match failure {
            Some(error) => {
                retries.increment(window.len() as u64);
                tracing::warn!(error = %error, waiting = window.len(), retry_in_ms = backoff.as_millis() as u64, "publishing observations failed; retrying");
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            None => {
                if failing {
                    tracing::info!("the observation stream takes observations again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
            }
        }
    }
}

/// An error that a retry cannot mend.
fn refused_for_good(e: &jetstream::context::PublishError) -> bool {
    e.kind() == PublishErrorKind::Other
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|s| s.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

/// This edge's cameras: the `camera.<id>` leases it holds among the live edges.
pub(crate) struct CameraClaims {
    claims: Claims,
    runtime: tokio::runtime::Handle,
}

impl CameraClaims {
    /// Opens the lease bucket and starts claiming every configured camera among the live
    /// edges.
    pub(crate) fn start(
        cluster: &ClusterNode,
        config: &PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let keys: Vec<String> = config
            .cameras
            .iter()
            .map(|c| Leases::camera_key(c.id.as_str()))
            .collect();
        let claims = cluster
            .runtime
            .block_on(async {
                let leases = Leases::open(&cluster.client, &config.cluster, &config.node).await?;
                Ok::<_, skynet_cluster::ClusterError>(Claims::start(
                    &cluster.membership,
                    leases,
                    Role::Edge,
                    keys,
                    config.cluster.timing(),
                ))
            })
            .map_err(|e| PipelineError::Cluster(format!("the camera leases: {e}")))?;
        Ok(Self {
            claims,
            runtime: cluster.runtime.clone(),
        })
    }

    /// The lease keys this edge may run now.
    pub(crate) fn runnable(&self) -> watch::Receiver<BTreeSet<String>> {
        self.claims.runnable()
    }

    /// The gate of one camera's source thread.
    pub(crate) fn gate(&self, camera: &str) -> CameraGate {
        CameraGate {
            key: Leases::camera_key(camera),
            runnable: self.claims.runnable(),
            runtime: self.runtime.clone(),
        }
    }

    /// Releases every lease held, so the other edges take the cameras at once (call once
    /// the cameras have stopped).
    pub(crate) fn stop(self) {
        self.runtime.block_on(self.claims.stop());
    }
}

/// Runs one camera only while this edge holds its lease.
pub(crate) struct CameraGate {
    key: String,
    runnable: watch::Receiver<BTreeSet<String>>,
    runtime: tokio::runtime::Handle,
}

impl CameraGate {
    /// Until `shutdown`: waits until the camera is claimed, runs it with `run` under a stop
    /// signal of its own (given when the lease leaves the set, or at shutdown), and waits
    /// again. A camera that ends by itself (a file played out, or given up on) while claimed
    /// waits until its lease leaves the set. `waiting` is called each time the camera waits
    /// for its lease (so its health says it is not run here). Returns the last run's result
    /// (a camera never claimed: stopped).
    pub(crate) fn run(
        &mut self,
        shutdown: &Shutdown,
        mut waiting: impl FnMut(),
        mut run: impl FnMut(&Shutdown) -> Result<SourceExit, IngestError>,
    ) -> Result<SourceExit, IngestError> {
        let mut last = Ok(SourceExit::Stopped);
        loop {
            waiting();
            if !self.wait_until(shutdown, true) {
                return last;
            }
            tracing::info!(lease = %self.key, "camera claimed: starting it");
            let stop = Shutdown::new();
            let watcher = self.runtime.spawn(stop_when_unclaimed(
                self.runnable.clone(),
                self.key.clone(),
                shutdown.clone(),
                stop.clone(),
            ));
            last = run(&stop);
            watcher.abort();
            if shutdown.is_triggered() {
                return last;
            }
            if matches!(last, Err(IngestError::DownstreamClosed)) {
                // Nothing reads this camera any more: the pipeline is stopping.
                return last;
            }
            if stop.is_triggered() {
                tracing::info!(lease = %self.key, "camera no longer claimed: stopped it");
                continue;
            }
            tracing::info!(lease = %self.key, "camera ended while claimed; it runs again once its lease has moved and come back");
            if !self.wait_until(shutdown, false) {
                return last;
            }
        }
    }

    /// Waits until the camera's key is (`claimed`) or is not in the runnable set; false at
    /// shutdown.
    fn wait_until(&mut self, shutdown: &Shutdown, claimed: bool) -> bool {
        let (key, runnable) = (&self.key, &mut self.runnable);
        self.runtime.block_on(async {
            loop {
                if shutdown.is_triggered() {
                    return false;
                }
                if runnable.borrow_and_update().contains(key) == claimed {
                    return true;
                }
                // The stop signal is a flag: looked at every POLL while no change comes.
                match tokio::time::timeout(POLL, runnable.changed()).await {
                    Ok(Ok(())) | Err(_) => {}
                    // The claims are gone (the run is ending): nothing is runnable.
                    Ok(Err(_)) => {
                        if !claimed {
                            return true;
                        }
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        })
    }
}

/// Gives `stop` once `key` leaves the runnable set, or at `shutdown`.
async fn stop_when_unclaimed(
    mut runnable: watch::Receiver<BTreeSet<String>>,
    key: String,
    shutdown: Shutdown,
    stop: Shutdown,
) {
    loop {
        if shutdown.is_triggered() || !runnable.borrow_and_update().contains(&key) {
            stop.trigger();
            return;
        }
        match tokio::time::timeout(POLL, runnable.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => {
                stop.trigger();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Step {
        Waiting,
        Run,
        Stopped,
        Ended,
    }

    /// A camera runs only while its key is runnable: started when it comes, stopped when it
    /// goes, started again when it comes back; one that ends by itself waits for its lease
    /// to move before running again; shutdown ends it all.
    #[test]
    fn a_camera_runs_while_its_lease_is_runnable() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = watch::channel(BTreeSet::new());
        let mut gate = CameraGate {
            key: Leases::camera_key("c1"),
            runnable: rx,
            runtime: rt.handle().clone(),
        };
        let shutdown = Shutdown::new();
        let (steps, seen) = std_mpsc::channel();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let mut runs = 0;
            let waiting = steps.clone();
            gate.run(
                &stop,
                move || waiting.send(Step::Waiting).unwrap(),
                |camera_stop| {
                    runs += 1;
                    steps.send(Step::Run).unwrap();
                    if runs == 2 {
                        // A file played out while claimed.
                        steps.send(Step::Ended).unwrap();
                        return Ok(SourceExit::EndOfStream);
                    }
                    while !camera_stop.is_triggered() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    steps.send(Step::Stopped).unwrap();
                    Ok(SourceExit::Stopped)
                },
            )
        });
        let next = || seen.recv_timeout(Duration::from_secs(10)).unwrap();
        let claimed = BTreeSet::from([Leases::camera_key("c1"), Leases::camera_key("c2")]);
        assert_eq!(next(), Step::Waiting);
        tx.send_replace(claimed.clone());
        assert_eq!(next(), Step::Run);
        // Another camera's lease moving changes nothing here.
        tx.send_replace(BTreeSet::from([Leases::camera_key("c1")]));
        tx.send_replace(BTreeSet::new());
        assert_eq!(next(), Step::Stopped);
        assert_eq!(next(), Step::Waiting);
        tx.send_replace(claimed.clone());
        assert_eq!(next(), Step::Run);
        assert_eq!(next(), Step::Ended);
        // Not run again while the lease stays: only once it has moved and come back.
        tx.send_replace(BTreeSet::new());
        assert_eq!(next(), Step::Waiting);
        tx.send_replace(claimed);
        assert_eq!(next(), Step::Run);
        shutdown.trigger();
        assert_eq!(next(), Step::Stopped);
        assert!(matches!(thread.join().unwrap(), Ok(SourceExit::Stopped)));
        assert!(seen.try_recv().is_err());
    }

    #[test]
    fn the_message_id_follows_the_content() {
        let a = message_id(br#"{"grid":"G-0201"}"#);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, message_id(br#"{"grid":"G-0201"}"#));
        assert_ne!(a, message_id(br#"{"grid":"G-0202"}"#));
    }
}
