//! Leases: one holder per item (`camera.<id>`), in a JetStream KV bucket.
//!
//! Taking is `create` (only if the key is absent, or deleted); renewing is `update` with the
//! revision the holder last wrote (compare-and-swap), so a holder that lost the key can
//! never renew it back. A lease not renewed expires with the bucket's `max_age`, after
//! which another node can take it. The holder counts its lease as held only until `ttl`
//! after it *sent* its last successful write: the server stamps the write later than that,
//! so the server expires the key no sooner than the holder stops counting on it. That is
//! the guarantee: an item is never run by two nodes at once for longer than a lease.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::time::Instant;

use crate::membership::open_bucket;
use crate::{ClusterConfig, ClusterError, check_node_name};

/// The bucket of leases: `camera.<id>` and the like, one value each.
pub const LEASES_BUCKET: &str = "skynet_leases";

/// The leases of one node.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    node: String,
    ttl: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A lease this node holds. It is run only while [`Lease::held`]; renew it every
/// [`crate::Timing::heartbeat`].
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
    valid_until: Instant,
}

impl Lease {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The revision of this holder's last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Until when this holder may act on the lease without renewing it.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// True while the lease is surely this node's; past it, stop running the item.
    pub fn held(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

impl Leases {
    /// Opens (or creates) the lease bucket, with `max_age` of [`crate::Timing::expiry`].
    /// Where the bucket was made with a shorter age, leases last that long here too; a
    /// bucket without an age would keep a crashed holder's leases for ever, and is refused.
    pub async fn open(
        client: &async_nats::Client,
        config: &ClusterConfig,
        node: &str,
    ) -> Result<Self, ClusterError> {
        check_node_name("name", node).map_err(|_| ClusterError::InvalidKey(node.to_string()))?;
        let expiry = config.timing().expiry;
        let kv = open_bucket(client, LEASES_BUCKET, expiry, config.replicas).await?;
        let status = kv
            .status()
            .await
            .map_err(|e| ClusterError::bucket(LEASES_BUCKET, e))?;
        let age = status.max_age();
        if age.is_zero() {
            return Err(ClusterError::bucket(
                LEASES_BUCKET,
                "has no max_age: a crashed holder's leases would never expire",
            ));
        }
        if age > expiry {
            // Leases last as long as the bucket says; a holder here must not count on
            // less, and takers must wait for the bucket's age.
            tracing::warn!(
                node,
                bucket_max_age_s = age.as_secs_f64(),
                "the lease bucket's max_age is longer than this node's expiry: failover takes longer"
            );
        }
        // Renewing before the shorter of the two keeps the lease alive either way.
        let ttl = age.min(expiry);
        Ok(Self {
            kv,
            node: node.to_string(),
            ttl,
        })
    }

    /// The key of a camera's lease.
    pub fn camera_key(camera: &str) -> String {
        format!("camera.{camera}")
    }

    /// How long a lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn value(&self) -> Bytes {
        Bytes::from(serde_json::json!({ "node": self.node }).to_string())
    }

    /// Takes `key` if no one holds it; `Ok(None)` while another holds it.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Lease>, ClusterError> {
        let sent = Instant::now();
        match self.kv.create(key, self.value()).await {
            Ok(revision) => {
                tracing::debug!(node = %self.node, lease = key, revision, "lease taken");
                Ok(Some(Lease {
                    key: key.to_string(),
                    revision,
                    valid_until: sent + self.ttl,
                }))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
                Err(ClusterError::InvalidKey(key.to_string()))
            }
            Err(e) => Err(ClusterError::key(LEASES_BUCKET, key, e)),
        }
    }

    /// Renews `lease`. [`ClusterError::LeaseLost`] when another wrote the key since (or it
    /// expired and was taken, or was released): stop running the item. Any other error
    /// leaves the lease as it was: retry while it is still [`Lease::held`].
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), ClusterError> {
        let sent = Instant::now();
        match self
            .kv
            .update(&lease.key, self.value(), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                lease.valid_until = sent + self.ttl;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(node = %self.node, lease = %lease.key, "lease lost");
                lease.valid_until = sent;
                Err(ClusterError::LeaseLost {
                    key: lease.key.clone(),
                })
            }
            Err(e) => Err(ClusterError::key(LEASES_BUCKET, &lease.key, e)),
        }
    }

    /// Gives `lease` up at once, so another can take it without waiting for the expiry.
    /// Only this holder's revision is deleted: a lease already taken by another stays.
    pub async fn release(&self, lease: Lease) -> Result<(), ClusterError> {
        match self
            .kv
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                Err(ClusterError::LeaseLost { key: lease.key })
            }
            Err(e) => Err(ClusterError::key(LEASES_BUCKET, &lease.key, e)),
        }
    }

    /// The node holding `key` as the bucket says now, if any.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, ClusterError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| ClusterError::key(LEASES_BUCKET, key, e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.value).ok())
            .and_then(|v| v.get("node")?.as_str().map(str::to_string)))
    }
}
