//! Case-status events (the case system's `acknowledged`, `resolved`, ...) applied to the
//! engine, counted by outcome.

use skynet_core::{CaseStatus, RiskEvent};

use crate::{RiskEngine, RiskError};

/// What became of one status event. Whatever it is, the event is acknowledged to the case
/// system only once the next commit is made.
#[derive(Debug)]
pub enum CaseOutcome {
    /// Applied: these revisions result, and acknowledge it once committed.
    Applied(Vec<RiskEvent>),
    /// Delivered again (a restart, or a commit slower than JetStream's ack wait): already
    /// applied. Its ack is the original's too (the same stream message), so it waits for
    /// the next commit like the original's.
    Duplicate,
    /// Refused (an unknown incident, or a change its state does not allow): logged and
    /// counted, and acknowledged after the next commit for the same reason as a duplicate.
    Refused,
}

/// Applies one status event to the engine; counts it in `skynet_case_status_*_total`.
pub fn apply_case_status(engine: &mut dyn RiskEngine, status: &CaseStatus) -> CaseOutcome {
    match engine.feedback(status) {
        Ok(changes) => {
            metrics::counter!("skynet_case_status_applied_total", "status" => status.status.as_str())
                .increment(1);
            tracing::info!(status = status.status.as_str(), "case status applied");
            CaseOutcome::Applied(changes)
        }
        Err(RiskError::Transition { from, to, .. }) if from == to => {
            metrics::counter!("skynet_case_status_duplicates_total").increment(1);
            CaseOutcome::Duplicate
        }
        Err(e) => {
            let reason = match e {
                RiskError::UnknownIncident(_) => "unknown_incident",
                _ => "transition",
            };
            metrics::counter!("skynet_case_status_rejected_total", "reason" => reason).increment(1);
            tracing::warn!(error = %e, "case status refused");
            CaseOutcome::Refused
        }
    }
}
