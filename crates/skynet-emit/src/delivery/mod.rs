//! Commit and delivery, kept apart. The pipeline commits incidents to the outbox on its own
//! thread and goes on; each sink then runs in its own task with its own cursor and retry, so
//! a sink that is slow, failing or blocked holds up neither the commit nor the other sinks.
//!
//! - [`commit`]: the commit side, on the pipeline's thread ([`Committer`], [`CommitSignal`]).
//! - [`worker`]: one sink's delivery loop, with its cursor, retries and lag alarm.
//! - here: spawning one worker per sink, and their shutdown ([`Deliveries`]).

mod commit;
#[cfg(test)]
mod tests;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use skynet_core::ComponentHealth;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use commit::{CommitSignal, Committer};
use worker::Worker;

use crate::{IncidentSink, Outbox};

/// How often `shutdown` looks whether the tasks are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

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
            let worker = Worker::new(
                sink,
                health,
                outbox_path.to_path_buf(),
                signal.subscribe(),
                stop.subscribe(),
                Arc::clone(&pending),
                options.lag_alarm_events,
            );
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
