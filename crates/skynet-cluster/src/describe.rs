//! The descriptions (`# HELP`) of the metrics this crate records.

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "skynet_cluster_members",
        "Live members of the cluster per role, as this node sees them (heartbeats in the skynet_members KV bucket)."
    );
    describe_gauge!(
        "skynet_cluster_assignments",
        "Items (cameras for an edge, grid cells for a scorer) assigned to a node by rendezvous hashing over the live members, per node and role."
    );
    describe_counter!(
        "skynet_failovers_total",
        "Items this node took over because their owner vanished without leaving (its heartbeat expired), per role."
    );
    describe_counter!(
        "skynet_cluster_watch_restarts_total",
        "Times the watch of the skynet_members bucket went silent for two heartbeats (this node's own heartbeat did not come through) and was made anew."
    );
}
