//! Where incidents go after the outbox. Each sink kind owns its config type, its validation
//! and how it is built, so adding a kind touches only its own module (as Vector's sinks do).

mod jsonl;
mod stdout;
mod webhook;

pub use jsonl::{JsonLinesSink, JsonLinesSinkConfig};
pub use stdout::{StdoutSink, StdoutSinkConfig};
pub use webhook::{WebhookSink, WebhookSinkConfig};

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

    /// What the delivery worker calls. Sinks whose destination judges each event (an HTTP
    /// endpoint answering 400) override it to report the events refused for good, which the
    /// worker then keeps in the outbox's dead letters instead of retrying them forever; an
    /// `Err` is still "try the batch again later". The default takes the whole batch or
    /// fails it, through [`deliver`](Self::deliver), so sinks that have no such refusal need
    /// not know about it.
    async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        self.deliver(batch).await?;
        Ok(Delivery::all())
    }
}

/// What a sink did with a batch that it did not fail as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Events the destination refused for good: they go to the dead letters, with the
    /// reason, and are not retried unless replayed (`skynet outbox replay`).
    pub rejected: Vec<Rejection>,
    /// `Some(seq)`: only the events up to `seq` were handled (taken or rejected); the rest of
    /// the batch is offered again at the next call. `None`: the whole batch was handled.
    pub handled_through: Option<i64>,
}

impl Delivery {
    /// Every event of the batch taken.
    pub fn all() -> Self {
        Self::default()
    }
}

/// One event a destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The event's place in the outbox ([`StoredEvent::seq`]).
    pub seq: i64,
    /// The destination's status code, if it gave one (HTTP 400).
    pub status: Option<u16>,
    /// Why, as the destination said it (a bounded excerpt of the response body).
    pub reason: String,
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
