//! An edge's cameras: the items assigned to this node by rendezvous hashing, each run only
//! while this node holds its lease. The loop takes the leases of the items it is assigned,
//! renews them, and releases those it is no longer assigned (a member joined), so the new
//! owner takes them at once; an item whose previous owner crashed is taken as soon as that
//! owner's lease expires.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::{Assignments, ClusterError, Lease, Leases, Membership, Role, Timing, View};

/// The items this node may run now, kept by a task. Dropping it stops the task without
/// releasing anything, as a crash would (the leases expire); [`Claims::stop`] releases them.
pub struct Claims {
    runnable: watch::Receiver<BTreeSet<String>>,
    /// Shared with the task, so that dropping the claims empties the set at once.
    publish: Arc<watch::Sender<BTreeSet<String>>>,
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
        let (tx, runnable) = watch::channel(BTreeSet::new());
        let tx = Arc::new(tx);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let keeper = Keeper {
            assignments: Assignments::new(node, role, items),
            leases,
            timing,
            held: BTreeMap::new(),
            renewed: BTreeMap::new(),
        };
        let task = tokio::spawn(
            keeper
                .run(membership.view(role), tx.clone(), stopped)
                .instrument(span),
        );
        Self {
            runnable,
            publish: tx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The items this node may run now: assigned to it, and their lease surely held (with
    /// a margin of two checks before the lease's end: the set is refreshed every check,
    /// and an item leaves it before its lease is released). Stop running an item once it
    /// leaves the set; the set is emptied when the claims stop or are dropped.
    pub fn runnable(&self) -> watch::Receiver<BTreeSet<String>> {
        self.runnable.clone()
    }

    /// Stops claiming and releases every lease held, so the others take them at once.
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
        self.publish.send_replace(BTreeSet::new());
    }
}

struct Keeper {
    assignments: Assignments,
    leases: Leases,
    timing: Timing,
    held: BTreeMap<String, Lease>,
    /// When each held lease was last written (taken or renewed).
    renewed: BTreeMap<String, Instant>,
}

impl Keeper {
    async fn run(
        mut self,
        mut view: watch::Receiver<View>,
        runnable: Arc<watch::Sender<BTreeSet<String>>>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut check = tokio::time::interval(self.timing.check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                changed = view.changed() => if changed.is_err() {
                    // The membership is gone: claim nothing more; leases run out.
                    break;
                },
                _ = check.tick() => {}
            }
            // Leases near their end leave the set before any network round trip.
            self.publish(&runnable);
            let current = view.borrow_and_update().clone();
            self.step(&current, &runnable).await;
            self.publish(&runnable);
        }
        runnable.send_replace(BTreeSet::new());
        for (key, lease) in std::mem::take(&mut self.held) {
            if let Err(e) = self.leases.release(lease).await {
                tracing::debug!(lease = %key, error = %e, "release at stop");
            }
        }
    }

    /// How often a held lease is renewed: every heartbeat, or more often where the lease
    /// bucket was made by a node with a shorter expiry (its leases last only that long).
    fn renew_every(&self) -> std::time::Duration {
        self.timing.heartbeat.min(self.leases.ttl() / 2)
    }

    /// Publishes the items whose lease is held for at least two more checks.
    fn publish(&self, runnable: &watch::Sender<BTreeSet<String>>) {
        let until = Instant::now() + self.timing.check * 2;
        let usable: BTreeSet<String> = self
            .held
            .iter()
            .filter(|(_, l)| until < l.valid_until())
            .map(|(k, _)| k.clone())
            .collect();
        runnable.send_if_modified(|old| {
            if *old == usable {
                false
            } else {
                *old = usable;
                true
            }
        });
    }

    async fn step(&mut self, view: &View, runnable: &watch::Sender<BTreeSet<String>>) {
        let mine: BTreeSet<String> = self.assignments.update(view).into_iter().collect();
        let now = Instant::now();
        // No longer ours (a member joined, or this node is not live): hand over at once.
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|k| !mine.contains(*k))
            .cloned()
            .collect();
        let mut handed_over = Vec::new();
        for key in gone {
            self.renewed.remove(&key);
            if let Some(lease) = self.held.remove(&key) {
                handed_over.push(lease);
            }
        }
        if !handed_over.is_empty() {
            // Stop running them before the new owner can take them.
            self.publish(runnable);
            for lease in handed_over {
                let key = lease.key().to_string();
                if let Err(e) = self.leases.release(lease).await {
                    tracing::debug!(lease = %key, error = %e, "release of a reassigned item");
                }
            }
        }
        let renew_every = self.renew_every();
        for key in &mine {
            match self.held.get_mut(key) {
                Some(lease) => {
                    let due = self
                        .renewed
                        .get(key)
                        .is_none_or(|at| now.duration_since(*at) >= renew_every);
                    if !due {
                        continue;
                    }
                    match self.leases.renew(lease).await {
                        Ok(()) => {
                            self.renewed.insert(key.clone(), now);
                        }
                        Err(ClusterError::LeaseLost { .. }) => {
                            self.held.remove(key);
                            self.renewed.remove(key);
                        }
                        Err(e) => {
                            tracing::warn!(lease = %key, error = %e, "lease renewal failed");
                            if !lease.held() {
                                self.held.remove(key);
                                self.renewed.remove(key);
                            }
                        }
                    }
                }
                None => match self.leases.try_acquire(key).await {
                    Ok(Some(lease)) => {
                        tracing::info!(lease = %key, "took the lease");
                        self.held.insert(key.clone(), lease);
                        self.renewed.insert(key.clone(), now);
                    }
                    // Its previous owner still holds it (it has not released it yet, or it
                    // crashed and its lease has not expired): try again at the next check.
                    Ok(None) => {}
                    Err(e) => tracing::warn!(lease = %key, error = %e, "lease not taken"),
                },
            }
        }
    }
}
