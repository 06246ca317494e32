//! The suite every sink kind passes.
//!
//! A kind gets it by registering: the crate's tests run [`check_sink_kind`] over
//! [`register`](super::register)'s kinds, and a kind kept elsewhere (`examples/`) calls it on
//! itself. Without a [`Destination`] the suite checks what needs no destination: the kind's
//! example validates, and the sink builds while its destination is unreachable (skynet
//! starts, and keeps committing, while a destination is down). With one, it drives the real
//! commit and delivery worker through the promises every sink keeps:
//! - **order**: events arrive in commit order;
//! - **cursor**: once delivered, the sink's outbox cursor has nothing pending;
//! - **retries**: a destination that is down is retried until it is back, and nothing is
//!   lost (where the destination can be taken down);
//! - **dead letters**: an event the destination refuses for good is kept in the sink's dead
//!   letters and the events after it still arrive (where the destination can refuse one);
//! - **shutdown**: with the destination down, shutdown returns by its deadline and the
//!   undelivered events stay in the outbox for the next start.

use std::path::Path;
use std::time::{Duration, Instant};

use skynet_core::{ComponentHealth, ConfigContext, Kind, RiskEvent};

use super::{SinkBuildContext, SinkFamily};
use crate::{Committer, Outbox, spawn_deliveries};

/// A place a sink kind under test delivers to, that the suite can read back.
pub trait Destination {
    /// The kind's table (TOML, without `kind`) that delivers here; relative paths are
    /// resolved against `dir`, the suite's scratch directory.
    fn table(&self, dir: &Path) -> String;
    /// The ids of the events the destination holds, in arrival order.
    fn received(&self, dir: &Path) -> Vec<String>;
    /// Takes the destination down (`true`) or brings it back; `false` when it cannot.
    fn set_down(&self, _down: bool) -> bool {
        false
    }
    /// Makes the destination refuse, for good, the event with this id; `false` when it
    /// cannot.
    fn refuse(&self, _id: &str) -> bool {
        false
    }
}

