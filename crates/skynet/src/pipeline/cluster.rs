//! A process of a city of many nodes: its NATS connection and its membership in its role
//! (`skynet run --role edge|scorer|console` with `[cluster] url`). The role's own parts
//! (the edge's camera claims and publishers, the scorer's cells, the console's projection)
//! build on this.

use skynet_cluster::{Membership, Role};

use super::{PipelineError, Services};
use crate::config::PipelineConfig;

/// This process in the cluster: connected, and a live member of its role.
pub(crate) struct ClusterNode {
    pub(crate) client: async_nats::Client,
    pub(crate) membership: Membership,
    pub(crate) role: Role,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl ClusterNode {
    pub(crate) fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Leaves the membership at once (the others take over without waiting for the
    /// expiry); dropping it instead lets the heartbeat lapse, as a crash would.
    pub(crate) fn leave(self) {
        let node = self.membership.node().to_string();
        if let Err(e) = self.runtime.block_on(self.membership.leave()) {
            tracing::warn!(node = %node, error = %e, "leaving the cluster");
        }
    }
}

/// Connects and joins in `role`; `None` for `Role::All` (the single node needs no NATS).
pub(crate) fn join(
    config: &PipelineConfig,
    role: Role,
    services: &Services,
) -> Result<Option<ClusterNode>, PipelineError> {
    if role == Role::All {
        return Ok(None);
    }
    let runtime = services.runtime();
    let cluster = &config.cluster;
    let (client, membership) = runtime
        .block_on(async {
            let client = skynet_cluster::connect(cluster).await?;
            let membership = Membership::join(&client, cluster, &config.node, role).await?;
            Ok::<_, skynet_cluster::ClusterError>((client, membership))
        })
        .map_err(|e| PipelineError::Cluster(e.to_string()))?;
    tracing::info!(node = %config.node, role = %role, cluster = %cluster.name, "joined the cluster");
    Ok(Some(ClusterNode {
        client,
        membership,
        role,
        runtime,
    }))
}
