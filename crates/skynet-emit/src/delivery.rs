//! Commit and delivery, kept apart. The pipeline commits incidents to the outbox on its own
//! thread and goes on; each sink then runs in its own task with its own cursor and retry, so
//! a sink that is slow, failing or blocked holds up neither the commit nor the other sinks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use skynet_core::{ComponentHealth, RiskEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{
    DeadLetter, Delivery, EmitError, IncidentSink, Outbox, OutboxEvent, Rejection, StoredEvent,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// While shutting down, retries come at least this often: a sink that recovers is then
/// still drained before the deadline.
const DRAIN_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// An idle sink looks at the outbox this often even without a signal, to see events that
/// another process (or the previous run) committed.
const RECHECK: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// The pending gauge is recounted at most this often: the count scans the backlog.
const RECOUNT_EVERY: Duration = Duration::from_millis(500);
/// A delivery taking longer than this shows the sink as not up until it completes.
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// How often `shutdown` looks whether the tasks are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Wakes the sink tasks when new events are committed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommitSignal {
    // A watch rather than a Notify: each receiver remembers what it has seen, so a commit
    // that lands while a task is busy delivering is not lost.
    tx: Arc<watch::Sender<u64>>,
}

impl Default for CommitSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl CommitSignal {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Tells every sink task that there is something new in the outbox.
    pub fn notify(&self) {
        // send_modify updates even with no receiver yet: a task subscribing later still
        // reads the outbox first.
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// The commit side: runs on the caller's (blocking) thread.
pub struct Committer {
    node: String,
    outbox: Outbox,
    signal: CommitSignal,
    retention: Option<(chrono::Duration, Vec<String>)>,
    last_prune: Option<Instant>,
}

impl Committer {
    pub fn new(node: impl Into<String>, outbox: Outbox) -> Self {
        Self {
            node: node.into(),
            outbox,
            signal: CommitSignal::new(),
            retention: None,
            last_prune: None,
        }
    }

    /// Deletes delivered events older than `retention`, checked at most every 10 minutes
    /// during commit/idle calls. Needs the sink names to know what every sink has taken.
    pub fn with_retention(mut self, retention: chrono::Duration, sink_names: Vec<String>) -> Self {
        self.retention = Some((retention, sink_names));
        self
    }

    /// Turns the revisions into CloudEvents and commits them with `state` in one
    /// transaction, then wakes the deliveries. Returns the events. Once this returns, the
    /// events will be delivered to every sink, across restarts if need be.
    pub fn commit(
        &mut self,
        changes: &[RiskEvent],
        state: Option<&str>,
    ) -> Result<Vec<OutboxEvent>, EmitError> {
        let events: Vec<OutboxEvent> = changes
            .iter()
            .map(|change| OutboxEvent::new(&self.node, change))
            .collect();
        // Nothing to write: skip the transaction and its fsync.
        if !events.is_empty() || state.is_some() {
            let inserted = self.outbox.commit(&events, state)?;
            if inserted > 0 {
                metrics::counter!("skynet_incidents_stored_total").increment(inserted as u64);
                self.signal.notify();
            }
        }
        self.prune_if_due();
        Ok(events)
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Periodic housekeeping when idle (prune if due).
    pub fn idle(&mut self) {
        self.prune_if_due();
    }

    /// A handle the deliveries wait on.
    pub fn wake_handle(&self) -> CommitSignal {
        self.signal.clone()
    }

    fn prune_if_due(&mut self) {
        let Some((retention, sinks)) = &self.retention else {
            return;
        };
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        // A retention reaching back past the calendar chrono can represent means nothing is
        // old enough yet: never prune rather than overflow.
        let Some(before) = Utc::now().checked_sub_signed(*retention) else {
            return;
        };
        let names: Vec<&str> = sinks.iter().map(String::as_str).collect();
        match self.outbox.prune(&names, before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned delivered events past retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune the outbox"),
        }
    }
}

/// How the sink tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// A sink more than this many events behind shows the lag alarm: its health turns to
    /// `retrying` with the count, an ERROR line is logged once, and
    /// `skynet_sink_lag_alarm{sink}` is 1 until it is back under (an INFO line then).
    pub lag_alarm_events: u64,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            lag_alarm_events: 10_000,
        }
    }
}

/// The running sink tasks.
///
/// Dropping it without [`shutdown`](Self::shutdown) leaves the tasks running until the
/// runtime stops.
pub struct Deliveries {
    outbox_path: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<SinkTask>,
}

