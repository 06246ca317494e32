//! The commit side of delivery: revisions become CloudEvents and are committed to the outbox
//! on the pipeline's own (blocking) thread, which then wakes the sink workers and goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use skynet_core::RiskEvent;
use tokio::sync::watch;

use crate::{EmitError, Outbox, OutboxEvent};

const PRUNE_EVERY: Duration = Duration::from_secs(600);
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
    retention: Option<(chrono::Duration, Vec<String>)>,
    last_prune: Option<Instant>,
    last_checkpoint: Option<Instant>,
    last_truncate: Option<Instant>,
}

impl Committer {
    pub fn new(node: impl Into<String>, outbox: Outbox) -> Self {
        Self {
            node: node.into(),
            outbox,
            signal: CommitSignal::new(),
            retention: None,
            last_prune: None,
            // The first checkpoints come a period after the start, not at once.
            last_checkpoint: Some(Instant::now()),
            last_truncate: Some(Instant::now()),
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
        self.prune_if_due();
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
        self.prune_if_due();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn incident(revision: u32) -> RiskEvent {
        RiskEvent::Incident(crate::test_support::incident(revision, 0.3))
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
}
