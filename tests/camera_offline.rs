//! The `camera_offline` incident across restarts: opened while a camera is unreachable, and
//! closed when the camera leaves the config.

mod common;

use std::path::Path;
use std::time::Duration;

use skynet::{RunOptions, pipeline};
use skynet_core::{Detection, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_emit::Outbox;

struct NoDetections;

impl Detector for NoDetections {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        Ok(Vec::new())
    }
}

/// Runs the pipeline; with `stop_when`, stops it once that holds (polled; a deadline of
/// 120 s for a loaded machine) rather than after a fixed time.
fn run(
    dir: &Path,
    text: &str,
    stop_when: Option<Box<dyn Fn() -> bool + Send>>,
) -> skynet::RunSummary {
    let config = common::pipeline_config(dir, text);
    let shutdown = Shutdown::new();
    if let Some(done) = stop_when {
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            common::eventually(Duration::from_secs(120), done);
            stop.trigger();
        });
    }
    pipeline::run(
        &config,
        RunOptions {
            shutdown,
            detectors: Some(vec![Box::new(NoDetections) as Box<dyn Detector>]),
            ..RunOptions::default()
        },
    )
    .unwrap()
}

fn offline_revisions(dir: &Path) -> Vec<(String, u32, String)> {
    Outbox::open(&dir.join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.data.category == "camera_offline")
        .map(|e| {
            (
                format!("{:?}", e.data.status),
                e.data.revision,
                e.data.camera.to_string(),
            )
        })
        .collect()
}

#[test]
fn an_unreachable_camera_opens_camera_offline_and_leaving_the_config_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = common::vtest_config(dir.path(), "cam-file", common::NOBODY, 10);
    let with_gone = format!(
        "{base}\n[[cameras]]\nid = \"cam-unreachable\"\nowner = \"police\"\nuri = \"rtsp://127.0.0.1:{nothing}/cam\"\ngrid = \"G-0101\"\noffline_after_s = 1\nreconnect = {{ initial_backoff_s = 0.1, max_backoff_s = 0.2 }}\n"
    );
    // Never connects: offline after 1 s, the incident in its cell. Stopped once it is
    // committed.
    let outbox = dir.path().join("outbox.sqlite");
    run(
        dir.path(),
        &with_gone,
        Some(Box::new(move || {
            outbox.exists()
                && Outbox::open(&outbox)
                    .and_then(|o| o.events())
                    .is_ok_and(|e| e.iter().any(|e| e.data.category == "camera_offline"))
        })),
    );
    assert_eq!(
        offline_revisions(dir.path()),
        vec![("Opened".into(), 1, "cam-unreachable".into())]
    );
    let events = Outbox::open(&dir.path().join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap();
    let opened = &events
        .iter()
        .find(|e| e.data.category == "camera_offline")
        .unwrap()
        .data;
    assert_eq!(opened.grid.as_str(), "G-0101");
    assert_eq!(opened.rule.kind, "device_fault");

    // Restarted without that camera: its incident closes, under the same id.
    run(dir.path(), &base, None);
    let revisions = offline_revisions(dir.path());
    assert_eq!(
        revisions,
        vec![
            ("Opened".into(), 1, "cam-unreachable".into()),
            ("Closed".into(), 2, "cam-unreachable".into())
        ]
    );
}
