//! The commit and the sink workers together, through [`spawn_deliveries`]: order, cursors,
//! retries, dead letters, the lag alarm and shutdown.

use super::*;
use crate::{Delivery, EmitError, Rejection, StoredEvent};
use skynet_core::{ComponentState, RiskEvent};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

fn incident(revision: u32) -> RiskEvent {
    RiskEvent::Incident(crate::test_support::incident(revision, 0.3))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `done` for up to 60 s (a deadline for a loaded machine; it returns as soon as
/// `done` holds).
fn eventually(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Never finishes a delivery, like stdout into a pipe nobody reads.
struct BlockedSink;

#[async_trait::async_trait]
impl IncidentSink for BlockedSink {
    fn name(&self) -> &str {
        "blocked"
    }
    async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
        std::future::pending().await
    }
}

/// Fails while `broken` is set; records what it got.
struct RecordingSink {
    name: &'static str,
    broken: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<String>>>,
}

impl RecordingSink {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            broken: Arc::default(),
            attempts: Arc::default(),
            got: Arc::default(),
        }
    }

    fn again(&self) -> Self {
        Self {
            name: self.name,
            broken: self.broken.clone(),
            attempts: self.attempts.clone(),
            got: self.got.clone(),
        }
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl IncidentSink for RecordingSink {
    fn name(&self) -> &str {
        self.name
    }
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            return Err(EmitError::SinkIo {
                sink: self.name.into(),
                source: std::io::ErrorKind::BrokenPipe.into(),
            });
        }
        let mut got = self.got.lock().unwrap();
        got.extend(batch.iter().map(|e| e.id.clone()));
        Ok(())
    }
}

fn ids(revisions: std::ops::RangeInclusive<u32>) -> Vec<String> {
    revisions.map(|r| format!("inc-1/{r}")).collect()
}

#[test]
fn a_blocked_sink_delays_neither_the_commit_nor_the_other_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let rt = runtime();
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    let recording = RecordingSink::new("recording");
    let blocked_health = ComponentHealth::detached("blocked", "sink");
    let recording_health = ComponentHealth::detached("recording", "sink");
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![
            (Box::new(BlockedSink), blocked_health.clone()),
            (Box::new(recording.again()), recording_health.clone()),
        ],
        committer.wake_handle(),
    );

    // Ten commits of ten, so the deliveries are woken while the blocked one is stuck.
    let started = Instant::now();
    for first in (1..=100).step_by(10) {
        let incidents: Vec<RiskEvent> = (first..first + 10).map(incident).collect();
        assert_eq!(committer.commit(&incidents, None).unwrap().len(), 10);
    }
    // The point is that no commit waits on a sink (the blocked one never returns, so a
    // commit that waited would never end): a generous deadline, not a latency check.
    assert!(started.elapsed() < Duration::from_secs(60));

    eventually("the recording sink has all 100", || {
        recording.got().len() >= 100
    });
    assert_eq!(recording.got(), ids(1..=100));
    eventually("the recording sink reports up", || {
        recording_health.status().unwrap().state == ComponentState::Up
    });

    // The shutdown gives up on the blocked sink at its deadline rather than waiting for
    // ever: bounded far above the 0.5 s for a loaded machine (not a latency check).
    let started = Instant::now();
    let behind = deliveries.shutdown(Duration::from_millis(500));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(behind, vec![("blocked".to_string(), 100)]);
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn a_failing_sink_catches_up_in_order_from_its_cursor_and_a_restart_resumes_without_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let rt = runtime();
    let flaky = RecordingSink::new("flaky");
    flaky.broken.store(true, Ordering::SeqCst);
    let health = ComponentHealth::detached("flaky", "sink");
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![(Box::new(flaky.again()), health.clone())],
        committer.wake_handle(),
    );
    committer.commit(&[incident(1)], None).unwrap();
    committer.commit(&[incident(2)], None).unwrap();
    // A replay of the same revision changes nothing.
    committer.commit(&[incident(2)], None).unwrap();
    eventually("the sink has failed twice", || {
        flaky.attempts.load(Ordering::SeqCst) >= 2
    });
    let status = health.status().unwrap();
    assert_eq!(status.state, ComponentState::Retrying);
    assert!(status.reason.unwrap().contains("flaky"));
    assert!(flaky.got().is_empty());

    flaky.broken.store(false, Ordering::SeqCst);
    eventually("the sink caught up", || flaky.got().len() >= 2);
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
    assert_eq!(flaky.got(), ids(1..=2));
    assert_eq!(health.status().unwrap().state, ComponentState::Up);
    drop(committer);

    // A restart resumes from the cursor: nothing is delivered twice. The sink is broken
    // when shutdown begins and recovers within the deadline: it is still drained.
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    flaky.broken.store(true, Ordering::SeqCst);
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![(Box::new(flaky.again()), health.clone())],
        committer.wake_handle(),
    );
    committer.commit(&[incident(3)], None).unwrap();
    let broken = flaky.broken.clone();
    let heal = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        broken.store(false, Ordering::SeqCst);
    });
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
    heal.join().unwrap();
    assert_eq!(flaky.got(), ids(1..=3));
    let history = committer.outbox().incidents().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].revision, 3);
}

