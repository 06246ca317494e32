//! A city of many nodes: who is alive in which role, who owns which item, and who holds
//! which camera, on NATS JetStream KV with no consensus of our own.
//!
//! - [`Membership`]: each node puts `<role>.<node>` in the `skynet_members` bucket every
//!   third of `failover_s` and watches the bucket; a member whose heartbeat is not seen for
//!   two thirds of `failover_s` has vanished. Leaving deletes the key at once.
//! - [`owner`] and [`assignments`]: rendezvous (highest-random-weight) hashing over the live
//!   members, so when one member leaves only its items move.
//! - [`Leases`]: `camera.<id>` in the `skynet_leases` bucket, taken only if absent, renewed
//!   with compare-and-swap on its revision, expired by the bucket's age limit.
//! - [`Claims`]: an edge's share of the cameras, each run only while its lease is held.

pub mod bus;
mod claims;
mod config;
mod describe;
mod error;
mod hash;
mod lease;
mod membership;

pub use claims::Claims;
pub use config::{ClusterConfig, Role, Timing, UnknownRole, check_node_name};
pub use describe::describe_metrics;
pub use error::ClusterError;
pub use hash::{Assignments, assignments, owner};
pub use lease::{LEASES_BUCKET, Lease, Leases};
pub use membership::{MEMBERS_BUCKET, Membership, View};

/// Connects to the cluster's NATS as the NATS sink does (credentials file, nkey, token,
/// user and password from the environment, or `user:password@` in the URL). The error
/// never carries a password.
pub async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    if config.is_single_node() {
        return Err(ClusterError::SingleNode);
    }
    skynet_emit::connect_nats(config.url.expose(), config.credentials.as_deref())
        .await
        .map_err(ClusterError::Connect)
}
