//! The descriptions (`# HELP`) of the metrics this crate records, installed once the
//! process's recorder is (skynet calls every stage crate's `describe_metrics()` at start).

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "skynet_case_consumer_retries_total",
        "Reconnections of the case status consumer after a failure."
    );
    describe_counter!(
        "skynet_case_status_received_total",
        "Case status events taken from the [cases] stream."
    );
    describe_counter!(
        "skynet_sink_dead_letters_total",
        "Events a sink's destination refused for good, kept in the dead letters, per sink (a replay refused again counts again)."
    );
    describe_counter!(
        "skynet_sink_duplicates_total",
        "Events JetStream had already stored (a retried batch), dropped by the server, per sink."
    );
    describe_gauge!(
        "skynet_sink_refusing",
        "1 while a sink's destination refuses it as a whole (a webhook's 401, 403, 404 or 410; a NATS stream that captures none of its subjects), else 0, per sink: its events wait in the outbox and are retried with backoff, none is dead-lettered."
    );
    describe_gauge!(
        "skynet_disk_free_bytes",
        "Free bytes on the filesystem holding the outbox (below [outbox] min_free_mb, /readyz says degraded)."
    );
    describe_counter!(
        "skynet_outbox_pruned_total",
        "Rows pruned past [outbox] retain_days, per table: events, incidents (closed), grid_risk (superseded levels), dead_letters."
    );
    describe_counter!(
        "skynet_sink_backlog_abandoned_total",
        "Undelivered events moved to a sink's dead letters because it stayed behind past [outbox] max_lag_days, per sink."
    );
    describe_gauge!(
        "skynet_sink_lag_events",
        "Events committed but not yet delivered to a sink, per sink."
    );
    describe_gauge!(
        "skynet_sink_lag_alarm",
        "1 while a sink is more than [outbox] lag_alarm_events behind, else 0, per sink."
    );
}
