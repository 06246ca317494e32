//! Serve stage: what operators and engineers reach over the network. Today that is the
//! Prometheus endpoint; the live console, hazard tickets and tuning tools join it here.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("metrics endpoint on {addr}: {reason}")]
    Metrics { addr: String, reason: String },
}

/// Latency buckets for inference and end-to-end timings, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide metrics recorder, serving `/metrics` on `listen` when given.
/// Returns a handle that renders the current metrics as Prometheus text.
pub fn install_metrics(listen: Option<SocketAddr>) -> Result<PrometheusHandle, ServeError> {
    let addr = listen.map_or_else(|| "(none)".to_string(), |a| a.to_string());
    let err = |reason: String| ServeError::Metrics {
        addr: addr.clone(),
        reason,
    };
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| err(e.to_string()))?;
    let handle = match listen {
        None => builder.install_recorder().map_err(|e| err(e.to_string()))?,
        Some(listen) => {
            // The exporter runs on its own small runtime so the pipeline's threads stay plain.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| err(e.to_string()))?;
            let (recorder, exporter) = {
                let _entered = runtime.enter();
                builder
                    .with_http_listener(listen)
                    .build()
                    .map_err(|e| err(e.to_string()))?
            };
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| err(e.to_string()))?;
            std::thread::Builder::new()
                .name("metrics-http".into())
                .spawn(move || {
                    if let Err(e) = runtime.block_on(exporter) {
                        tracing::error!(error = ?e, "metrics endpoint stopped");
                    }
                })
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(%listen, "serving Prometheus metrics at /metrics");
            handle
        }
    };
    describe_metrics();
    Ok(handle)
}

/// Names and explains every metric the pipeline records.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("skynet_frames_decoded_total", "Frames decoded, per camera.");
    describe_counter!(
        "skynet_frames_invalid_total",
        "Decoded frames skipped as malformed, per camera."
    );
    describe_counter!(
        "skynet_frames_analysed_total",
        "Frames that went through detection, per camera."
    );
    describe_counter!(
        "skynet_queue_dropped_total",
        "Items dropped from a full queue (oldest first), per queue and source."
    );
    describe_gauge!(
        "skynet_queue_depth",
        "Items waiting in a stage queue, per queue and source."
    );
    describe_histogram!(
        "skynet_inference_seconds",
        Unit::Seconds,
        "Model inference time per frame, per model."
    );
    describe_histogram!(
        "skynet_frame_latency_seconds",
        Unit::Seconds,
        "From decode to rules applied, per camera."
    );
    describe_counter!(
        "skynet_source_errors_total",
        "Camera streams that failed, per camera."
    );
    describe_counter!(
        "skynet_detect_errors_total",
        "Frames the detector could not process, per camera."
    );
    describe_counter!(
        "skynet_observations_total",
        "Rule hits that became evidence, per camera and rule."
    );
    describe_gauge!(
        "skynet_grid_risk_score",
        "Fused risk score of a grid cell, 0 to 1."
    );
    describe_gauge!("skynet_incidents_open", "Incidents currently open.");
    describe_counter!(
        "skynet_incidents_stored_total",
        "Incident revisions committed to the outbox."
    );
    describe_counter!(
        "skynet_incidents_emitted_total",
        "Incident events delivered, per sink."
    );
    describe_counter!(
        "skynet_sink_retries_total",
        "Failed deliveries that will be retried, per sink."
    );
    describe_gauge!(
        "skynet_outbox_pending",
        "Events in the outbox a sink has not acknowledged, per sink."
    );
}
