//! The pipeline's Prometheus metrics, rendered and served over HTTP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use skynet::{RunOptions, pipeline};

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_name_every_stage_and_are_served_over_http() {
    let addr = free_port();
    let services = std::sync::Arc::new(skynet::Services::start(Some(addr)).unwrap());
    let handle = services.metrics.clone();
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(
        dir.path(),
        &common::vtest_config(dir.path(), "cam-metrics", common::WALKWAY, 60),
    );
    let summary = pipeline::run(
        &config,
        RunOptions {
            services: Some(std::sync::Arc::clone(&services)),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(summary.incident_revisions >= 1, "{summary:?}");

    let text = handle.render();
    for expected in [
        "skynet_frames_decoded_total{camera=\"cam-metrics\"} 60",
        "skynet_frames_analysed_total{camera=\"cam-metrics\"} 60",
        "skynet_inference_seconds_count{model=\"yolox_nano\"} 60",
        "skynet_frame_latency_seconds_bucket{camera=\"cam-metrics\"",
        // Drained at the end: the gauge follows items out, not only in.
        "skynet_queue_depth{queue=\"frames\",source=\"cam-metrics\"} 0",
        "skynet_observations_total{camera=\"cam-metrics\",rule=\"zone-rule\"}",
        "skynet_grid_risk_score{grid=\"G-0102\"}",
        "skynet_incidents_stored_total",
        "skynet_incidents_emitted_total{sink=\"jsonl\"}",
        "skynet_outbox_pending{sink=\"jsonl\"} 0",
        "# HELP skynet_inference_seconds Model inference time per frame, per model.",
        // The file played out: the camera is stopped, not up, and said which decoder it used.
        "skynet_camera_state{camera=\"cam-metrics\",state=\"stopped\"} 1",
        "skynet_camera_state{camera=\"cam-metrics\",state=\"running\"} 0",
        "skynet_camera_up{camera=\"cam-metrics\"} 0",
        "skynet_camera_decoder{camera=\"cam-metrics\",decoder=\"avdec_msmpeg4\",hardware=\"false\"} 1",
        "# HELP skynet_camera_state",
        "# HELP skynet_frames_skipped_total",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }

    let response = http_get(addr, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("skynet_frames_decoded_total{camera=\"cam-metrics\"} 60"));
    for (component, kind) in [
        ("cam-metrics", "source"),
        ("detect-0", "stage"),
        ("risk", "stage"),
        ("outbox", "stage"),
        ("jsonl", "sink"),
    ] {
        let line = format!("skynet_component_up{{component=\"{component}\",kind=\"{kind}\"}} 1");
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    // A file read to the end is finished, not down: the process is still ready.
    let ready = http_get(addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("\"state\":\"finished\""), "{ready}");
    assert!(http_get(addr, "/healthz").starts_with("HTTP/1.1 200"));
}