/// Takes only the first event of its first batch and fails the rest; then takes all.
struct HalfFailing {
    calls: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<String>>>,
    health_at_second_call: Arc<Mutex<Option<ComponentState>>>,
    health: ComponentHealth,
}

#[async_trait::async_trait]
impl IncidentSink for HalfFailing {
    fn name(&self) -> &str {
        "half"
    }
    async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
        unreachable!("the worker calls deliver_batch")
    }
    async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call == 1 {
            *self.health_at_second_call.lock().unwrap() = self.health.status().map(|s| s.state);
        }
        if call == 0 && batch.len() > 1 {
            self.got.lock().unwrap().push(batch[0].id.clone());
            return Ok(Delivery {
                rejected: Vec::new(),
                handled_through: Some(batch[0].seq),
                failure: Some("the rest timed out".into()),
                refusing: false,
            });
        }
        let mut got = self.got.lock().unwrap();
        got.extend(batch.iter().map(|e| e.id.clone()));
        Ok(Delivery::all())
    }
}

#[test]
fn a_batch_that_fails_part_way_keeps_what_was_taken_and_backs_off_before_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    committer
        .commit(&[incident(1), incident(2), incident(3)], None)
        .unwrap();
    let rt = runtime();
    let health = ComponentHealth::detached("half", "sink");
    let sink = HalfFailing {
        calls: Arc::default(),
        got: Arc::default(),
        health_at_second_call: Arc::default(),
        health: health.clone(),
    };
    let (got, seen) = (sink.got.clone(), sink.health_at_second_call.clone());
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![(Box::new(sink), health.clone())],
        committer.wake_handle(),
    );
    eventually("all three arrive", || got.lock().unwrap().len() >= 3);
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
    assert_eq!(*got.lock().unwrap(), ids(1..=3), "in order, none twice");
    assert_eq!(
        *seen.lock().unwrap(),
        Some(ComponentState::Retrying),
        "the failure was reported (and backed off) before the rest was offered again"
    );
}

#[test]
fn a_sink_added_later_starts_from_what_is_left_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    committer.commit(&[incident(1), incident(2)], None).unwrap();
    let rt = runtime();
    let late = RecordingSink::new("late");
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![(
            Box::new(late.again()),
            ComponentHealth::detached("late", "sink"),
        )],
        committer.wake_handle(),
    );
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
    assert_eq!(late.got(), ids(1..=2));
}

/// Refuses for good the events whose ids are in `refuse`; records what it took.
struct RefusingSink {
    refuse: Arc<Mutex<Vec<String>>>,
    got: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl IncidentSink for RefusingSink {
    fn name(&self) -> &str {
        "picky"
    }
    async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
        unreachable!("the worker calls deliver_batch")
    }
    async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        let refuse = self.refuse.lock().unwrap().clone();
        let mut delivery = Delivery::all();
        for event in batch {
            if refuse.contains(&event.id) {
                delivery.rejected.push(Rejection {
                    seq: event.seq,
                    status: Some(422),
                    reason: "no".into(),
                });
            } else {
                self.got.lock().unwrap().push(event.id.clone());
            }
        }
        Ok(delivery)
    }
}

