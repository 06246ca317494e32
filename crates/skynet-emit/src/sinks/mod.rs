//! Where incidents go after the outbox. Each sink kind owns its config type, its validation
//! and how it is built, so adding a kind touches only its own module (as Vector's sinks do).

pub mod conformance;
mod jsonl;
mod mqtt;
pub mod nats;
mod stdout;
mod webhook;

pub use jsonl::{JsonLinesSink, JsonLinesSinkConfig};
pub use mqtt::{MqttSink, MqttSinkConfig};
pub use nats::{NatsSink, NatsSinkConfig, Retention, StreamPlan};
pub use stdout::{StdoutSink, StdoutSinkConfig};
pub use webhook::{WebhookSink, WebhookSinkConfig};

use std::borrow::Cow;
use std::sync::Arc;

use skynet_core::{ConfigContext, Erase, Family, Registry};

use crate::{EmitError, StoredEvent};

/// A destination for incident events. Each sink runs in its own task, so a slow or failing
/// one holds up nothing but itself.
#[async_trait::async_trait]
pub trait IncidentSink: Send {
    /// Unique among the configured sinks; names the sink's cursor in the outbox.
    fn name(&self) -> &str;
    /// The most events handed to one `deliver` call.
    fn batch_size(&self) -> usize {
        256
    }
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
    /// Why the rest of the batch failed, when it did (not just a batch cut short to show
    /// progress): the worker keeps what was handled, then reports the failure and backs off
    /// before offering the rest again.
    pub failure: Option<String>,
    /// The failure is the destination refusing the sink as a whole (a webhook's 401 after a
    /// token rotation): the worker shows the sink as `refusing` and raises its alarm.
    pub refusing: bool,
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

/// The sink family: one `[[sinks]]` table each, `kind` (and `name`) plus the kind's keys.
/// Every kind is a [`Component`] of this family whose validated value is a [`BuildSink`].
#[derive(Debug)]
pub struct SinkFamily;

impl Family for SinkFamily {
    const NAME: &'static str = "sink";
    type Context<'a> = ConfigContext;
    type Validated = dyn BuildSink;
}

impl<V: BuildSink + 'static> Erase<V> for SinkFamily {
    fn erase(validated: V) -> Arc<dyn BuildSink> {
        Arc::new(validated)
    }
}

/// What building a sink may look at (Vector's `SinkContext`).
#[derive(Debug, Clone, Copy)]
pub struct SinkBuildContext<'a> {
    /// The sink's unique name (`[[sinks]] name`, default its kind): its cursor, its metric
    /// label and its dead-letter list.
    pub name: &'a str,
}

/// A validated sink of any kind: builds the running [`IncidentSink`]. Building may do I/O,
/// but a sink must not need its destination to be up: the process starts, and keeps
/// committing, while a destination is down.
pub trait BuildSink: std::fmt::Debug + Send + Sync {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError>;
}

/// This crate's sink kinds.
pub fn register(registry: &mut Registry) {
    registry
        .register::<SinkFamily, JsonLinesSinkConfig>()
        .register::<SinkFamily, StdoutSinkConfig>()
        .register::<SinkFamily, NatsSinkConfig>()
        .register::<SinkFamily, WebhookSinkConfig>()
        .register::<SinkFamily, MqttSinkConfig>();
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

/// What a sink needs to route and label an event, read from its stored body: the CloudEvent
/// attributes (for binary-mode headers) and the cell and category (for subjects and topics).
#[derive(Debug, serde::Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub specversion: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub subject: Cow<'a, str>,
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Route<'a>,
}

/// The part of `data` that routes an event.
#[derive(Debug, serde::Deserialize)]
pub struct Route<'a> {
    /// Empty for a patrol round (its cameras have a grid each).
    #[serde(default, borrow)]
    pub grid: Cow<'a, str>,
    /// Incidents only.
    #[serde(default, borrow)]
    pub category: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    pub fn parse(event: &'a StoredEvent) -> Result<Self, EmitError> {
        Ok(serde_json::from_str(&event.body)?)
    }

    /// Where the event goes, as tokens after a prefix: `incidents.<grid>.<category>` or
    /// `grid_risk.<grid>`, `patrol_rounds.<patrol>` (other types: `events.<type>`). Each token is made safe for NATS
    /// subjects and MQTT topics alike (no `.`, `/`, `*`, `>`, `+`, `#` or spaces).
    pub fn route(&self) -> [Cow<'_, str>; 3] {
        match self.event_type.as_ref() {
            crate::INCIDENT_EVENT_TYPE => [
                Cow::Borrowed("incidents"),
                route_token(&self.data.grid),
                route_token(self.data.category.as_deref().unwrap_or("unknown")),
            ],
            crate::GRID_RISK_EVENT_TYPE => [
                Cow::Borrowed("grid_risk"),
                route_token(&self.data.grid),
                Cow::Borrowed(""),
            ],
            crate::PATROL_ROUND_EVENT_TYPE => [
                Cow::Borrowed("patrol_rounds"),
                route_token(&self.subject),
                Cow::Borrowed(""),
            ],
            other => [
                Cow::Borrowed("events"),
                route_token(other),
                Cow::Borrowed(""),
            ],
        }
    }

    /// `<prefix><sep>` followed by the route's tokens joined by `sep`.
    pub fn address(&self, prefix: &str, sep: char) -> String {
        let mut out = String::with_capacity(prefix.len() + 48);
        out.push_str(prefix);
        for token in self.route().iter().filter(|t| !t.is_empty()) {
            out.push(sep);
            out.push_str(token);
        }
        out
    }
}

/// One subject or topic level: characters with a meaning to NATS or MQTT become `_`.
pub fn route_token(value: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        matches!(c, '.' | '/' | '*' | '>' | '+' | '#') || c.is_whitespace() || c.is_control()
    };
    if value.is_empty() {
        Cow::Borrowed("_")
    } else if value.contains(bad) {
        Cow::Owned(
            value
                .chars()
                .map(|c| if bad(c) { '_' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn stored(body: &str) -> StoredEvent {
        StoredEvent {
            seq: 1,
            id: "x".into(),
            body: body.into(),
        }
    }

    #[test]
    fn incidents_and_grid_risk_get_their_subjects_with_unsafe_characters_replaced() {
        let incident = stored(
            r#"{"specversion":"1.0","id":"i/1","source":"skynet/n","type":"skynet.incident.v1","subject":"i","time":"t","datacontenttype":"application/json","data":{"grid":"G-0201","category":"gas leak.co","level":"II"}}"#,
        );
        let envelope = Envelope::parse(&incident).unwrap();
        assert_eq!(
            envelope.address("skynet", '.'),
            "skynet.incidents.G-0201.gas_leak_co"
        );
        assert_eq!(
            envelope.address("skynet", '/'),
            "skynet/incidents/G-0201/gas_leak_co"
        );
        let risk = stored(
            r#"{"specversion":"1.0","id":"g","source":"s","type":"skynet.grid_risk.v1","subject":"G>1","time":"t","data":{"grid":"G>1"}}"#,
        );
        let envelope = Envelope::parse(&risk).unwrap();
        assert_eq!(envelope.address("skynet", '.'), "skynet.grid_risk.G_1");
        assert_eq!(route_token(""), "_");
    }
}
