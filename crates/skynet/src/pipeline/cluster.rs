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
    pub(crate) runtime: tokio::runtime::Handle,
    /// Keeps the `cluster` component's health (what `/readyz` shows for the role).
    watch: tokio::task::JoinHandle<()>,
}

impl ClusterNode {
    pub(crate) fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Leaves the membership at once (the others take over without waiting for the
    /// expiry); dropping it instead lets the heartbeat lapse, as a crash would.
    pub(crate) fn leave(self) {
        self.watch.abort();
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
    let health = services.health.register("cluster", "cluster");
    let watch = runtime.spawn(watch_health(
        client.clone(),
        membership.view(role),
        config.node.clone(),
        format!("{role} {} in {}", config.node, cluster.name),
        health,
    ));
    Ok(Some(ClusterNode {
        client,
        membership,
        runtime,
        watch,
    }))
}

/// `/readyz` for a role: the `cluster` component is up while the NATS connection is up and
/// this node is a live member of its role (a node cut off for longer than the expiry has
/// lost its share to the others, and says so).
async fn watch_health(
    client: async_nats::Client,
    mut view: tokio::sync::watch::Receiver<skynet_cluster::View>,
    node: String,
    detail: String,
    health: skynet_core::ComponentHealth,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last = None;
    loop {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let live = view.borrow_and_update().members.contains(&node);
        // Reported on a change only: each report of a failure counts as a retry.
        if last != Some((connected, live)) {
            last = Some((connected, live));
            match (connected, live) {
                (true, true) => health.up(),
                (false, _) => health.retrying("the cluster's NATS is not connected"),
                (true, false) => health.retrying("not (yet) a live member of its role"),
            }
            health.describe(Some(&detail), None);
        }
        tokio::select! {
            _ = every.tick() => {}
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}
