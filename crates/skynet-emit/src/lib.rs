//! Emit stage: incidents become CloudEvents, are written to a durable outbox first, and are
//! then relayed to every configured sink.
//!
//! The outbox (SQLite) is the source of truth: an event is acknowledged to the pipeline only
//! once it is committed there, and each sink keeps its own cursor into it. A sink that fails
//! is retried from its cursor, so delivery is at-least-once, in order, per sink; consumers
//! deduplicate by the CloudEvent `id`.

mod cloudevent;
mod error;
mod outbox;
mod relay;
mod sinks;

pub use cloudevent::{CloudEvent, INCIDENT_EVENT_TYPE};
pub use error::EmitError;
pub use outbox::{Outbox, StoredEvent};
pub use relay::Relay;
pub use sinks::{IncidentSink, JsonLinesSink, StdoutSink};
