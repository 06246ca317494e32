//! Event time and failing stages, on real footage: replays are exact, cameras in one cell
//! share its incidents, and a stage that dies takes the process down only after draining.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skynet::{PipelineError, RunOptions, pipeline};
use skynet_core::{BBox, Detection};
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_emit::{CloudEvent, Outbox};

fn events(dir: &std::path::Path) -> Vec<CloudEvent> {
    Outbox::open(&dir.join("outbox.sqlite"))
        .unwrap()
        .events()
        .unwrap()
}

fn with_start(config: &str) -> String {
    config.replace(
        "max_frames =",
        "start_at = \"2026-11-26T08:00:00Z\"\nmax_frames =",
    )
}

#[test]
fn replaying_the_same_file_with_the_same_config_gives_identical_incidents() {
    let _ = common::runtime();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        // Snapshot urls name the directory; one base for both runs.
        let text = with_start(&common::vtest_config(
            dir.path(),
            "cam-replay",
            common::WALKWAY,
            200,
        ))
        .replace(
            "[evidence]\n",
            "[evidence]\nurl_base = \"https://skynet.test/evidence/\"\n",
        );
        let config = common::pipeline_config(dir.path(), &text);
        pipeline::run(&config, RunOptions::default()).unwrap();
        runs.push(events(dir.path()));
    }
    assert!(!runs[0].is_empty());
    assert_eq!(runs[0], runs[1], "ids, revisions and content are the same");
    // The timeline is start_at plus the frames' timestamps.
    assert!(
        runs[0][0]
            .data
            .first_seen
            .to_rfc3339()
            .starts_with("2026-11-26T08:00:")
    );
}

#[test]
fn running_again_on_the_same_outbox_applies_nothing_twice() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let text = with_start(&common::vtest_config(
        dir.path(),
        "cam-again",
        common::WALKWAY,
        120,
    ));
    let config = common::pipeline_config(dir.path(), &text);
    pipeline::run(&config, RunOptions::default()).unwrap();
    let first = events(dir.path());
    let again = pipeline::run(&config, RunOptions::default()).unwrap();
    assert_eq!(again.frames_late, 120, "{again:?}");
    assert_eq!(events(dir.path()), first);
}

#[test]
fn a_fast_camera_and_a_paced_one_in_one_cell_make_one_incident() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    // Both replay vtest.avi from the same start into the same cell: the fast one covers 50 s
    // of footage in a few seconds, the paced one 6 s. Their evidence is of one cell and one
    // category, so it is one incident, whichever camera's frames come first; closed after 5
    // quiet seconds, evidence within the cooldown reopens the same incident.
    let mut text = with_start(&common::vtest_config(
        dir.path(),
        "cam-fast",
        common::WALKWAY,
        500,
    ))
    .replace("close_after_s = 120", "close_after_s = 5");
    let paced = text[text.find("[[cameras]]").unwrap()..]
        .replace("cam-fast", "cam-paced")
        .replace("max_frames = 500", "max_frames = 60\nrealtime = true");
    text.push_str(&paced);
    let config = common::pipeline_config(dir.path(), &text);
    let summary = pipeline::run(&config, RunOptions::default()).unwrap();
    // The paced camera is live: under load it may drop its oldest frames, never stall.
    assert_eq!(
        summary.frames_analysed + summary.frames_dropped,
        560,
        "{summary:?}"
    );

    let all = events(dir.path());
    assert!(!all.is_empty());
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|e| e.data.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one incident: {all:#?}");
    assert!(
        all.windows(2)
            .all(|w| w[0].data.revision < w[1].data.revision)
    );
    let cameras: std::collections::BTreeSet<&str> = all
        .iter()
        .flat_map(|e| e.data.contributions.iter().map(|c| c.source.id.as_str()))
        .collect();
    assert_eq!(
        cameras.into_iter().collect::<Vec<_>>(),
        vec!["cam-fast", "cam-paced"],
        "both cameras' evidence is in it"
    );
}

/// Finds a person on the walkway in every frame, and panics on the `panic_at`-th call.
struct PanickingDetector {
    calls: Arc<AtomicU64>,
    panic_at: u64,
}

impl Detector for PanickingDetector {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.panic_at {
            panic!("injected fault in the detect stage");
        }
        // Feet at (0.5, 0.47) of the frame: inside the walkway zone.
        let (w, h) = (image.width as f32, image.height as f32);
        Ok(vec![Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(0.48 * w, 0.3 * h, 0.52 * w, 0.47 * h),
            track: None,
        }])
    }
}

#[test]
fn a_detect_stage_that_panics_drains_what_it_can_and_fails_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_start(&common::vtest_config(
        dir.path(),
        "cam-fault",
        common::WALKWAY,
        400,
    ));
    let config = common::pipeline_config(dir.path(), &text);
    let calls = Arc::new(AtomicU64::new(0));
    let detectors: Vec<Box<dyn Detector>> = vec![Box::new(PanickingDetector {
        calls: Arc::clone(&calls),
        panic_at: 100,
    })];
    let result = pipeline::run(
        &config,
        RunOptions {
            detectors: Some(detectors),
            ..RunOptions::default()
        },
    );
    match result {
        Err(PipelineError::StageFailed { stage, cause }) => {
            assert_eq!(stage, "detect-0");
            assert!(
                cause.contains("injected fault in the detect stage"),
                "{cause}"
            );
        }
        other => panic!("expected a failed detect stage, got {other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        100,
        "the source stopped instead of feeding a dead stage"
    );
    // What was found before the fault was committed and delivered.
    let stored = events(dir.path());
    assert!(!stored.is_empty());
    let jsonl = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    let incident_lines = jsonl
        .lines()
        .filter(|l| l.contains(r#""type":"skynet.incident.v1""#))
        .count();
    assert_eq!(incident_lines, stored.len());
    let outbox = Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
    assert_eq!(outbox.pending_count("jsonl").unwrap(), 0);
}

/// Starting from nothing would leave the incidents the state held open downstream for ever:
/// an unreadable state stops the start and says how to recover (issue 21).
#[test]
fn a_saved_state_that_cannot_be_read_stops_the_start_and_names_the_file() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let text = with_start(&common::vtest_config(
        dir.path(),
        "cam-fresh",
        common::WALKWAY,
        60,
    ));
    let config = common::pipeline_config(dir.path(), &text);
    let mut outbox = Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
    outbox.commit(&[], Some("{\"version\": 99}")).unwrap();
    drop(outbox);
    let Err(e) = pipeline::run(&config, RunOptions::default()) else {
        panic!("started without the saved state");
    };
    let message = e.to_string();
    assert!(message.contains("outbox.sqlite"), "{message}");
    assert!(message.contains("skynet state recover"), "{message}");
    assert!(events(dir.path()).is_empty(), "nothing ran");
}
