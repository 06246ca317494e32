//! The commit side of delivery: revisions become CloudEvents and are committed to the outbox
//! on the pipeline's own (blocking) thread, which then wakes the sink workers and goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use skynet_core::RiskEvent;
use tokio::sync::watch;

use crate::{EmitError, Outbox, OutboxEvent};

/// How often the WAL is checkpointed while the commit thread is idle.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// How often that checkpoint also truncates the WAL file.
const TRUNCATE_EVERY: Duration = Duration::from_secs(600);

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

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// The commit side: runs on the caller's (blocking) thread.
pub struct Committer {
    node: String,
    outbox: Outbox,
    signal: CommitSignal,
    last_checkpoint: Option<Instant>,
    last_truncate: Option<Instant>,
}

impl Committer {
    pub fn new(node: impl Into<String>, outbox: Outbox) -> Self {
        Self {
            node: node.into(),
            outbox,
            signal: CommitSignal::new(),
            // The first checkpoints come a period after the start, not at once.
            last_checkpoint: Some(Instant::now()),
            last_truncate: Some(Instant::now()),
        }
    }

    /// Turns the revisions into CloudEvents and commits them with `state` in one
    /// transaction, then wakes the deliveries. Returns the events. Once this returns, the
    /// events will be delivered to every sink, across restarts if need be.
    pub fn commit(
        &mut self,
        changes: &[RiskEvent],
        state: Option<&str>,
    ) -> Result<Vec<OutboxEvent>, EmitError> {
        self.commit_events(changes, state.is_some(), |outbox, events| {
            outbox.commit(events, state)
        })
    }

    /// [`commit`](Self::commit) with the state as the rows that changed
    /// ([`StateChanges`](crate::StateChanges)).
    pub fn commit_state(
        &mut self,
        changes: &[RiskEvent],
        state: Option<&crate::StateChanges>,
    ) -> Result<Vec<OutboxEvent>, EmitError> {
        self.commit_events(changes, state.is_some(), |outbox, events| match state {
            Some(state) => outbox.commit_state(events, state),
            None => outbox.commit(events, None),
        })
    }

    fn commit_events(
        &mut self,
        changes: &[RiskEvent],
        with_state: bool,
        commit: impl FnOnce(&mut Outbox, &[OutboxEvent]) -> Result<usize, EmitError>,
    ) -> Result<Vec<OutboxEvent>, EmitError> {
        let events: Vec<OutboxEvent> = changes
            .iter()
            .map(|change| OutboxEvent::new(&self.node, change))
            .collect();
        // Nothing to write: skip the transaction and its fsync.
        if !events.is_empty() || with_state || self.outbox.has_staged_cases() {
            let inserted = commit(&mut self.outbox, &events)?;
            if inserted > 0 {
                metrics::counter!("skynet_incidents_stored_total").increment(inserted as u64);
                self.signal.notify();
            }
        }
        Ok(events)
    }

    /// Stages what the next commit records of case status events, in its transaction
    /// ([`Outbox::stage_cases`]).
    pub fn stage_cases(
        &mut self,
        records: Vec<crate::CaseRecord>,
        forget_before: Option<chrono::DateTime<Utc>>,
    ) {
        self.outbox.stage_cases(records, forget_before);
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Periodic housekeeping when idle (prune if due, checkpoint the WAL).
    pub fn idle(&mut self) {
        self.checkpoint_if_due();
    }

    /// Copies the WAL into the database every [`CHECKPOINT_EVERY`] of idle time, so it
    /// does not grow with the state rows rewritten by every commit: a passive checkpoint
    /// (never waits for a reader), and one that empties the WAL file every
    /// [`TRUNCATE_EVERY`].
    fn checkpoint_if_due(&mut self) {
        if self
            .last_checkpoint
            .is_some_and(|t| t.elapsed() < CHECKPOINT_EVERY)
        {
            return;
        }
        let truncate = self
            .last_truncate
            .is_none_or(|t| t.elapsed() >= TRUNCATE_EVERY);
        self.last_checkpoint = Some(Instant::now());
        if truncate {
            self.last_truncate = Some(Instant::now());
        }
        if let Err(e) = self.outbox.checkpoint(truncate) {
            tracing::warn!(error = %e, "could not checkpoint the outbox's WAL");
        }
    }

    /// A handle the deliveries wait on.
    pub fn wake_handle(&self) -> CommitSignal {
        self.signal.clone()
    }
}
