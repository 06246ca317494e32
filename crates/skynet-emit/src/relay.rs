//! Stores incidents in the outbox and relays them to the sinks, retrying failed sinks with
//! exponential backoff from their own cursor.

use std::time::{Duration, Instant};

use skynet_core::Incident;

use crate::{CloudEvent, EmitError, IncidentSink, Outbox};

const BATCH: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct SinkState {
    sink: Box<dyn IncidentSink>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Has everything stored so far; idle pumps then skip the outbox queries.
    caught_up: bool,
}

pub struct Relay {
    node: String,
    outbox: Outbox,
    sinks: Vec<SinkState>,
    retention: Option<chrono::Duration>,
    last_prune: Option<Instant>,
}

const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Relay {
    pub fn new(node: impl Into<String>, outbox: Outbox, sinks: Vec<Box<dyn IncidentSink>>) -> Self {
        let sinks = sinks
            .into_iter()
            .map(|sink| SinkState {
                sink,
                retry_at: None,
                backoff: FIRST_BACKOFF,
                // Unknown until the first pump: the last run may have left events behind.
                caught_up: false,
            })
            .collect();
        Self {
            node: node.into(),
            outbox,
            sinks,
            retention: None,
            last_prune: None,
        }
    }

    /// Deletes delivered events once they are older than `retention` (checked every 10
    /// minutes while pumping).
    pub fn with_retention(mut self, retention: chrono::Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    fn prune_if_due(&mut self) {
        let Some(retention) = self.retention else {
            return;
        };
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let names: Vec<&str> = self.sinks.iter().map(|s| s.sink.name()).collect();
        match self.outbox.prune(&names, chrono::Utc::now() - retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned delivered events past retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune the outbox"),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Commits an incident revision to the outbox. Once this returns, it will be delivered.
    pub fn store(&mut self, incident: &Incident) -> Result<CloudEvent, EmitError> {
        let event = CloudEvent::incident(&self.node, incident);
        if self.outbox.append(&event)? {
            metrics::counter!("skynet_incidents_stored_total").increment(1);
            for state in &mut self.sinks {
                state.caught_up = false;
            }
        }
        Ok(event)
    }

    /// Delivers what is pending to every sink not waiting out a backoff; returns how many
    /// events were delivered.
    pub fn pump(&mut self) -> usize {
        let now = Instant::now();
        let mut delivered = 0;
        for state in &mut self.sinks {
            if state.caught_up || state.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            match deliver_pending(&self.outbox, state.sink.as_mut()) {
                Ok(n) => {
                    delivered += n;
                    state.retry_at = None;
                    state.backoff = FIRST_BACKOFF;
                    state.caught_up = true;
                }
                Err(e) => {
                    let sink = state.sink.name().to_string();
                    metrics::counter!("skynet_sink_retries_total", "sink" => sink.clone())
                        .increment(1);
                    tracing::warn!(sink = %sink, error = %e, retry_in = ?state.backoff, "sink delivery failed; will retry");
                    state.retry_at = Some(now + state.backoff);
                    state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
                }
            }
            if let Ok(pending) = self.outbox.pending_count(state.sink.name()) {
                metrics::gauge!("skynet_outbox_pending", "sink" => state.sink.name().to_string())
                    .set(pending as f64);
            }
        }
        self.prune_if_due();
        delivered
    }

    /// At shutdown: keeps pumping, ignoring backoff, until every sink has everything or
    /// `deadline` passes. Returns the sinks still behind and by how much; those events stay
    /// in the outbox for the next start.
    pub fn drain(&mut self, deadline: Duration) -> Vec<(String, u64)> {
        let until = Instant::now() + deadline;
        loop {
            for state in &mut self.sinks {
                state.retry_at = None;
            }
            self.pump();
            let behind: Vec<(String, u64)> = self
                .sinks
                .iter()
                .filter_map(|s| match self.outbox.pending_count(s.sink.name()) {
                    Ok(0) => None,
                    Ok(n) => Some((s.sink.name().to_string(), n)),
                    Err(_) => Some((s.sink.name().to_string(), u64::MAX)),
                })
                .collect();
            if behind.is_empty() || Instant::now() >= until {
                return behind;
            }
            std::thread::sleep(FIRST_BACKOFF);
        }
    }
}

fn deliver_pending(outbox: &Outbox, sink: &mut dyn IncidentSink) -> Result<usize, EmitError> {
    let mut delivered = 0;
    loop {
        let batch = outbox.pending(sink.name(), BATCH)?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(delivered);
        };
        for event in &batch {
            sink.deliver(event)?;
        }
        sink.flush()?;
        outbox.acknowledge(sink.name(), last)?;
        metrics::counter!("skynet_incidents_emitted_total", "sink" => sink.name().to_string())
            .increment(batch.len() as u64);
        delivered += batch.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoredEvent;
    use chrono::{DateTime, Utc};
    use skynet_core::{CameraId, GridId, IncidentStatus, OwnerKind, RiskLevel, RuleRef};
    use std::sync::{Arc, Mutex};

    fn incident(revision: u32) -> Incident {
        Incident {
            id: "inc-1".into(),
            revision,
            status: IncidentStatus::Opened,
            category: "intrusion".into(),
            level: RiskLevel::IV,
            level_colour: "blue".into(),
            risk_score: 0.3,
            grid: GridId::new("G1"),
            camera: CameraId::new("cam"),
            owner: OwnerKind::Police,
            first_seen: DateTime::<Utc>::UNIX_EPOCH,
            last_seen: DateTime::<Utc>::UNIX_EPOCH,
            observations: 1,
            detections: Vec::new(),
            rule: RuleRef {
                name: "r".into(),
                kind: "zone_intrusion".into(),
                zone: None,
            },
        }
    }

    /// Fails while `broken` is set; records what it got.
    struct FlakySink {
        broken: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl IncidentSink for FlakySink {
        fn name(&self) -> &str {
            "flaky"
        }
        fn deliver(&mut self, event: &StoredEvent) -> Result<(), EmitError> {
            if *self.broken.lock().unwrap() {
                return Err(EmitError::SinkIo {
                    sink: "flaky".into(),
                    source: std::io::ErrorKind::BrokenPipe.into(),
                });
            }
            self.got.lock().unwrap().push(event.id.clone());
            Ok(())
        }
    }

    #[test]
    fn failed_sink_catches_up_in_order_and_replays_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let broken = Arc::new(Mutex::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            broken: broken.clone(),
            got: got.clone(),
        };
        let mut relay = Relay::new("n1", Outbox::open(&path).unwrap(), vec![Box::new(sink)]);
        relay.store(&incident(1)).unwrap();
        relay.store(&incident(2)).unwrap();
        relay.store(&incident(2)).unwrap();
        assert_eq!(relay.pump(), 0);
        *broken.lock().unwrap() = false;
        assert!(relay.drain(Duration::from_secs(5)).is_empty());
        assert_eq!(*got.lock().unwrap(), vec!["inc-1/1", "inc-1/2"]);

        // A restart resumes from the cursor: nothing is delivered twice.
        drop(relay);
        let sink = FlakySink {
            broken,
            got: got.clone(),
        };
        let mut relay = Relay::new("n1", Outbox::open(&path).unwrap(), vec![Box::new(sink)]);
        relay.store(&incident(3)).unwrap();
        relay.pump();
        assert_eq!(got.lock().unwrap().len(), 3);
        let history = relay.outbox().incidents().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].revision, 3);
    }

    #[test]
    fn prune_keeps_what_a_sink_still_needs_and_the_incident_history() {
        let outbox = Outbox::open(std::path::Path::new(":memory:")).unwrap();
        let mut relay = Relay::new("n1", outbox, Vec::new());
        for revision in 1..=3 {
            relay.store(&incident(revision)).unwrap();
        }
        let outbox = relay.outbox();
        outbox.acknowledge("a", 3).unwrap();
        outbox.acknowledge("b", 1).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(outbox.prune(&["a", "b"], later).unwrap(), 1);
        assert_eq!(outbox.pending("b", 10).unwrap().len(), 2);
        assert_eq!(
            outbox
                .prune(&["a"], Utc::now() - chrono::Duration::days(1))
                .unwrap(),
            0
        );
        assert_eq!(outbox.prune(&["a"], later).unwrap(), 2);
        assert!(outbox.events().unwrap().is_empty());
        assert_eq!(outbox.incidents().unwrap()[0].revision, 3);
    }
}