struct SinkTask {
    name: String,
    handle: JoinHandle<()>,
    /// The last count the task saw, for when the outbox cannot be read at shutdown.
    pending: Arc<AtomicU64>,
}

/// Spawns one task per sink on `runtime` (a multi-thread runtime, since
/// [`Deliveries::shutdown`] waits from a plain thread without driving it). Each task opens
/// its own connection to the outbox at `outbox_path` and delivers from its own cursor.
pub fn spawn_deliveries(
    runtime: &tokio::runtime::Handle,
    outbox_path: &Path,
    sinks: Vec<(Box<dyn IncidentSink>, ComponentHealth)>,
    signal: CommitSignal,
) -> Deliveries {
    spawn_deliveries_with(
        runtime,
        outbox_path,
        sinks,
        signal,
        DeliveryOptions::default(),
    )
}

/// [`spawn_deliveries`] with `options` (the `[outbox]` settings).
pub fn spawn_deliveries_with(
    runtime: &tokio::runtime::Handle,
    outbox_path: &Path,
    sinks: Vec<(Box<dyn IncidentSink>, ComponentHealth)>,
    signal: CommitSignal,
    options: DeliveryOptions,
) -> Deliveries {
    let (stop, _) = watch::channel(false);
    let tasks = sinks
        .into_iter()
        .map(|(sink, health)| {
            let name = sink.name().to_string();
            let pending = Arc::new(AtomicU64::new(u64::MAX));
            let worker = Worker {
                name: name.clone(),
                sink,
                health,
                outbox_path: outbox_path.to_path_buf(),
                commits: signal.subscribe(),
                commits_open: true,
                stop: stop.subscribe(),
                stop_open: true,
                draining: false,
                backoff: FIRST_BACKOFF,
                reported_up: false,
                pending: Arc::clone(&pending),
                lag_limit: options.lag_alarm_events,
                lag_alarm: false,
                alarm_shown: false,
                gauges: None,
            };
            SinkTask {
                name,
                handle: runtime.spawn(worker.run()),
                pending,
            }
        })
        .collect();
    Deliveries {
        outbox_path: outbox_path.to_path_buf(),
        stop,
        tasks,
    }
}

impl Deliveries {
    /// At shutdown (called from a plain thread, not from inside the runtime): tells every
    /// task that no more events will be committed, lets each deliver until it has everything
    /// or `deadline` passes, and returns the sinks still behind with how many events each
    /// still lacks (`u64::MAX` where that could not be counted); those events stay in the
    /// outbox for the next start.
    ///
    /// Returns by the deadline even if a sink's `deliver` never returns: such a task is
    /// aborted. Work it left on the blocking pool (a write into a full pipe) may still be
    /// stuck there, so drop the runtime with `shutdown_timeout` or `shutdown_background`.
    pub fn shutdown(self, deadline: Duration) -> Vec<(String, u64)> {
        self.stop.send_replace(true);
        // A deadline too far to represent is no deadline.
        let until = Instant::now().checked_add(deadline);
        while !self.tasks.iter().all(|t| t.handle.is_finished()) {
            let left = match until {
                Some(until) => until.saturating_duration_since(Instant::now()),
                None => SHUTDOWN_POLL,
            };
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(SHUTDOWN_POLL));
        }
        for task in &self.tasks {
            if !task.handle.is_finished() {
                tracing::warn!(sink = %task.name, "sink did not finish by the shutdown deadline; abandoning it");
                task.handle.abort();
            }
        }
        let outbox = Outbox::open(&self.outbox_path)
            .inspect_err(
                |e| tracing::warn!(error = %e, "could not count what the sinks still lack"),
            )
            .ok();
        self.tasks
            .iter()
            .filter_map(|task| {
                let counted = outbox.as_ref().and_then(|o| {
                    o.pending_count(&task.name)
                        .inspect_err(|e| tracing::warn!(sink = %task.name, error = %e, "could not count what the sink still lacks"))
                        .ok()
                });
                let lacks = counted.unwrap_or_else(|| task.pending.load(Ordering::Relaxed));
                (lacks > 0).then(|| (task.name.clone(), lacks))
            })
            .collect()
    }
}

