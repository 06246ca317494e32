//! The descriptions (`# HELP`) of every metric skynet records: each stage crate describes
//! the metrics it records, and this module those the binary's own wiring records.

/// Describes every metric of every crate; called once the metrics recorder is installed
/// (descriptions given before that are lost).
pub fn describe_metrics() {
    skynet_serve::describe_metrics();
    skynet_ingest::describe_metrics();
    skynet_detect::describe_metrics();
    skynet_risk::describe_metrics();
    skynet_snapshot::describe_metrics();
    skynet_emit::describe_metrics();
    skynet_cluster::describe_metrics();
    describe_own_metrics();
}

/// The metrics the binary's wiring records itself.
fn describe_own_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "skynet_console_preview_errors_total",
        "Camera tiles for the console that could not be drawn."
    );
    describe_counter!(
        "skynet_config_reloads_total",
        "Hot reloads of the config (SIGHUP or --watch), per outcome: ok (applied), error (invalid, or a change that needs a restart: refused, the running config goes on)."
    );
    // The console role's projection of SKYNET_INCIDENTS and its status changes.
    describe_counter!(
        "skynet_console_projection_events_total",
        "Events of the incidents stream a console-role console read, per outcome: applied (stored and shown), stale (a revision not newer than the one held, or one already stored), invalid (not an incident or cell-level CloudEvent)."
    );
    describe_counter!(
        "skynet_console_case_status_sent_total",
        "Status changes and acknowledgements a console-role console sent as signed case-status events, per outcome (sent: JetStream acknowledged it; failed: the person got a 503)."
    );
    describe_histogram!(
        "skynet_sensor_latency_seconds",
        Unit::Seconds,
        "From a sensor message's arrival to its observation."
    );
    // The bus between an edge and the scorers (`kind`: observation or reading).
    describe_counter!(
        "skynet_bus_published_total",
        "Messages an edge published on the SKYNET_OBSERVATIONS stream and JetStream acknowledged, per kind (observation, reading)."
    );
    describe_counter!(
        "skynet_bus_publish_retries_total",
        "Messages published again after a failed publish or a missing JetStream ack, per kind (nothing is dropped: they wait and are retried with backoff)."
    );
    describe_counter!(
        "skynet_bus_publish_refused_total",
        "Messages the SKYNET_OBSERVATIONS stream refused for good on publishing (too large for it), logged and skipped, per kind."
    );
    describe_gauge!(
        "skynet_bus_publish_queue_depth",
        "Messages handed to an edge's bus publisher and not yet acknowledged by JetStream, per kind; the stages before it wait while it is full."
    );
    describe_histogram!(
        "skynet_bus_publish_seconds",
        Unit::Seconds,
        "From a message's hand-over to the bus publisher to JetStream's ack (queueing and retries included), per kind."
    );
    // The scorer's side of the bus.
    describe_counter!(
        "skynet_bus_refused_total",
        "Messages of the SKYNET_OBSERVATIONS stream a scorer refused (not an observation or reading, or a grid other than its subject's), logged with subject and sequence and skipped, per kind."
    );
    describe_counter!(
        "skynet_bus_applied_total",
        "Messages of the SKYNET_OBSERVATIONS stream a scorer applied for the cells it owns, per kind (observation); one replayed after a handover counts again (each is logged at debug with its stream sequence)."
    );
    describe_counter!(
        "skynet_case_status_not_owned_total",
        "Case-status events a scorer took for an incident not in its cells: deferred (delivered again after a third of failover_s, as its cell may be moving to this scorer) or dropped (older than three times failover_s), per outcome."
    );
    describe_gauge!(
        "skynet_cluster_observation_lag_seconds",
        Unit::Seconds,
        "How far behind its own time the last observation of an owned cell was applied by its scorer (now minus the observation's time), per grid cell."
    );
}
