//! The descriptions (`# HELP`) of the metrics this crate records, installed once the
//! process's recorder is (skynet calls every stage crate's `describe_metrics()` at start).

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "skynet_evidence_written_total",
        "Snapshots written for incident revisions."
    );
    describe_counter!(
        "skynet_evidence_errors_total",
        "Snapshots that failed (the revision went out without one)."
    );
    describe_counter!(
        "skynet_evidence_skipped_total",
        "Revisions with new detections but no snapshot, per reason: incident_interval, rate_limit, no_frame."
    );
    describe_counter!(
        "skynet_evidence_deleted_total",
        "Snapshots deleted after retain_days."
    );
}