/// One sink's delivery loop.
struct Worker {
    name: String,
    sink: Box<dyn IncidentSink>,
    health: ComponentHealth,
    outbox_path: PathBuf,
    commits: watch::Receiver<u64>,
    /// False once every CommitSignal is gone; the periodic re-check then does the waking.
    commits_open: bool,
    stop: watch::Receiver<bool>,
    /// False once the Deliveries is dropped: no shutdown will come.
    stop_open: bool,
    /// Shutting down: return once caught up.
    draining: bool,
    backoff: Duration,
    reported_up: bool,
    pending: Arc<AtomicU64>,
    /// Events behind beyond which the lag alarm is on.
    lag_limit: u64,
    lag_alarm: bool,
    /// The health table shows the lag alarm now (not a failure, not up).
    alarm_shown: bool,
    /// Registered when the task starts.
    gauges: Option<Gauges>,
}

struct Gauges {
    pending: metrics::Gauge,
    lag: metrics::Gauge,
    alarm: metrics::Gauge,
}

/// Runs an outbox call on the blocking pool: SQLite calls block (fsync, busy_timeout).
async fn blocking<T: Send + 'static>(
    outbox: &Arc<Mutex<Outbox>>,
    f: impl FnOnce(&Outbox) -> Result<T, EmitError> + Send + 'static,
) -> Result<T, EmitError> {
    let outbox = Arc::clone(outbox);
    tokio::task::spawn_blocking(move || {
        // A panic in an earlier call leaves the connection itself usable.
        f(&outbox.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await?
}

impl Worker {
    async fn run(mut self) {
        let emitted =
            metrics::counter!("skynet_incidents_emitted_total", "sink" => self.name.clone());
        let dead_letters =
            metrics::counter!("skynet_sink_dead_letters_total", "sink" => self.name.clone());
        let alarm = metrics::gauge!("skynet_sink_lag_alarm", "sink" => self.name.clone());
        alarm.set(0.0);
        self.gauges = Some(Gauges {
            pending: metrics::gauge!("skynet_outbox_pending", "sink" => self.name.clone()),
            lag: metrics::gauge!("skynet_sink_lag_events", "sink" => self.name.clone()),
            alarm,
        });
        let mut outbox: Option<Arc<Mutex<Outbox>>> = None;
        let mut last_count: Option<Instant> = None;
        loop {
            // Marked seen before reading, so a commit landing during the read wakes the
            // next wait instead of being missed.
            self.commits.borrow_and_update();
            if !self.draining && *self.stop.borrow_and_update() {
                self.draining = true;
                self.backoff = FIRST_BACKOFF;
            }

            let db = match &outbox {
                Some(db) => Arc::clone(db),
                None => {
                    let path = self.outbox_path.clone();
                    let opened =
                        tokio::task::spawn_blocking(move || Outbox::open_for_delivery(&path)).await;
                    match opened.map_err(EmitError::from).and_then(|r| r) {
                        Ok(db) => Arc::clone(outbox.insert(Arc::new(Mutex::new(db)))),
                        Err(e) => {
                            self.failed(&e).await;
                            continue;
                        }
                    }
                }
            };

            // Dead letters an operator queued again go first: the cursor has passed them, so
            // they are delivered apart from it, and they are few.
            let name = self.name.clone();
            let limit = self.sink.batch_size().max(1);
            let replays = match blocking(&db, move |o| o.replays(&name, limit)).await {
                Ok(replays) => replays,
                Err(e) => {
                    outbox = None;
                    self.failed(&e).await;
                    continue;
                }
            };
            if !replays.is_empty() {
                let delivery = match self.deliver_watched(&replays).await {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        self.failed(&e).await;
                        continue;
                    }
                };
                let Some(handled) = self.handled(&replays, delivery).await else {
                    continue;
                };
                let delivered: Vec<i64> = replays
                    .iter()
                    .filter(|e| {
                        e.seq <= handled.through && !handled.dead.iter().any(|d| d.seq == e.seq)
                    })
                    .map(|e| e.seq)
                    .collect();
                let (name, dead) = (self.name.clone(), handled.dead.clone());
                let count = delivered.len();
                if let Err(e) =
                    blocking(&db, move |o| o.settle_replays(&name, &delivered, &dead)).await
                {
                    outbox = None;
                    self.failed(&e).await;
                    continue;
                }
                emitted.increment(count as u64);
                self.report_dead(&dead_letters, &handled.dead, true);
                tracing::info!(sink = %self.name, delivered = count, refused_again = handled.dead.len(), "replayed dead letters");
                self.settled(handled.failure).await;
                continue;
            }

            let name = self.name.clone();
            let limit = self.sink.batch_size().max(1);
            let batch = match blocking(&db, move |o| o.pending(&name, limit)).await {
                Ok(batch) => batch,
                Err(e) => {
                    // Reopen: the connection may be what is broken.
                    outbox = None;
                    self.failed(&e).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.set_pending(0);
                self.report_up();
                self.backoff = FIRST_BACKOFF;
                if self.draining {
                    return;
                }
                self.wait_for_commit().await;
                continue;
            };

            if last_count.is_none_or(|t| t.elapsed() >= RECOUNT_EVERY) {
                last_count = Some(Instant::now());
                let name = self.name.clone();
                // Before delivering, so a sink stuck in `deliver` still shows its backlog.
                if let Ok(n) = blocking(&db, move |o| o.pending_count(&name)).await {
                    self.set_pending(n);
                }
            }

            let delivery = match self.deliver_watched(&batch).await {
                Ok(delivery) => delivery,
                Err(e) => {
                    self.failed(&e).await;
                    continue;
                }
            };
            let Some(handled) = self.handled(&batch, delivery).await else {
                continue;
            };
            let (name, dead, through) = (self.name.clone(), handled.dead.clone(), handled.through);
            // The cursor moves past the refused events only together with storing them.
            if let Err(e) = blocking(&db, move |o| {
                o.acknowledge_with_dead_letters(&name, through, &dead)
            })
            .await
            {
                // Delivered but not acknowledged: the batch goes again (at-least-once).
                outbox = None;
                self.failed(&e).await;
                continue;
            }
            let taken = handled.count - handled.dead.len();
            emitted.increment(taken as u64);
            self.report_dead(&dead_letters, &handled.dead, false);
            let known = self.pending.load(Ordering::Relaxed);
            // u64::MAX is "not counted yet": leave it for the next count.
            if known != u64::MAX {
                self.set_pending(known.saturating_sub(handled.count as u64));
            }
            self.settled(handled.failure).await;
        }
    }

    /// After a batch's outcome is stored: up again, or, when the rest of the batch failed,
    /// the failure reported and backed off (what came before it is kept, and the sink does
    /// not show as up meanwhile).
    async fn settled(&mut self, failure: Option<String>) {
        match failure {
            Some(message) => {
                let e = EmitError::Sink {
                    sink: self.name.clone(),
                    message,
                };
                self.failed(&e).await;
            }
            None => {
                self.report_up();
                self.backoff = FIRST_BACKOFF;
            }
        }
    }

    /// The sink's delivery of `batch`, showing the sink as not up while it takes longer
    /// than [`STALLED_AFTER`].
    async fn deliver_watched(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        let deliver = self.sink.deliver_batch(batch);
        tokio::pin!(deliver);
        tokio::select! {
            result = &mut deliver => result,
            () = tokio::time::sleep(STALLED_AFTER) => {
                // Still waiting (a pipe nobody reads): not up, though nothing failed.
                self.health.retrying(format!(
                    "delivery has not completed within {} s",
                    STALLED_AFTER.as_secs()
                ));
                self.reported_up = false;
                self.alarm_shown = false;
                deliver.await
            }
        }
    }

    /// What the sink's answer means for the outbox: how far the batch was handled and the
    /// dead letters to keep. `None` (after the backoff) when the answer handled nothing.
    async fn handled(&mut self, batch: &[StoredEvent], delivery: Delivery) -> Option<Handled> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return None;
        };
        let through = delivery.handled_through.unwrap_or(last.seq).min(last.seq);
        if through < first.seq {
            let e = EmitError::Sink {
                sink: self.name.clone(),
                message: "the sink handled none of the batch".into(),
            };
            self.failed(&e).await;
            return None;
        }
        let now = Utc::now();
        let mut dead = Vec::with_capacity(delivery.rejected.len());
        for Rejection {
            seq,
            status,
            reason,
        } in delivery.rejected
        {
            // Only events of this batch, as far as it was handled: anything else would be a
            // bug in the sink, and must not turn an event into a dead letter by mistake.
            let Some(event) = batch.iter().find(|e| e.seq == seq && seq <= through) else {
                tracing::error!(sink = %self.name, seq, "sink refused an event outside its batch; ignored");
                continue;
            };
            if dead.iter().any(|d: &DeadLetter| d.seq == seq) {
                continue;
            }
            dead.push(DeadLetter {
                sink: self.name.clone(),
                seq,
                id: event.id.clone(),
                status,
                reason,
                at: now,
                body: event.body.clone(),
                replay: false,
            });
        }
        let count = batch.iter().filter(|e| e.seq <= through).count();
        Some(Handled {
            through,
            count,
            dead,
            failure: delivery.failure,
        })
    }

    /// Counts and logs the events just stored as dead letters.
    fn report_dead(&self, counter: &metrics::Counter, dead: &[DeadLetter], replay: bool) {
        counter.increment(dead.len() as u64);
        for letter in dead {
            tracing::error!(
                sink = %self.name,
                event = %letter.id,
                seq = letter.seq,
                status = letter.status,
                replay,
                "the destination refused the event for good; kept in the dead letters (`skynet outbox dead-letters`)"
            );
        }
    }

    /// Records how many events the sink lacks, and turns the lag alarm on or off when the
    /// count crosses the limit.
    fn set_pending(&mut self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
        if let Some(g) = &self.gauges {
            g.pending.set(n as f64);
            g.lag.set(n as f64);
        }
        let over = n > self.lag_limit;
        if over == self.lag_alarm {
            return;
        }
        self.lag_alarm = over;
        if let Some(g) = &self.gauges {
            g.alarm.set(if over { 1.0 } else { 0.0 });
        }
        if over {
            tracing::error!(sink = %self.name, behind = n, limit = self.lag_limit, "sink is falling behind: events wait in the outbox (nothing is dropped)");
            self.show_alarm(n);
        } else {
            tracing::info!(sink = %self.name, behind = n, limit = self.lag_limit, "sink is back under its lag limit");
            // The next success shows it up again.
            self.alarm_shown = false;
            self.reported_up = false;
        }
    }

    fn show_alarm(&mut self, n: u64) {
        self.health
            .retrying(format!("{n} events behind, limit {}", self.lag_limit));
        self.alarm_shown = true;
        self.reported_up = false;
    }

    /// After a success: up, unless the lag alarm is on, which then shows instead.
    fn report_up(&mut self) {
        if self.lag_alarm {
            if !self.alarm_shown {
                let n = self.pending.load(Ordering::Relaxed);
                self.show_alarm(n);
            }
        } else if !self.reported_up {
            self.health.up();
            self.reported_up = true;
        }
    }

    /// Waits for a commit, a shutdown or the periodic re-check.
    async fn wait_for_commit(&mut self) {
        tokio::select! {
            changed = self.commits.changed(), if self.commits_open => {
                if changed.is_err() {
                    self.commits_open = false;
                }
            }
            changed = self.stop.changed(), if self.stop_open => {
                if changed.is_err() {
                    self.stop_open = false;
                }
            }
            () = tokio::time::sleep(RECHECK) => {}
        }
    }

    /// Reports the failure and waits out the backoff (cut short when shutdown begins).
    async fn failed(&mut self, error: &EmitError) {
        metrics::counter!("skynet_sink_retries_total", "sink" => self.name.clone()).increment(1);
        let wait = jittered(self.backoff);
        tracing::warn!(sink = %self.name, error = %error, retry_in = ?wait, "sink delivery failed; will retry");
        self.health.retrying(error.to_string());
        self.reported_up = false;
        self.alarm_shown = false;
        let cap = if self.draining {
            DRAIN_MAX_BACKOFF
        } else {
            MAX_BACKOFF
        };
        self.backoff = self.backoff.saturating_mul(2).min(cap);
        let watch_stop = self.stop_open && !self.draining;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = self.stop.changed(), if watch_stop => {
                if changed.is_err() {
                    self.stop_open = false;
                }
            }
        }
    }
}

