//! A corrupt state file: `skynet run` refuses to start from nothing (the incidents the state
//! held would stay open downstream for ever), names the file and the way out, and
//! `skynet state recover` closes those incidents with a `state_lost` revision that reaches
//! the sinks; the next `skynet run` starts afresh.

use std::path::Path;
use std::process::{Command, Output};

use skynet_emit::{Outbox, StateChanges};

use crate::common;

fn skynet(args: &[&str]) -> Output {
    Command::new(common::skynet_bin())
        .args(args)
        .current_dir(common::repo())
        .output()
        .expect("skynet starts")
}

fn run_until_eof(config: &Path) -> Output {
    skynet(&["run", "--config", config.to_str().unwrap(), "--until-eof"])
}

/// The incidents the outbox's history lists as not closed.
fn open_incidents(outbox: &Path) -> Vec<skynet_core::Incident> {
    Outbox::open(outbox)
        .unwrap()
        .incidents()
        .unwrap()
        .into_iter()
        .filter(|i| i.status != skynet_core::IncidentStatus::Closed)
        .collect()
}

#[test]
fn a_corrupt_state_stops_the_start_and_recover_closes_what_it_held() {
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.sqlite");
    let config = dir.path().join("skynet.toml");
    // People walk through the zone: incidents open, and stay open at the end of the file
    // (they close only after `close_after_s`).
    std::fs::write(
        &config,
        common::vtest_config(dir.path(), "cam-state", common::WALKWAY, 60),
    )
    .unwrap();
    let first = run_until_eof(&config);
    assert!(first.status.success(), "{}", common::text(&first.stderr));
    let open = open_incidents(&outbox);
    assert!(!open.is_empty(), "the first run left an incident open");
    let stored = Outbox::open(&outbox).unwrap().load_state_rows().unwrap();
    assert!(!stored.cells.is_empty(), "the engine's cells are rows");

    // Garbage in a state row, written as a commit would.
    Outbox::open(&outbox)
        .unwrap()
        .commit_state(
            &[],
            &StateChanges {
                pipeline: stored.pipeline.clone().unwrap(),
                cells: vec![(stored.cells[0].0.clone(), Some("\u{1}garbage{".into()))],
                ids: Vec::new(),
            },
        )
        .unwrap();
    let refused = run_until_eof(&config);
    let stderr = common::text(&refused.stderr);
    assert!(!refused.status.success(), "started from a corrupt state");
    assert!(stderr.contains(&outbox.display().to_string()), "{stderr}");
    assert!(stderr.contains("skynet state recover"), "{stderr}");
    assert!(
        stderr.contains(&stored.cells[0].0),
        "names the row: {stderr}"
    );
    // Nothing was applied or closed by the refused start.
    assert_eq!(open_incidents(&outbox).len(), open.len());

    let recovered = skynet(&["state", "recover", "--config", config.to_str().unwrap()]);
    assert!(
        recovered.status.success(),
        "{}",
        common::text(&recovered.stderr)
    );
    assert!(open_incidents(&outbox).is_empty());
    let history = Outbox::open(&outbox).unwrap().incidents().unwrap();
    for before in &open {
        let after = history.iter().find(|i| i.id == before.id).unwrap();
        assert_eq!(after.revision, before.revision + 1);
        assert_eq!(after.change, skynet_core::IncidentChange::StateLost);
        assert_eq!(after.state, skynet_core::IncidentState::Closed);
    }
    assert!(
        Outbox::open(&outbox)
            .unwrap()
            .load_state_rows()
            .unwrap()
            .is_empty()
    );

    // The next start is a fresh one, and it delivers the closing revisions to the sink.
    let again = run_until_eof(&config);
    assert!(again.status.success(), "{}", common::text(&again.stderr));
    let jsonl = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    for before in &open {
        let closing = jsonl
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["data"]["id"] == before.id.as_str() && e["data"]["change"] == "state_lost");
        let closing = closing.unwrap_or_else(|| panic!("no state_lost revision of {}", before.id));
        assert_eq!(closing["data"]["status"], "closed");
        assert_eq!(closing["data"]["revision"], before.revision + 1);
    }
}
