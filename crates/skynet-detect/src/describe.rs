//! The descriptions (`# HELP`) of the metrics this crate records, installed once the
//! process's recorder is (skynet calls every stage crate's `describe_metrics()` at start).

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "skynet_sensor_observations_total",
        "Sensor rule hits, per sensor and rule."
    );
    describe_counter!(
        "skynet_sensor_suppressed_total",
        "Sensor rule hits suppressed while the rule was flapping, per sensor and rule."
    );
    describe_gauge!(
        "skynet_sensor_flapping",
        "1 while a sensor rule is flapping, else 0, per sensor and rule."
    );
}