/// A sink's answer, checked against its batch.
struct Handled {
    /// The last seq handled (taken or refused).
    through: i64,
    /// Events handled, refused ones included.
    count: usize,
    dead: Vec<DeadLetter>,
    /// The rest of the batch failed, with this reason: back off before offering it again.
    failure: Option<String>,
}

/// `d` stretched by up to 10 %, so sinks that failed together do not retry in lockstep.
fn jittered(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    // RandomState is randomly keyed per instance: enough randomness here, with no dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    d.mul_f64(1.0 + (r % 1000) as f64 / 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoredEvent;
    use skynet_core::ComponentState;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn incident(revision: u32) -> RiskEvent {
        RiskEvent::Incident(crate::test_support::incident(revision, 0.3))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Polls `done` for up to 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Never finishes a delivery, like stdout into a pipe nobody reads.
    struct BlockedSink;

    #[async_trait::async_trait]
    impl IncidentSink for BlockedSink {
        fn name(&self) -> &str {
            "blocked"
        }
        async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
            std::future::pending().await
        }
    }

    /// Fails while `broken` is set; records what it got.
    struct RecordingSink {
        name: &'static str,
        broken: Arc<AtomicBool>,
        attempts: Arc<AtomicUsize>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl RecordingSink {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                broken: Arc::default(),
                attempts: Arc::default(),
                got: Arc::default(),
            }
        }

        fn again(&self) -> Self {
            Self {
                name: self.name,
                broken: self.broken.clone(),
                attempts: self.attempts.clone(),
                got: self.got.clone(),
            }
        }

        fn got(&self) -> Vec<String> {
            self.got.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl IncidentSink for RecordingSink {
        fn name(&self) -> &str {
            self.name
        }
        async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.broken.load(Ordering::SeqCst) {
                return Err(EmitError::SinkIo {
                    sink: self.name.into(),
                    source: std::io::ErrorKind::BrokenPipe.into(),
                });
            }
            let mut got = self.got.lock().unwrap();
            got.extend(batch.iter().map(|e| e.id.clone()));
            Ok(())
        }
    }

    fn ids(revisions: std::ops::RangeInclusive<u32>) -> Vec<String> {
        revisions.map(|r| format!("inc-1/{r}")).collect()
    }

    #[test]
    fn a_blocked_sink_delays_neither_the_commit_nor_the_other_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let rt = runtime();
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        let recording = RecordingSink::new("recording");
        let blocked_health = ComponentHealth::detached("blocked", "sink");
        let recording_health = ComponentHealth::detached("recording", "sink");
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![
                (Box::new(BlockedSink), blocked_health.clone()),
                (Box::new(recording.again()), recording_health.clone()),
            ],
            committer.wake_handle(),
        );

        // Ten commits of ten, so the deliveries are woken while the blocked one is stuck.
        let started = Instant::now();
        for first in (1..=100).step_by(10) {
            let incidents: Vec<RiskEvent> = (first..first + 10).map(incident).collect();
            assert_eq!(committer.commit(&incidents, None).unwrap().len(), 10);
        }
        // Generous for a loaded machine: the point is that no commit waits on a sink.
        assert!(started.elapsed() < Duration::from_secs(5));

        eventually("the recording sink has all 100", || {
            recording.got().len() >= 100
        });
        assert_eq!(recording.got(), ids(1..=100));
        eventually("the recording sink reports up", || {
            recording_health.status().unwrap().state == ComponentState::Up
        });

        let started = Instant::now();
        let behind = deliveries.shutdown(Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(behind, vec![("blocked".to_string(), 100)]);
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    #[test]
    fn a_failing_sink_catches_up_in_order_from_its_cursor_and_a_restart_resumes_without_redelivery()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let rt = runtime();
        let flaky = RecordingSink::new("flaky");
        flaky.broken.store(true, Ordering::SeqCst);
        let health = ComponentHealth::detached("flaky", "sink");
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![(Box::new(flaky.again()), health.clone())],
            committer.wake_handle(),
        );
        committer.commit(&[incident(1)], None).unwrap();
        committer.commit(&[incident(2)], None).unwrap();
        // A replay of the same revision changes nothing.
        committer.commit(&[incident(2)], None).unwrap();
        eventually("the sink has failed twice", || {
            flaky.attempts.load(Ordering::SeqCst) >= 2
        });
        let status = health.status().unwrap();
        assert_eq!(status.state, ComponentState::Retrying);
        assert!(status.reason.unwrap().contains("flaky"));
        assert!(flaky.got().is_empty());

        flaky.broken.store(false, Ordering::SeqCst);
        eventually("the sink caught up", || flaky.got().len() >= 2);
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
        assert_eq!(flaky.got(), ids(1..=2));
        assert_eq!(health.status().unwrap().state, ComponentState::Up);
        drop(committer);

        // A restart resumes from the cursor: nothing is delivered twice. The sink is broken
        // when shutdown begins and recovers within the deadline: it is still drained.
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        flaky.broken.store(true, Ordering::SeqCst);
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![(Box::new(flaky.again()), health.clone())],
            committer.wake_handle(),
        );
        committer.commit(&[incident(3)], None).unwrap();
        let broken = flaky.broken.clone();
        let heal = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            broken.store(false, Ordering::SeqCst);
        });
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
        heal.join().unwrap();
        assert_eq!(flaky.got(), ids(1..=3));
        let history = committer.outbox().incidents().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].revision, 3);
    }

    /// Takes only the first event of its first batch and fails the rest; then takes all.
    struct HalfFailing {
        calls: Arc<AtomicUsize>,
        got: Arc<Mutex<Vec<String>>>,
        health_at_second_call: Arc<Mutex<Option<ComponentState>>>,
        health: ComponentHealth,
    }

    #[async_trait::async_trait]
    impl IncidentSink for HalfFailing {
        fn name(&self) -> &str {
            "half"
        }
        async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
            unreachable!("the worker calls deliver_batch")
        }
        async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call == 1 {
                *self.health_at_second_call.lock().unwrap() = self.health.status().map(|s| s.state);
            }
            if call == 0 && batch.len() > 1 {
                self.got.lock().unwrap().push(batch[0].id.clone());
                return Ok(Delivery {
                    rejected: Vec::new(),
                    handled_through: Some(batch[0].seq),
                    failure: Some("the rest timed out".into()),
                });
            }
            let mut got = self.got.lock().unwrap();
            got.extend(batch.iter().map(|e| e.id.clone()));
            Ok(Delivery::all())
        }
    }

    #[test]
    fn a_batch_that_fails_part_way_keeps_what_was_taken_and_backs_off_before_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        committer
            .commit(&[incident(1), incident(2), incident(3)], None)
            .unwrap();
        let rt = runtime();
        let health = ComponentHealth::detached("half", "sink");
        let sink = HalfFailing {
            calls: Arc::default(),
            got: Arc::default(),
            health_at_second_call: Arc::default(),
            health: health.clone(),
        };
        let (got, seen) = (sink.got.clone(), sink.health_at_second_call.clone());
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![(Box::new(sink), health.clone())],
            committer.wake_handle(),
        );
        eventually("all three arrive", || got.lock().unwrap().len() >= 3);
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
        assert_eq!(*got.lock().unwrap(), ids(1..=3), "in order, none twice");
        assert_eq!(
            *seen.lock().unwrap(),
            Some(ComponentState::Retrying),
            "the failure was reported (and backed off) before the rest was offered again"
        );
    }

    #[test]
    fn a_sink_added_later_starts_from_what_is_left_in_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        committer.commit(&[incident(1), incident(2)], None).unwrap();
        let rt = runtime();
        let late = RecordingSink::new("late");
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![(
                Box::new(late.again()),
                ComponentHealth::detached("late", "sink"),
            )],
            committer.wake_handle(),
        );
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
        assert_eq!(late.got(), ids(1..=2));
    }

    #[test]
    fn prune_keeps_what_a_sink_still_needs_and_the_incident_history() {
        let outbox = Outbox::open(Path::new(":memory:")).unwrap();
        let mut committer = Committer::new("n1", outbox);
        for revision in 1..=3 {
            committer.commit(&[incident(revision)], None).unwrap();
        }
        let outbox = committer.outbox();
        outbox.acknowledge("a", 3).unwrap();
        outbox.acknowledge("b", 1).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(outbox.prune(&["a", "b"], later).unwrap(), 1);
        assert_eq!(outbox.pending("b", 10).unwrap().len(), 2);
        assert_eq!(
            outbox
                .prune(&["a"], Utc::now() - chrono::Duration::days(1))
                .unwrap(),
            0
        );
        assert_eq!(outbox.prune(&["a"], later).unwrap(), 2);
        assert!(outbox.events().unwrap().is_empty());
        assert_eq!(outbox.incidents().unwrap()[0].revision, 3);
    }

    #[test]
    fn a_retention_too_long_for_the_calendar_never_prunes_and_never_panics() {
        for retention in [chrono::Duration::days(100_000_000), chrono::Duration::MAX] {
            // What used to panic: `Utc::now() - retention` overflows chrono's range.
            assert!(Utc::now().checked_sub_signed(retention).is_none());
            let outbox = Outbox::open(Path::new(":memory:")).unwrap();
            let mut committer =
                Committer::new("n1", outbox).with_retention(retention, vec!["a".into()]);
            committer.commit(&[incident(1)], None).unwrap();
            committer.outbox().acknowledge("a", 1).unwrap();
            committer.last_prune = None;
            committer.idle();
            assert_eq!(committer.outbox().events().unwrap().len(), 1);
        }
        // A short one does prune what every sink has taken.
        let outbox = Outbox::open(Path::new(":memory:")).unwrap();
        let mut committer = Committer::new("n1", outbox)
            .with_retention(chrono::Duration::milliseconds(-1000), vec!["a".into()]);
        committer.commit(&[incident(1)], None).unwrap();
        committer.outbox().acknowledge("a", 1).unwrap();
        committer.last_prune = None;
        committer.idle();
        assert!(committer.outbox().events().unwrap().is_empty());
    }

    /// Refuses for good the events whose ids are in `refuse`; records what it took.
    struct RefusingSink {
        refuse: Arc<Mutex<Vec<String>>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl IncidentSink for RefusingSink {
        fn name(&self) -> &str {
            "picky"
        }
        async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
            unreachable!("the worker calls deliver_batch")
        }
        async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
            let refuse = self.refuse.lock().unwrap().clone();
            let mut delivery = Delivery::all();
            for event in batch {
                if refuse.contains(&event.id) {
                    delivery.rejected.push(Rejection {
                        seq: event.seq,
                        status: Some(422),
                        reason: "no".into(),
                    });
                } else {
                    self.got.lock().unwrap().push(event.id.clone());
                }
            }
            Ok(delivery)
        }
    }

    #[test]
    fn a_refused_event_becomes_a_dead_letter_the_rest_flow_and_a_replay_delivers_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let rt = runtime();
        let refuse = Arc::new(Mutex::new(vec!["inc-1/3".to_string()]));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = RefusingSink {
            refuse: Arc::clone(&refuse),
            got: Arc::clone(&got),
        };
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        let deliveries = spawn_deliveries(
            rt.handle(),
            &path,
            vec![(Box::new(sink), ComponentHealth::detached("picky", "sink"))],
            committer.wake_handle(),
        );
        let incidents: Vec<RiskEvent> = (1..=5).map(incident).collect();
        committer.commit(&incidents, None).unwrap();
        let outbox = Outbox::open(&path).unwrap();
        eventually("the batch is handled", || {
            outbox.pending_count("picky").unwrap() == 0
        });
        assert_eq!(
            *got.lock().unwrap(),
            ["inc-1/1", "inc-1/2", "inc-1/4", "inc-1/5"]
        );
        let dead = outbox.dead_letters(Some("picky")).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].id.as_str(), dead[0].seq, dead[0].status),
            ("inc-1/3", 3, Some(422))
        );
        assert!(dead[0].body.contains("inc-1/3") && !dead[0].replay);

        // Replayed while still refused: it stays, no longer queued.
        assert_eq!(
            outbox
                .request_replay(Some("picky"), Some("inc-1/3"))
                .unwrap(),
            1
        );
        eventually("the replay is settled", || {
            outbox.dead_letters(None).unwrap().iter().all(|d| !d.replay)
        });
        assert_eq!(outbox.dead_letters(None).unwrap().len(), 1);
        // Taken this time: delivered and gone from the dead letters.
        refuse.lock().unwrap().clear();
        assert_eq!(outbox.request_replay(None, None).unwrap(), 1);
        eventually("the replay is delivered", || {
            outbox.dead_letters(None).unwrap().is_empty()
        });
        assert_eq!(got.lock().unwrap().last().unwrap(), "inc-1/3");
        assert_eq!(outbox.request_replay(None, Some("inc-1/3")).unwrap(), 0);
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
    }

    /// Holds each delivery until `open` is set.
    struct GatedSink {
        open: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl IncidentSink for GatedSink {
        fn name(&self) -> &str {
            "gated"
        }
        async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
            while !self.open.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    }

    #[test]
    fn a_sink_behind_by_more_than_the_limit_shows_the_alarm_until_it_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let rt = runtime();
        let open = Arc::new(AtomicBool::new(false));
        let health = ComponentHealth::detached("gated", "sink");
        let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
        let incidents: Vec<RiskEvent> = (1..=10).map(incident).collect();
        committer.commit(&incidents, None).unwrap();
        let deliveries = spawn_deliveries_with(
            rt.handle(),
            &path,
            vec![(
                Box::new(GatedSink {
                    open: Arc::clone(&open),
                }),
                health.clone(),
            )],
            committer.wake_handle(),
            DeliveryOptions {
                lag_alarm_events: 5,
            },
        );
        eventually("the alarm shows", || {
            health
                .status()
                .unwrap()
                .reason
                .is_some_and(|r| r == "10 events behind, limit 5")
        });
        assert_eq!(health.status().unwrap().state, ComponentState::Retrying);
        open.store(true, Ordering::SeqCst);
        eventually("the sink is up again", || {
            health.status().unwrap().state == ComponentState::Up
        });
        assert!(deliveries.shutdown(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn a_huge_shutdown_deadline_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let rt = runtime();
        let deliveries = spawn_deliveries(rt.handle(), &path, Vec::new(), CommitSignal::new());
        assert!(deliveries.shutdown(Duration::MAX).is_empty());
    }
}
