//! Emit stage: incidents become CloudEvents, are committed to a durable outbox first, and are
//! then delivered to every configured sink.
//!
//! The outbox (SQLite) is the source of truth: an event is acknowledged to the pipeline only
//! once it is committed there, in the same transaction as the engine state. Delivery is apart
//! from the commit: each sink runs in its own task on one tokio runtime, with its own cursor
//! into the outbox and its own retry, so delivery is at-least-once, in order, per sink, and a
//! blocked sink holds up nothing else. Consumers deduplicate by the CloudEvent `id`.

mod cases;
mod cases_log;
mod cloudevent;
mod delivery;
mod describe;
mod error;
mod history;
mod outbox;
mod prune;
mod settings;
pub mod sinks;
mod state_store;
/// Sample incidents, for this crate's tests and the sink conformance suite.
mod test_support;

pub use cases::{
    CASE_SIGNATURE_HEADER, CASES_DEAD_LETTER_SINK, CaseAck, CaseFeedback, CaseMessage, CaseRecord,
    CasesSettings, REFUSED_BODY_LIMIT, excerpt, refused_letter, spawn_case_consumer,
};
pub use cloudevent::{
    CloudEvent, GRID_RISK_EVENT_TYPE, INCIDENT_EVENT_TYPE, OutboxEvent, PATROL_ROUND_EVENT_TYPE,
    district_of_source,
};
pub use delivery::{
    CommitSignal, Committer, Deliveries, DeliveryOptions, spawn_deliveries, spawn_deliveries_with,
};
pub use describe::describe_metrics;
pub use error::EmitError;
pub use history::{IncidentPage, IncidentQuery};
pub use outbox::{DeadLetter, Outbox, StoredEvent};
pub use prune::{
    DEGRADED, DiskWatch, PRUNE_BATCH, PruneOptions, Pruned, Pruner, disk_free_bytes, prune_once,
    spawn_pruner,
};
pub use settings::{OutboxPlan, OutboxSettings};
pub use sinks::nats::connect as connect_nats;
pub use sinks::{
    BuildSink, Delivery, Envelope, IncidentSink, JsonLinesSink, JsonLinesSinkConfig, MqttSink,
    MqttSinkConfig, NatsSink, NatsSinkConfig, Rejection, Retention, SinkBuildContext, SinkFamily,
    StdoutSink, StdoutSinkConfig, StreamPlan, WebhookSink, WebhookSinkConfig, route_token,
};
pub use state_store::{StateChanges, StoredState};

/// Every component kind of the emit stage, for the binary's registry.
pub fn register(registry: &mut skynet_core::Registry) {
    sinks::register(registry);
}
