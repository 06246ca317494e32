//! Walkthrough "add a payload format" (docs/architecture.md): a `kv` payload format for
//! sensors that publish plain text such as `co=12.5 unit=ppm` (or, when the topic does not
//! name the sensor, `sensor=gas-07 co=12.5`). In skynet it would be
//! `crates/skynet-ingest/src/sensor/formats/kv.rs` plus one line in `formats::register`;
//! here it is registered into a registry of its own and run through the payload format
//! conformance suite.

use std::borrow::Cow;

use skynet_core::{Component, FieldError, Registry};
use skynet_ingest::sensor::formats::conformance::check_format_kind;
use skynet_ingest::sensor::{
    FormatContext, ParsedRecord, PayloadFormatFamily, PayloadParser, RawRecord, RawValue, Reject,
};

/// `format = "kv"`: the kind's own keys of a `[[mqtt.topics]]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvFormat {
    /// What separates the pairs; default: any white space.
    #[serde(default)]
    pub separator: Option<char>,
}

/// The checked format: what the parser needs.
#[derive(Debug, Clone)]
pub struct KvParser {
    separator: Option<char>,
}

impl Component<PayloadFormatFamily> for KvFormat {
    const KIND: &'static str = "kv";
    const EXAMPLE: &'static str = "separator = \";\"";
    type Validated = KvParser;

    fn validate(self, _cx: &FormatContext) -> Result<KvParser, FieldError> {
        if self
            .separator
            .is_some_and(|c| c == '=' || c.is_alphanumeric())
        {
            return Err(FieldError::new(
                "separator",
                "`separator` must not be `=`, a letter or a digit",
            ));
        }
        Ok(KvParser {
            separator: self.separator,
        })
    }
}

impl PayloadParser for KvParser {
    /// Never panics: every failure is a refusal with a counted reason.
    fn parse<'p>(&self, payload: &'p [u8]) -> Result<Vec<ParsedRecord<'p>>, Reject> {
        // `malformed_json` is also the reason for payloads that are not UTF-8.
        let text = std::str::from_utf8(payload).map_err(|_| Reject::MalformedJson)?;
        let pairs: Vec<&str> = match self.separator {
            Some(sep) => text.split(sep).map(str::trim).collect(),
            None => text.split_whitespace().collect(),
        };
        let (mut sensor, mut unit, mut values) = (None, None, Vec::new());
        for pair in pairs.into_iter().filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or(Reject::WrongType)?;
            match key {
                "sensor" => sensor = Some(value.to_string()),
                "unit" => unit = Some(value),
                name => {
                    let number: f64 = value.parse().map_err(|_| Reject::WrongType)?;
                    if !number.is_finite() {
                        return Err(Reject::NotFinite);
                    }
                    values.push((name, number));
                }
            }
        }
        if values.is_empty() {
            return Err(Reject::MissingValue);
        }
        Ok(values
            .into_iter()
            .map(|(name, number)| {
                (
                    sensor.clone(),
                    RawRecord {
                        name: Some(Cow::Borrowed(name)),
                        value: RawValue::Number(number),
                        unit: unit.map(Cow::Borrowed),
                        time: None,
                    },
                )
            })
            .collect())
    }

    fn sample(&self) -> Vec<u8> {
        let sep = self.separator.unwrap_or(' ');
        format!("sensor=gas-07{sep}co=12.5{sep}unit=ppm").into_bytes()
    }
}

#[test]
fn the_kv_format_passes_the_payload_format_conformance_suite() {
    let mut registry = Registry::default();
    registry.register::<PayloadFormatFamily, KvFormat>();
    let kind = registry
        .lookup::<PayloadFormatFamily>("kv")
        .expect("registered");
    check_format_kind(kind);
}
