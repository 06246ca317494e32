//! One sink's delivery loop: reads the outbox from the sink's own cursor, delivers in
//! batches, stores refused events as dead letters, retries with backoff, and shows the sink's
//! health and lag. Each worker runs in its own task with its own outbox connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use skynet_core::ComponentHealth;
use tokio::sync::watch;

use crate::{DeadLetter, Delivery, EmitError, IncidentSink, Outbox, Rejection, StoredEvent};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// While shutting down, retries come at least this often: a sink that recovers is then
/// still drained before the deadline.
const DRAIN_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// An idle sink looks at the outbox this often even without a signal, to see events that
/// another process (or the previous run) committed.
const RECHECK: Duration = Duration::from_secs(1);
/// The pending gauge is recounted at most this often: the count scans the backlog.
const RECOUNT_EVERY: Duration = Duration::from_millis(500);
/// A delivery taking longer than this shows the sink as not up until it completes.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// One sink's delivery loop.
pub(super) struct Worker {
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
    /// The destination refuses the sink as a whole (a webhook's 401): shown as the
    /// `refusing` state and alarmed until an event is taken again.
    refusing: bool,
    /// Registered when the task starts.
    gauges: Option<Gauges>,
}

struct Gauges {
    pending: metrics::Gauge,
    lag: metrics::Gauge,
    alarm: metrics::Gauge,
    refusing: metrics::Gauge,
}

/// The health detail of a sink its destination refuses (`/readyz`, the console).
pub(crate) const REFUSING: &str = "refusing";

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
    /// A worker for `sink` that has seen no commit, no stop and no outcome yet.
    pub(super) fn new(
        sink: Box<dyn IncidentSink>,
        health: ComponentHealth,
        outbox_path: PathBuf,
        commits: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        pending: Arc<AtomicU64>,
        lag_limit: u64,
    ) -> Self {
        Self {
            name: sink.name().to_string(),
            sink,
            health,
            outbox_path,
            commits,
            commits_open: true,
            stop,
            stop_open: true,
            draining: false,
            backoff: FIRST_BACKOFF,
            reported_up: false,
            pending,
            lag_limit,
            lag_alarm: false,
            alarm_shown: false,
            refusing: false,
            gauges: None,
        }
    }

    pub(super) async fn run(mut self) {
        let emitted =
            metrics::counter!("skynet_incidents_emitted_total", "sink" => self.name.clone());
        let dead_letters =
            metrics::counter!("skynet_sink_dead_letters_total", "sink" => self.name.clone());
        let alarm = metrics::gauge!("skynet_sink_lag_alarm", "sink" => self.name.clone());
        alarm.set(0.0);
        let refusing = metrics::gauge!("skynet_sink_refusing", "sink" => self.name.clone());
        refusing.set(0.0);
        self.gauges = Some(Gauges {
            pending: metrics::gauge!("skynet_outbox_pending", "sink" => self.name.clone()),
            lag: metrics::gauge!("skynet_sink_lag_events", "sink" => self.name.clone()),
            alarm,
            refusing,
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
                self.settled(handled.failure, handled.refusing).await;
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
                self.set_refusing(None);
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
            self.settled(handled.failure, handled.refusing).await;
        }
    }

    /// After a batch's outcome is stored: up again, or, when the rest of the batch failed,
    /// the failure reported and backed off (what came before it is kept, and the sink does
    /// not show as up meanwhile).
    async fn settled(&mut self, failure: Option<String>, refusing: bool) {
        match failure {
            Some(message) => {
                let sink = self.name.clone();
                let e = if refusing {
                    EmitError::Refusing { sink, message }
                } else {
                    EmitError::Sink { sink, message }
                };
                self.failed(&e).await;
            }
            None => {
                self.set_refusing(None);
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
            refusing: delivery.refusing,
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

    /// Turns the `refusing` state on (with the alarm: an ERROR line once, the
    /// `skynet_sink_refusing` gauge, the health detail) or off.
    fn set_refusing(&mut self, error: Option<&EmitError>) {
        let on = error.is_some();
        if on == self.refusing {
            return;
        }
        self.refusing = on;
        if let Some(g) = &self.gauges {
            g.refusing.set(if on { 1.0 } else { 0.0 });
        }
        if let Some(error) = error {
            tracing::error!(sink = %self.name, error = %error,
                "the destination refuses this sink (credentials or URL?); its events wait in the outbox and are retried with backoff, none is dead-lettered");
            self.health.describe(Some(REFUSING), None);
        } else {
            tracing::info!(sink = %self.name, "the destination no longer refuses this sink");
            self.health.describe(None, None);
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
        let refused = matches!(error, EmitError::Refusing { .. });
        if !(refused && self.refusing) {
            tracing::warn!(sink = %self.name, error = %error, retry_in = ?wait, "sink delivery failed; will retry");
        }
        self.health.retrying(error.to_string());
        self.set_refusing(refused.then_some(error));
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
    /// The failure is the destination refusing the sink.
    refusing: bool,
}

/// `d` stretched by up to 10 %, so sinks that failed together do not retry in lockstep.
fn jittered(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    // RandomState is randomly keyed per instance: enough randomness here, with no dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    d.mul_f64(1.0 + (r % 1000) as f64 / 10_000.0)
}
