//! Where incidents go after the outbox. Each sink kind owns its config type, its validation
//! and how it is built, so adding a kind touches only its own module (as Vector's sinks do).

mod jsonl;
mod stdout;

pub use jsonl::{JsonLinesSink, JsonLinesSinkConfig};
pub use stdout::{StdoutSink, StdoutSinkConfig};

use skynet_core::{ConfigContext, FieldError};

use crate::{EmitError, StoredEvent};

/// A destination for incident events. Each sink runs in its own task, so a slow or failing
/// one holds up nothing but itself.
#[async_trait::async_trait]
pub trait IncidentSink: Send {
    /// Unique among the configured sinks; names the sink's cursor in the outbox.
    fn name(&self) -> &str;
    /// Writes the batch and makes it durable; only then is it acknowledged in the outbox.
    /// Must not block the runtime's threads: blocking I/O goes through `spawn_blocking`.
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError>;
}

/// The config of one sink kind: one `[[sinks]]` table, without its `kind` and `name` keys.
pub trait SinkConfig:
    serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// The `kind` string in `[[sinks]]`.
    const KIND: &'static str;
    /// Pure checks and normalisation (resolve relative paths with cx); no I/O.
    fn validate(&mut self, cx: &ConfigContext) -> Result<(), FieldError>;
    /// Builds the running sink; may do I/O.
    fn build(&self, name: &str) -> Result<Box<dyn IncidentSink>, EmitError>;
}

/// Joins the bodies into one buffer, one event per line, so a batch is written at once.
fn lines(batch: &[StoredEvent]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum());
    for event in batch {
        buf.extend_from_slice(event.body.as_bytes());
        buf.push(b'\n');
    }
    buf
}