#[test]
fn a_refused_event_becomes_a_dead_letter_the_rest_flow_and_a_replay_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let rt = runtime();
    let refuse = Arc::new(Mutex::new(vec!["inc-1/3".to_string()]));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = RefusingSink {
        refuse: Arc::clone(&refuse),
        got: Arc::clone(&got),
    };
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    let deliveries = spawn_deliveries(
        rt.handle(),
        &path,
        vec![(Box::new(sink), ComponentHealth::detached("picky", "sink"))],
        committer.wake_handle(),
    );
    let incidents: Vec<RiskEvent> = (1..=5).map(incident).collect();
    committer.commit(&incidents, None).unwrap();
    let outbox = Outbox::open(&path).unwrap();
    eventually("the batch is handled", || {
        outbox.pending_count("picky").unwrap() == 0
    });
    assert_eq!(
        *got.lock().unwrap(),
        ["inc-1/1", "inc-1/2", "inc-1/4", "inc-1/5"]
    );
    let dead = outbox.dead_letters(Some("picky")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].seq, dead[0].status),
        ("inc-1/3", 3, Some(422))
    );
    assert!(dead[0].body.contains("inc-1/3") && !dead[0].replay);

    // Replayed while still refused: it stays, no longer queued.
    assert_eq!(
        outbox
            .request_replay(Some("picky"), Some("inc-1/3"))
            .unwrap(),
        1
    );
    eventually("the replay is settled", || {
        outbox.dead_letters(None).unwrap().iter().all(|d| !d.replay)
    });
    assert_eq!(outbox.dead_letters(None).unwrap().len(), 1);
    // Taken this time: delivered and gone from the dead letters.
    refuse.lock().unwrap().clear();
    assert_eq!(outbox.request_replay(None, None).unwrap(), 1);
    eventually("the replay is delivered", || {
        outbox.dead_letters(None).unwrap().is_empty()
    });
    assert_eq!(got.lock().unwrap().last().unwrap(), "inc-1/3");
    assert_eq!(outbox.request_replay(None, Some("inc-1/3")).unwrap(), 0);
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
}

/// Holds each delivery until `open` is set.
struct GatedSink {
    open: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl IncidentSink for GatedSink {
    fn name(&self) -> &str {
        "gated"
    }
    async fn deliver(&mut self, _batch: &[StoredEvent]) -> Result<(), EmitError> {
        while !self.open.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

#[test]
fn a_sink_behind_by_more_than_the_limit_shows_the_alarm_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let rt = runtime();
    let open = Arc::new(AtomicBool::new(false));
    let health = ComponentHealth::detached("gated", "sink");
    let mut committer = Committer::new("n1", Outbox::open(&path).unwrap());
    let incidents: Vec<RiskEvent> = (1..=10).map(incident).collect();
    committer.commit(&incidents, None).unwrap();
    let deliveries = spawn_deliveries_with(
        rt.handle(),
        &path,
        vec![(
            Box::new(GatedSink {
                open: Arc::clone(&open),
            }),
            health.clone(),
        )],
        committer.wake_handle(),
        DeliveryOptions {
            lag_alarm_events: 5,
        },
    );
    eventually("the alarm shows", || {
        health
            .status()
            .unwrap()
            .reason
            .is_some_and(|r| r == "10 events behind, limit 5")
    });
    assert_eq!(health.status().unwrap().state, ComponentState::Retrying);
    open.store(true, Ordering::SeqCst);
    eventually("the sink is up again", || {
        health.status().unwrap().state == ComponentState::Up
    });
    assert!(deliveries.shutdown(Duration::from_secs(60)).is_empty());
}

#[test]
fn a_huge_shutdown_deadline_does_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    let rt = runtime();
    let deliveries = spawn_deliveries(rt.handle(), &path, Vec::new(), CommitSignal::new());
    assert!(deliveries.shutdown(Duration::MAX).is_empty());
}
