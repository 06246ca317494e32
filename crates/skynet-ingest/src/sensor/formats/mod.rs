//! The payload format family: how a `[[mqtt.topics]]` family's payloads are written.
//!
//! A topic table is the keys every format shares ([`TopicSettings`](super::TopicSettings):
//! `pattern`, `sensor_from`, `format`) plus the format kind's own keys. Each kind is a
//! [`Component`](skynet_core::Component) of [`PayloadFormatFamily`] whose validated value is a
//! [`PayloadParser`]; [`SensorIngest`](super::SensorIngest) only calls that parser. A new
//! format is one module here plus one line in [`register`], and it passes the family's
//! [`conformance`] suite by registering.

use std::sync::Arc;

use skynet_core::{Erase, Family, Registry};

use super::ingest::SensorFrom;
use super::payload::{RawRecord, Reject};

pub mod conformance;
pub mod json;
pub mod senml;

pub use json::{JsonFormat, JsonMapping, MappedRecord, TimeFormat, parse_mapped};
pub use senml::{SenmlFormat, SenmlParser, parse_senml};

/// The payload format family.
#[derive(Debug)]
pub struct PayloadFormatFamily;

impl Family for PayloadFormatFamily {
    const NAME: &'static str = "payload format";
    type Context<'a> = FormatContext;
    type Validated = dyn PayloadParser;
}

impl<V: PayloadParser + 'static> Erase<V> for PayloadFormatFamily {
    fn erase(validated: V) -> Arc<dyn PayloadParser> {
        Arc::new(validated)
    }
}

/// What a format's validation may look at: the topic table's shared keys, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatContext {
    /// Whether the topic names the sensor; when it does not, the payload must.
    pub sensor_from: SensorFrom,
}

/// One parsed record: the sensor id the payload named (if the format reads one), and the
/// reading as the payload gave it.
pub type ParsedRecord<'p> = (Option<String>, RawRecord<'p>);

/// A validated payload format of any kind.
pub trait PayloadParser: std::fmt::Debug + Send + Sync {
    /// The payload's records, or why the whole payload is refused. Never panics, whatever
    /// the bytes; every refusal is one of [`Reject::ALL`], so it is counted in
    /// `skynet_sensor_rejected_total{reason}`.
    fn parse<'p>(&self, payload: &'p [u8]) -> Result<Vec<ParsedRecord<'p>>, Reject>;

    /// A well-formed payload for this parser (its own mapping, where it has one), which
    /// yields at least one record: the conformance suite's sample, and the docs'.
    fn sample(&self) -> Vec<u8>;
}

/// This crate's payload format kinds; the first (`senml`) is the default `format`.
pub fn register(registry: &mut Registry) {
    registry
        .register::<PayloadFormatFamily, SenmlFormat>()
        .register::<PayloadFormatFamily, JsonFormat>();
}
