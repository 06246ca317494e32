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
        "Snapshots that failed (the revision went out without one), and event clips that could not be written."
    );
    describe_counter!(
        "skynet_evidence_skipped_total",
        "Revisions with new detections but no snapshot, per reason: incident_interval, rate_limit, no_frame."
    );
    describe_counter!(
        "skynet_evidence_deleted_total",
        "Evidence files (snapshots and clips) deleted after retain_days or over max_gb."
    );
    describe_counter!(
        "skynet_clips_written_total",
        "Event clips (MP4) written, per camera."
    );
    describe_counter!("skynet_clip_bytes_total", "Bytes of event clips written.");
}
