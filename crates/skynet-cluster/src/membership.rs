//! Who is alive, per role: heartbeats into a JetStream KV bucket and a watch on it.
//!
//! nats-server 2.9 removes a key past the bucket's `max_age` without telling watchers, so
//! expiry is not seen in the watch: each node stamps every heartbeat it sees with its own
//! monotonic clock and drops a member unseen for [`Timing::expiry`]. The bucket's
//! `max_age` (the same expiry) only keeps dead members out of the history that a node
//! joining later reads. No clocks are compared between machines.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::{ClusterConfig, ClusterError, Role, Timing, check_node_name};

/// The bucket of members: `<role>.<node>`, one value each, expiring when not renewed.
pub const MEMBERS_BUCKET: &str = "skynet_members";

/// How many vanished members a view remembers (bounded: a flapping fleet cannot grow it).
const CRASHED_KEPT: usize = 1024;

/// The live members of one role as this node sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Node names, sorted.
    pub members: Vec<String>,
    /// Nodes of this role that vanished without leaving (their heartbeat expired) in the
    /// last while (15 expiries) and have not come back, sorted: their items fail over.
    pub crashed: Vec<String>,
}

/// This node's membership: its heartbeat and its watch of every role's members. Dropping
/// it stops both without deleting the key, as a crash would (the others see the member
/// vanish after the expiry); [`Membership::leave`] deletes the key at once.
pub struct Membership {
    node: String,
    role: Role,
    key: String,
    kv: kv::Store,
    views: BTreeMap<Role, watch::Receiver<View>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Opens `bucket`, creating it with one value per key and `max_age` when missing. An
/// existing bucket is used as it is (another node may have made it with its own settings).
///
/// The bucket's stream is made here as the KV clients make it, not with async-nats's
/// `create_key_value`: that first asks for the account's info, whose reply from
/// nats-server 2.9 (Debian 12's) async-nats 0.51 cannot parse.
pub(crate) async fn open_bucket(
    client: &async_nats::Client,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    // The values are a few bytes of JSON: bounded.
    open_bucket_sized(client, bucket, max_age, replicas, 4096).await
}

/// [`open_bucket`] with values of up to `max_value_bytes`; a `max_age` of zero keeps
/// values until they are replaced.
pub(crate) async fn open_bucket_sized(
    client: &async_nats::Client,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
    max_value_bytes: i32,
) -> Result<kv::Store, ClusterError> {
    let js = jetstream::new(client.clone());
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: max_value_bytes,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    get_or_create_stream(&js, stream)
        .await
        .map_err(|e| ClusterError::bucket(bucket, e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::bucket(bucket, e))
}

/// `get_or_create_stream`, tried again a few times: nodes starting together race to create
/// the same stream, and nats-server 2.9 may refuse the loser's create ("subjects overlap
/// with an existing stream") instead of answering with the stream the winner made; the next
/// look finds it.
pub(crate) async fn get_or_create_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    const TRIES: u32 = 5;
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if attempt < TRIES => {
                tracing::debug!(stream = %config.name, attempt, error = %e, "stream not opened; trying again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl Membership {
    /// Joins the cluster as `node` in `role`: puts the member key, then keeps it alive and
    /// watches every member. Returns once the key is stored.
    pub async fn join(
        client: &async_nats::Client,
        config: &ClusterConfig,
        node: &str,
        role: Role,
    ) -> Result<Self, ClusterError> {
        check_node_name("name", node).map_err(|_| ClusterError::InvalidKey(node.to_string()))?;
        let timing = config.timing();
        let span = tracing::info_span!("cluster", node = %node, role = %role);
        let kv = open_bucket(client, MEMBERS_BUCKET, timing.expiry, config.replicas)
            .instrument(span.clone())
            .await?;
        let key = format!("{role}.{node}");
        let value =
            Bytes::from(serde_json::json!({ "node": node, "role": role.as_str() }).to_string());
        kv.put(&key, value.clone())
            .await
            .map_err(|e| ClusterError::key(MEMBERS_BUCKET, &key, e))?;
        let watcher = kv
            .watch_with_history(">")
            .await
            .map_err(|e| ClusterError::bucket(MEMBERS_BUCKET, e))?;

        let mut senders = BTreeMap::new();
        let mut views = BTreeMap::new();
        for r in Role::EVERY {
            let (tx, rx) = watch::channel(View::default());
            senders.insert(r, tx);
            views.insert(r, rx);
        }
        let watching = tokio::spawn(
            watch_members(kv.clone(), watcher, senders, timing).instrument(span.clone()),
        );
        let beating = tokio::spawn(
            heartbeat(kv.clone(), key.clone(), value, timing).instrument(span.clone()),
        );
        span.in_scope(|| tracing::info!(bucket = MEMBERS_BUCKET, "joined the cluster"));
        Ok(Self {
            node: node.to_string(),
            role,
            key,
            kv,
            views,
            tasks: vec![watching, beating],
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The live members of `role`, updated as they join, leave and vanish.
    pub fn view(&self, role: Role) -> watch::Receiver<View> {
        // Every role has a channel from join on.
        self.views
            .get(&role)
            .cloned()
            .unwrap_or_else(|| watch::channel(View::default()).1)
    }

    /// The live members of `role` now, sorted.
    pub fn members(&self, role: Role) -> Vec<String> {
        self.view(role).borrow().members.clone()
    }

    /// Leaves at once: stops the heartbeat and deletes the member key, so the others move
    /// this node's items without waiting for the expiry.
    pub async fn leave(mut self) -> Result<(), ClusterError> {
        self.stop();
        self.kv
            .delete(&self.key)
            .await
            .map_err(|e| ClusterError::key(MEMBERS_BUCKET, &self.key, e))?;
        tracing::info!(node = %self.node, role = %self.role, "left the cluster");
        Ok(())
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn heartbeat(kv: kv::Store, key: String, value: Bytes, timing: Timing) {
    let mut every = tokio::time::interval(timing.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await; // The first put was join's.
    loop {
        every.tick().await;
        if let Err(e) = kv.put(&key, value.clone()).await {
            // The others drop this node after the expiry; it goes on trying.
            tracing::warn!(error = %e, "member heartbeat failed");
        }
    }
}

/// Each member seen, by key, with when its last heartbeat was seen here.
#[derive(Default)]
struct Seen {
    live: HashMap<String, Instant>,
    crashed: HashMap<String, Instant>,
    /// The newest revision seen of each key: a watch made anew replays the last value of
    /// every key, and a heartbeat already seen must not count as a new one (that would keep
    /// a dead member alive for another expiry).
    revisions: HashMap<String, u64>,
}

impl Seen {
    fn apply(&mut self, key: &str, operation: kv::Operation, revision: u64, now: Instant) {
        let newest = self.revisions.entry(key.to_string()).or_insert(0);
        if revision != 0 && revision <= *newest {
            return;
        }
        *newest = revision;
        match operation {
            kv::Operation::Put => {
                self.crashed.remove(key);
                self.live.insert(key.to_string(), now);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                // Left: its items move, but it did not fail.
                self.live.remove(key);
                self.crashed.remove(key);
            }
        }
    }

    fn expire(&mut self, now: Instant, timing: Timing) {
        let expired: Vec<String> = self
            .live
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= timing.expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.live.remove(&key);
            tracing::warn!(member = %key, "a member's heartbeat expired: it vanished");
            self.crashed.insert(key, now);
        }
        let memory = timing.expiry * 15;
        self.crashed
            .retain(|_, at| now.duration_since(*at) < memory);
        while self.crashed.len() > CRASHED_KEPT {
            let Some(oldest) = self
                .crashed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.crashed.remove(&oldest);
        }
    }

    fn view(&self, role: Role) -> View {
        let of_role = |keys: &mut dyn Iterator<Item = &String>| -> Vec<String> {
            let mut names: Vec<String> = keys
                .filter_map(|k| k.split_once('.'))
                .filter(|(r, _)| *r == role.as_str())
                .map(|(_, n)| n.to_string())
                .collect();
            names.sort_unstable();
            names
        };
        View {
            members: of_role(&mut self.live.keys()),
            crashed: of_role(&mut self.crashed.keys()),
        }
    }
}

async fn watch_members(
    kv: kv::Store,
    watcher: kv::Watch,
    senders: BTreeMap<Role, watch::Sender<View>>,
    timing: Timing,
) {
    let mut watcher = Some(watcher);
    let mut seen = Seen::default();
    let mut check = tokio::time::interval(timing.check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // This node's own heartbeat comes through the watch every `heartbeat`: a watch silent
    // for much longer has stalled (seen when a NATS node of the bucket's stream dies: the
    // ordered consumer behind it may neither deliver nor fail), and is made anew.
    let silent_after = timing.heartbeat * 2;
    let mut last_entry = Instant::now();
    loop {
        tokio::select! {
            entry = next_entry(&mut watcher) => match entry {
                Some(Ok(entry)) => {
                    last_entry = Instant::now();
                    seen.apply(&entry.key, entry.operation, entry.revision, last_entry);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "member watch failed; watching anew");
                    watcher = None;
                }
                None => {
                    tracing::warn!("member watch ended; watching anew");
                    watcher = None;
                }
            },
            _ = check.tick() => {
                let now = Instant::now();
                seen.expire(now, timing);
                if watcher.is_some() && now.duration_since(last_entry) >= silent_after {
                    tracing::warn!("member watch silent for two heartbeats; watching anew");
                    metrics::counter!("skynet_cluster_watch_restarts_total").increment(1);
                    watcher = None;
                    last_entry = now;
                }
                if watcher.is_none() {
                    // Meanwhile members age out here, this node included: while it cannot
                    // see the cluster it claims nothing.
                    match kv.watch_with_history(">").await {
                        Ok(w) => watcher = Some(w),
                        Err(e) => tracing::debug!(error = %e, "member watch not yet back"),
                    }
                }
            }
        }
        for (role, tx) in &senders {
            let view = seen.view(*role);
            let members = view.members.len();
            let changed = tx.send_if_modified(|old| {
                if *old == view {
                    false
                } else {
                    *old = view;
                    true
                }
            });
            if changed {
                metrics::gauge!("skynet_cluster_members", "role" => role.as_str())
                    .set(members as f64);
            }
        }
    }
}

async fn next_entry(
    watcher: &mut Option<kv::Watch>,
) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_vanish_after_the_expiry_and_leavers_at_once() {
        let timing = ClusterConfig::default().timing();
        let mut seen = Seen::default();
        let t0 = Instant::now();
        seen.apply("edge.a", kv::Operation::Put, 1, t0);
        seen.apply("edge.b", kv::Operation::Put, 2, t0);
        seen.apply("scorer.c", kv::Operation::Put, 3, t0);
        assert_eq!(seen.view(Role::Edge).members, ["a", "b"]);
        assert_eq!(seen.view(Role::Scorer).members, ["c"]);

        // a beats on; b does not; c leaves.
        let t1 = t0 + timing.heartbeat * 2;
        seen.apply("edge.a", kv::Operation::Put, 4, t1);
        seen.apply("scorer.c", kv::Operation::Delete, 5, t1);
        seen.expire(t0 + timing.expiry, timing);
        assert_eq!(
            seen.view(Role::Edge),
            View {
                members: vec!["a".into()],
                crashed: vec!["b".into()]
            }
        );
        assert_eq!(seen.view(Role::Scorer), View::default());

        // A watch made anew replays b's last heartbeat: already seen, it changes nothing.
        seen.apply("edge.b", kv::Operation::Put, 2, t1);
        assert_eq!(seen.view(Role::Edge).members, ["a"]);

        // b comes back: live, no longer crashed.
        seen.apply("edge.b", kv::Operation::Put, 6, t1);
        assert_eq!(seen.view(Role::Edge).members, ["a", "b"]);
        assert!(seen.view(Role::Edge).crashed.is_empty());
    }
}