/// Waits up to 20 s for `done`.
fn eventually(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > until {
            return Err(format!("timed out waiting until {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn revision(n: u32) -> (String, RiskEvent) {
    let incident = crate::test_support::incident(n, 0.3);
    (
        format!("{}/{n}", incident.id),
        RiskEvent::Incident(incident),
    )
}

/// Runs the suite on one kind; the error says which promise it broke.
pub fn check_sink_kind(
    kind: &Kind<SinkFamily>,
    destination: Option<&dyn Destination>,
) -> Result<(), String> {
    let name = kind.name;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cx = ConfigContext::new(&dir.path().join("skynet.toml")).with_node("conformance");
    let example = kind
        .parse_example(&cx)
        .map_err(|e| format!("sink kind `{name}`: its example does not validate: {e}"))?;
    let sink = example
        .build(&SinkBuildContext {
            name: "conformance",
        })
        .map_err(|e| format!("sink kind `{name}`: its example does not build: {e}"))?;
    if sink.name() != "conformance" {
        return Err(format!(
            "sink kind `{name}`: the built sink is named `{}`, not the name it was given",
            sink.name()
        ));
    }
    drop(sink);
    let Some(destination) = destination else {
        return Ok(());
    };

    let table: toml::Table = toml::from_str(&destination.table(dir.path()))
        .map_err(|e| format!("sink kind `{name}`: the destination's table: {e}"))?;
    let sink = (kind.parse)(table, &cx)
        .map_err(|e| format!("sink kind `{name}`: the destination's table: {e}"))?
        .build(&SinkBuildContext {
            name: "conformance",
        })
        .map_err(|e| format!("sink kind `{name}`: does not build: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let path = dir.path().join("outbox.sqlite");
    let outbox = Outbox::open(&path).map_err(|e| e.to_string())?;
    let mut committer = Committer::new("conformance", outbox);
    let health = ComponentHealth::detached("conformance", "sink");
    let deliveries = spawn_deliveries(
        runtime.handle(),
        &path,
        vec![(sink, health)],
        committer.wake_handle(),
    );
    let mut expected: Vec<String> = Vec::new();
    let mut commit = |range: std::ops::RangeInclusive<u32>, expected: &mut Vec<String>| {
        let (ids, events): (Vec<String>, Vec<RiskEvent>) = range.map(revision).unzip();
        expected.extend(ids);
        committer
            .commit(&events, None)
            .map(|_| ())
            .map_err(|e| format!("commit: {e}"))
    };
    let pending = |outbox: &Outbox| outbox.pending_count("conformance").unwrap_or(u64::MAX);
    let reader = Outbox::open(&path).map_err(|e| e.to_string())?;

    // Order and cursor.
    commit(1..=30, &mut expected)?;
    eventually(&format!("sink kind `{name}` delivered 30 events"), || {
        destination.received(dir.path()).len() >= 30
    })?;
    if destination.received(dir.path()) != expected {
        return Err(format!(
            "sink kind `{name}`: events arrived out of commit order (or twice)"
        ));
    }
    eventually(
        &format!("sink kind `{name}`'s cursor is at the end"),
        || pending(&reader) == 0,
    )?;

    // Dead letters: one refused event is kept aside, the ones after it still arrive.
    let (refused, _) = revision(31);
    if destination.refuse(&refused) {
        commit(31..=35, &mut expected)?;
        expected.retain(|id| *id != refused);
        eventually(
            &format!("sink kind `{name}` delivered past a refusal"),
            || pending(&reader) == 0,
        )?;
        let dead = reader
            .dead_letters(Some("conformance"))
            .map_err(|e| e.to_string())?;
        if dead.len() != 1 || dead[0].id != refused {
            return Err(format!(
                "sink kind `{name}`: the refused event is not the one dead letter: {dead:?}"
            ));
        }
    }

    // Retries: an outage loses nothing.
    if destination.set_down(true) {
        commit(36..=45, &mut expected)?;
        destination.set_down(false);
        eventually(
            &format!("sink kind `{name}` delivered after an outage"),
            || pending(&reader) == 0,
        )?;
        let mut received = destination.received(dir.path());
        received.dedup();
        if received != expected {
            return Err(format!(
                "sink kind `{name}`: after an outage the events are not all there, in order"
            ));
        }
    }

    // Shutdown with the destination down keeps what was not delivered.
    let down = destination.set_down(true);
    if down {
        commit(46..=50, &mut expected)?;
    }
    let started = Instant::now();
    let behind = deliveries.shutdown(Duration::from_secs(2));
    if started.elapsed() > Duration::from_secs(10) {
        return Err(format!(
            "sink kind `{name}`: shutdown took {:?}, past its deadline",
            started.elapsed()
        ));
    }
    if down && pending(&reader) == 0 && behind.is_empty() {
        // Delivered before the outage took hold: acceptable, nothing was lost.
        return Ok(());
    }
    if down && pending(&reader) == 0 {
        return Err(format!(
            "sink kind `{name}`: shutdown reported events behind that the outbox does not hold"
        ));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A JSON Lines file in the suite's directory, for kinds that write files.
pub struct JsonLinesFile;

impl Destination for JsonLinesFile {
    fn table(&self, _dir: &Path) -> String {
        "path = \"delivered.jsonl\"".into()
    }

    fn received(&self, dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("delivered.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                Some(event.get("id")?.as_str()?.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use skynet_core::Registry;

    use super::*;

    #[test]
    fn every_registered_sink_kind_passes_the_suite() {
        let mut registry = Registry::default();
        crate::register(&mut registry);
        let kinds = registry.kinds::<SinkFamily>();
        assert_eq!(kinds.len(), 5);
        for kind in kinds {
            // Kinds whose destination is a network service are driven through the suite's
            // promises by their own integration tests against real servers (tests/nats.rs,
            // tests/webhook.rs, tests/mqtt_sink.rs); here they must validate and build
            // while nothing listens.
            let destination: Option<&dyn Destination> = match kind.name {
                "jsonl" => Some(&JsonLinesFile),
                _ => None,
            };
            if let Err(e) = check_sink_kind(kind, destination) {
                panic!("{e}");
            }
        }
    }
}
