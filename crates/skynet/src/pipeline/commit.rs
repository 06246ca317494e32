//! The commit stage: revisions and the state they belong with go into the outbox in one
//! transaction. Delivery to the sinks happens elsewhere (one task per sink), so a slow or
//! blocked sink never holds a commit back.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use skynet_core::{ComponentHealth, QueueClosed, RiskEvent, Shutdown, StageReceiver};
use skynet_emit::{CaseAck, Committer};

use super::{Counters, Fatal, POLL};

/// What the rules stage hands over: revisions (maybe none) and the pipeline state after them.
#[derive(Debug)]
pub(crate) struct Commit {
    pub incidents: Vec<RiskEvent>,
    /// The state's changes since the last commit (the engine's changed rows, not all of it).
    pub state: Option<skynet_emit::StateChanges>,
    /// The case system's status events these revisions apply: acknowledged once stored.
    pub acks: Vec<CaseAck>,
    /// Sensor messages whose effect (or, for those that changed nothing, everything before
    /// them) this commit holds: acknowledged to the broker once stored, in receipt order.
    pub sensor_acks: Vec<skynet_ingest::sensor::ReadingAcks>,
    /// What is recorded of those events (applied ids, refusals), in the same transaction.
    pub cases: super::cases::CaseCommit,
    /// At a scorer: the owned cells this commit changed, for KV once it is stored.
    pub cells: Option<super::scorer::CellSaves>,
}

/// How long a failing outbox is retried once shutdown is asked for. Until then it is retried
/// forever: an incident is never dropped.
const GIVE_UP_AFTER_SHUTDOWN: Duration = Duration::from_secs(10);

pub(crate) fn run(
    mut committer: Committer,
    commits: &StageReceiver<Commit>,
    health: &ComponentHealth,
    stop: &Shutdown,
    fatal: &Fatal,
    counters: &Counters,
    console: Option<&skynet_serve::console::Console>,
) {
    loop {
        match commits.recv_timeout(POLL) {
            Ok(Some(mut commit)) => {
                committer.stage_cases(
                    std::mem::take(&mut commit.cases.records),
                    commit.cases.forget_before,
                );
                if let Err(cause) = commit_until_stored(&mut committer, &commit, health, stop) {
                    health.down(cause.clone());
                    fatal.report("outbox", cause);
                    return;
                }
                for ack in commit.acks {
                    ack.ack();
                }
                for acks in commit.sensor_acks {
                    acks.ack();
                }
                if let Some(cells) = commit.cells.take() {
                    cells.stored();
                }
                super::cases::audit(console, committer.outbox().path(), &commit.cases.audits);
                // Stored: the browsers may see it now.
                if let Some(console) = console {
                    console.publish(&commit.incidents);
                    for event in &commit.incidents {
                        if let RiskEvent::PatrolRound(round) = event {
                            console.record_patrol_round(round);
                        }
                    }
                }
                let revisions = commit
                    .incidents
                    .iter()
                    .filter(|e| e.as_incident().is_some())
                    .count();
                counters
                    .incidents
                    .fetch_add(revisions as u64, Ordering::Relaxed);
            }
            Ok(None) => committer.idle(),
            Err(QueueClosed) => return,
        }
    }
}

/// Retries with backoff while the outbox refuses (disk full, locked). Gives up only when
/// shutdown was asked for and the outbox kept failing for a while after: the revisions are
/// then lost to this run, but the state before them is what the next start goes on from, so
/// the evidence is applied again.
fn commit_until_stored(
    committer: &mut Committer,
    commit: &Commit,
    health: &ComponentHealth,
    stop: &Shutdown,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(100);
    let mut stopping_since: Option<Instant> = None;
    loop {
        let span = commit.incidents.iter().find_map(RiskEvent::as_incident).map(
            |i| tracing::info_span!("commit", incident = %i.id, grid = %i.grid, device = %i.device()),
        );
        let _entered = span.as_ref().map(|s| s.enter());
        match committer.commit_state(&commit.incidents, commit.state.as_ref()) {
            Ok(_) => {
                if stopping_since.is_some() || backoff > Duration::from_millis(100) {
                    tracing::info!("the outbox takes commits again");
                }
                metrics::gauge!("skynet_outbox_commit_failing").set(0.0);
                health.up();
                return Ok(());
            }
            Err(e) => {
                // The alarm: nothing flows into the outbox until this is 0 again. Intake
                // waits behind the full commit queue; what was committed stays committed.
                metrics::gauge!("skynet_outbox_commit_failing").set(1.0);
                metrics::counter!("skynet_outbox_retries_total").increment(1);
                health.retrying(e.to_string());
                if e.is_disk_full() {
                    tracing::error!(error = %e, retry_in = ?backoff, "the outbox's disk is full: intake is paused (nothing committed is lost) and resumes by itself once space returns");
                } else {
                    tracing::error!(error = %e, retry_in = ?backoff, "outbox commit failed; retrying");
                }
                if stop.is_triggered() {
                    let since = *stopping_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER_SHUTDOWN {
                        return Err(format!("the outbox kept refusing commits: {e}"));
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
