//! A full disk, simulated with SQLite's `max_page_count` on the committing connection: a
//! commit is refused as "disk full" and retried; what was committed before stays committed
//! and is still delivered meanwhile; once there is room again the same commit goes in, once,
//! and nothing was lost.

use std::path::Path;
use std::time::Duration;

use skynet_core::{ComponentHealth, RiskEvent};
use skynet_emit::{Committer, DeliveryOptions, JsonLinesSink, Outbox, spawn_deliveries_with};

use crate::common::{eventually, incident_revision, outbox_ids, tokio_runtime};

fn revisions(from: u32, to: u32) -> Vec<RiskEvent> {
    (from..=to)
        .map(|r| incident_revision("inc-disk", r, "G-0201"))
        .collect()
}

fn delivered(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_full_disk_refuses_commits_keeps_what_was_committed_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let outbox_path = dir.path().join("outbox.sqlite");
    let jsonl = dir.path().join("events.jsonl");
    let runtime = tokio_runtime();
    let mut committer = Committer::new("n1", Outbox::open(&outbox_path).unwrap());
    let sink: Box<dyn skynet_emit::IncidentSink> = Box::new(JsonLinesSink::new("file", &jsonl));
    let deliveries = spawn_deliveries_with(
        runtime.handle(),
        &outbox_path,
        vec![(sink, ComponentHealth::detached("file", "sink"))],
        committer.wake_handle(),
        DeliveryOptions::default(),
    );

    let before = revisions(1, 20);
    committer.commit(&before, None).unwrap();
    let committed = outbox_ids(&committer);
    assert_eq!(committed.len(), 20);

    // The disk is full: no page may be added.
    let pages = committer.outbox().page_count().unwrap();
    committer.outbox().set_max_page_count(pages).unwrap();
    let during = revisions(21, 200);
    let mut refusals = 0;
    let stored = loop {
        match committer.commit(&during, None) {
            Ok(events) => break events,
            Err(e) => {
                assert!(e.is_disk_full(), "not a full disk: {e}");
                refusals += 1;
                // What was committed before is all there, and readable, while full.
                assert_eq!(outbox_ids(&committer), committed);
                if refusals == 3 {
                    // Space returns.
                    committer.outbox().set_max_page_count(pages * 100).unwrap();
                }
            }
        }
    };
    assert_eq!(refusals, 3);
    assert_eq!(stored.len(), during.len());

    // Nothing lost, nothing twice: every revision committed once and delivered.
    let all = outbox_ids(&committer);
    assert_eq!(all.len(), 200);
    assert!(committed.is_subset(&all));
    let integrity: String = rusqlite::Connection::open(&outbox_path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert!(
        eventually(Duration::from_secs(30), || delivered(&jsonl).len() >= 200),
        "delivered {} of 200",
        delivered(&jsonl).len()
    );
    let got: std::collections::BTreeSet<String> = delivered(&jsonl).into_iter().collect();
    assert_eq!(got, all);
    assert!(deliveries.shutdown(Duration::from_secs(10)).is_empty());
}
