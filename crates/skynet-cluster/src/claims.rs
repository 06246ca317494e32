//! An edge's cameras: the items assigned to this node by rendezvous hashing, each run only
//! while this node holds its lease. The loop takes the leases of the items it is assigned,
//! renews them, and releases those it is no longer assigned (a member joined), so the new
//! owner takes them at once; an item whose previous owner crashed is taken as soon as that
//! owner's lease expires.
//!
//! NATS may be slow to answer (a JetStream leader election) or not answer at all: every KV
//! request is bounded, the requests of a check run side by side, and the set of runnable
//! items shrinks on time by a timer of its own, also while a check waits on NATS. So an
//! item leaves the set before its lease ends however long NATS takes, and another edge
//! that takes it after the lease expired never runs it at the same time as this one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    Assignments, ClusterError, LEASES_BUCKET, Lease, Leases, Membership, Role, Timing, View,
};

/// At most this many KV requests of one check are in flight at once: an edge of many
/// cameras does not flood NATS, and each request keeps its own deadline while it waits.
const IN_FLIGHT: usize = 32;

/// The items this node may run now, kept by a task. Dropping it stops the task without
/// releasing anything, as a crash would (the leases expire); [`Claims::stop`] releases them.
pub struct Claims {
    runnable: watch::Receiver<BTreeSet<String>>,
    /// Shared with the task, so that dropping the claims empties the set at once.
    book: Arc<Book>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("runnable", &*self.runnable.borrow())
            .finish_non_exhaustive()
    }
}

