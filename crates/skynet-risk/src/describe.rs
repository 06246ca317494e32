//! The descriptions (`# HELP`) of the metrics this crate records, installed once the
//! process's recorder is (skynet calls every stage crate's `describe_metrics()` at start).

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "skynet_grid_risk_level",
        "Risk level of a grid cell: 0 none, 1 IV, 2 III, 3 II, 4 I."
    );
    describe_counter!(
        "skynet_fusion_matches_total",
        "Times a fusion rule's conditions were all met, per rule."
    );
    describe_counter!(
        "skynet_deadlines_missed_total",
        "Incident deadlines missed, per deadline (dispatch, resolve); each escalated an incident."
    );
    describe_counter!(
        "skynet_observations_rejected_total",
        "Observations the risk engine refused as invalid."
    );
    describe_counter!(
        "skynet_false_alarms_total",
        "Incidents the case system rejected as false alarms, per category, device and rule."
    );
    describe_counter!(
        "skynet_case_status_applied_total",
        "Case status events that moved an incident, per status."
    );
    describe_counter!(
        "skynet_case_status_refused_total",
        "Case status events refused and not applied, kept in the dead letters (sink cases), per reason: source, signature, department, duplicate, schema, transition."
    );
    describe_counter!(
        "skynet_clock_jumps_total",
        "Times an input moved the risk engine's clock forward by more than [risk] max_clock_step_s (a wall clock stepped, a device with a wrong clock); the clock followed in steps of that size."
    );
    describe_counter!(
        "skynet_observations_recorded_total",
        "Observations appended to the [risk] record file."
    );
    describe_counter!(
        "skynet_observations_record_errors_total",
        "Failures that stopped the recording of observations to the [risk] record file."
    );
}