impl Claims {
    /// Starts claiming `items` (their lease keys, e.g. [`Leases::camera_key`]) for this
    /// node among the live members of `role`, with leases of `timing`.
    pub fn start(
        membership: &Membership,
        leases: Leases,
        role: Role,
        items: impl IntoIterator<Item = String>,
        timing: Timing,
    ) -> Self {
        let node = membership.node().to_string();
        let span = tracing::info_span!("claims", node = %node, role = %role);
        let book = Arc::new(Book::new(timing.check * 2));
        let runnable = book.runnable.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let keeper = Keeper {
            assignments: Assignments::new(node, role, items),
            leases,
            timing,
            held: BTreeMap::new(),
            renewed: BTreeMap::new(),
            book: book.clone(),
        };
        let task = tokio::spawn(keeper.run(membership.view(role), stopped).instrument(span));
        Self {
            runnable,
            book,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The items this node may run now: assigned to it, and their lease surely held, with
    /// a margin of two checks before the lease's end. An item leaves the set at that
    /// moment by a timer, even while a renewal still waits on NATS, and before its lease
    /// is released. Stop running an item once it leaves the set; the set is emptied when
    /// the claims stop or are dropped.
    pub fn runnable(&self) -> watch::Receiver<BTreeSet<String>> {
        self.runnable.clone()
    }

    /// Stops claiming and releases every lease held, so the others take them at once.
    /// A check in progress finishes first: each of its requests is bounded (a renewal by
    /// its lease's end, the others by a check).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Whoever still reads the set must stop running everything: nothing is renewed.
        // Closing also keeps the task, until the abort reaches it, from filling it again.
        self.book.close();
    }
}

/// Until when each held lease may be counted on, shared by the keeper's checks (which
/// write it as leases are taken, renewed, lost and given up) and the timer that takes
/// items out of the runnable set at their lease's end.
struct Book {
    state: Mutex<BookState>,
    runnable: watch::Sender<BTreeSet<String>>,
    /// An item leaves the set this long before its lease ends: time for whoever runs it to
    /// stop.
    margin: Duration,
    /// Wakes the timer when a lease's end changed, so it sleeps until the right moment.
    changed: Notify,
}

#[derive(Default)]
struct BookState {
    valid_until: BTreeMap<String, Instant>,
    /// Set when the claims stop or are dropped: the set stays empty.
    closed: bool,
}

impl Book {
    fn new(margin: Duration) -> Self {
        Self {
            state: Mutex::default(),
            runnable: watch::Sender::new(BTreeSet::new()),
            margin,
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BookState> {
        // The lock is never held across a panic that could leave the map half written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `key`'s lease is held until `until`, and publishes.
    fn hold(&self, key: &str, until: Instant) {
        {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.valid_until.insert(key.to_string(), until);
        }
        self.publish();
        self.changed.notify_one();
    }

    /// Forgets `keys`' leases, and publishes: they are no longer run.
    fn drop_keys<'a>(&self, keys: impl IntoIterator<Item = &'a String>) {
        {
            let mut state = self.state();
            for key in keys {
                state.valid_until.remove(key);
            }
        }
        self.publish();
        self.changed.notify_one();
    }

    /// Publishes the items whose lease is held for at least `margin` more, and returns
    /// when the next of them leaves the set (`None` while none is held).
    fn publish(&self) -> Option<Instant> {
        // The set is sent under the lock, so sets computed one after the other are sent in
        // that order and a closed book sends nothing more.
        let state = self.state();
        if state.closed {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let usable: BTreeSet<String> = state
            .valid_until
            .iter()
            .filter_map(|(key, until)| {
                let leaves = until.checked_sub(self.margin)?;
                (now < leaves).then(|| {
                    next = Some(next.map_or(leaves, |n| n.min(leaves)));
                    key.clone()
                })
            })
            .collect();
        self.runnable.send_if_modified(|old| {
            if *old == usable {
                false
            } else {
                *old = usable;
                true
            }
        });
        next
    }

    /// Empties the set for good.
    fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.valid_until.clear();
        self.runnable.send_replace(BTreeSet::new());
    }

    /// Publishes whenever an item's lease comes within `margin` of its end or the book
    /// changes; never returns (it is raced against the work it keeps on time).
    async fn keep_on_time(&self) {
        loop {
            let next = self.publish();
            let changed = self.changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

struct Keeper {
    assignments: Assignments,
    leases: Leases,
    timing: Timing,
    held: BTreeMap<String, Lease>,
    /// When each held lease was last written (taken or renewed).
    renewed: BTreeMap<String, Instant>,
    book: Arc<Book>,
}

impl Keeper {
    async fn run(
        mut self,
        mut view: watch::Receiver<View>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let book = self.book.clone();
        let mut check = tokio::time::interval(self.timing.check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'run: loop {
            // Between checks, and during each below, the set shrinks as leases near their
            // end, whatever the checks wait on.
            tokio::select! {
                _ = &mut stopped => break 'run,
                changed = view.changed() => if changed.is_err() {
                    // The membership is gone: claim nothing more; leases run out.
                    break 'run;
                },
                _ = check.tick() => {}
                () = book.keep_on_time() => {}
            }
            let current = view.borrow_and_update().clone();
            tokio::select! {
                () = self.step(&current) => {}
                () = book.keep_on_time() => {}
            }
        }
        book.close();
        let held = std::mem::take(&mut self.held);
        self.release_all(held.into_values(), "release at stop")
            .await;
    }

    /// How often a held lease is renewed: every heartbeat, or more often where the lease
    /// bucket was made by a node with a shorter expiry (its leases last only that long).
    fn renew_every(&self) -> Duration {
        self.timing.heartbeat.min(self.leases.ttl() / 2)
    }

    /// Gives up `leases` side by side, each waiting one check at most: unanswered, a lease
    /// just expires, and the others take it then.
    async fn release_all(&self, leases: impl IntoIterator<Item = Lease>, what: &'static str) {
        let (kv, wait) = (&self.leases, self.timing.check);
        let mut ops = Vec::new();
        for lease in leases {
            ops.push(async move {
                let key = lease.key().to_string();
                if let Err(e) = bounded(Instant::now() + wait, &key, kv.release(lease)).await {
                    tracing::debug!(lease = %key, error = %e, "{what}");
                }
            });
        }
        side_by_side(ops).await;
    }

    async fn step(&mut self, view: &View) {
        let mine: BTreeSet<String> = self.assignments.update(view).into_iter().collect();
        let now = Instant::now();
        // No longer ours (a member joined, or this node is not live): hand over at once.
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|k| !mine.contains(*k))
            .cloned()
            .collect();
        if !gone.is_empty() {
            // Stop running them before the new owner can take them.
            self.book.drop_keys(&gone);
            let handed_over: Vec<Lease> = gone
                .iter()
                .filter_map(|key| {
                    self.renewed.remove(key);
                    self.held.remove(key)
                })
                .collect();
            self.release_all(handed_over, "release of a reassigned item")
                .await;
        }
        self.renew_due(now).await;
        self.take_missing(&mine, now).await;
    }

    /// Renews the held leases due for it, side by side. Each renewal waits at most until
    /// its lease's end: past it the item has left the set, and the lease is given up here
    /// (a late answer that renewed it only delays whoever takes it next, by one lease).
    async fn renew_due(&mut self, now: Instant) {
        let renew_every = self.renew_every();
        let (kv, book, renewed) = (&self.leases, &*self.book, &self.renewed);
        let mut ops = Vec::new();
        for (key, lease) in self.held.iter_mut() {
            let due = renewed
                .get(key)
                .is_none_or(|at| now.duration_since(*at) >= renew_every);
            if !due {
                continue;
            }
            ops.push(async move {
                let outcome = match bounded(lease.valid_until(), key, kv.renew(lease)).await {
                    Ok(()) => {
                        book.hold(key, lease.valid_until());
                        Renewal::Renewed
                    }
                    // Out of the set at once: a lost lease may be another's already.
                    Err(ClusterError::LeaseLost { .. }) => {
                        book.drop_keys([key]);
                        Renewal::Gone
                    }
                    Err(e) if !lease.held() => {
                        book.drop_keys([key]);
                        tracing::warn!(lease = %key, error = %e, "lease not renewed before its end");
                        Renewal::Gone
                    }
                    // Still held: retried at the next check.
                    Err(e) => Renewal::Failed(e),
                };
                (key.clone(), outcome)
            });
        }
        let outcomes = side_by_side(ops).await;
        let mut failed = Failures::default();
        for (key, outcome) in outcomes {
            match outcome {
                Renewal::Renewed => {
                    self.renewed.insert(key, now);
                }
                Renewal::Gone => {
                    self.held.remove(&key);
                    self.renewed.remove(&key);
                }
                Renewal::Failed(e) => failed.add(e),
            }
        }
        failed.log("lease renewals failed (retried while the lease lasts)");
    }

    /// Tries to take the leases of the items assigned here and not held, side by side,
    /// each waiting one check at most. One taken but unanswered is simply not counted on:
    /// it expires, and is taken at a later check.
    async fn take_missing(&mut self, mine: &BTreeSet<String>, now: Instant) {
        let (kv, book, wait) = (&self.leases, &*self.book, self.timing.check);
        let mut ops = Vec::new();
        for key in mine.iter().filter(|key| !self.held.contains_key(*key)) {
            ops.push(async move {
                let result = bounded(Instant::now() + wait, key, kv.try_acquire(key)).await;
                if let Ok(Some(lease)) = &result {
                    book.hold(key, lease.valid_until());
                }
                (key.clone(), result)
            });
        }
        let results = side_by_side(ops).await;
        let mut failed = Failures::default();
        for (key, result) in results {
            match result {
                Ok(Some(lease)) => {
                    tracing::info!(lease = %key, "took the lease");
                    self.renewed.insert(key.clone(), now);
                    self.held.insert(key, lease);
                }
                // Its previous owner still holds it (it has not released it yet, or it
                // crashed and its lease has not expired): try again at the next check.
                Ok(None) => {}
                Err(e) => failed.add(e),
            }
        }
        failed.log("leases not taken (tried again at the next check)");
    }
}

/// What became of one lease's renewal.
enum Renewal {
    Renewed,
    /// Lost to another, or not renewed before its end: no longer counted on.
    Gone,
    /// Not renewed, but still held: retried at the next check.
    Failed(ClusterError),
}

/// The failed requests of one check, logged once (while NATS is down every item fails at
/// every check).
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<ClusterError>,
}

impl Failures {
    fn add(&mut self, e: ClusterError) {
        self.count += 1;
        self.first.get_or_insert(e);
    }

    fn log(&self, what: &'static str) {
        if let Some(e) = &self.first {
            tracing::warn!(count = self.count, error = %e, "{what}");
        }
    }
}

/// Runs `ops` side by side, at most [`IN_FLIGHT`] at once; their outputs in the order they
/// end.
async fn side_by_side<F: Future>(ops: Vec<F>) -> Vec<F::Output> {
    futures_util::stream::iter(ops)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// `op` on the lease `key`, given up at `deadline`: a NATS that does not answer (a leader
/// election, a stopped server) holds up no check for longer than that.
async fn bounded<T>(
    deadline: Instant,
    key: &str,
    op: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout_at(deadline, op)
        .await
        .unwrap_or_else(|_| Err(ClusterError::key(LEASES_BUCKET, key, "no answer in time")))
}
