//! Vendor JSON, read through JSON pointers (RFC 6901): `format = "json"` and its keys
//! `records_pointer`, `value_pointer`, `time_pointer`, `time_format`, `unit_pointer`, `unit`,
//! `name_pointer` and `sensor_pointer`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};
use skynet_core::{Component, FieldError};

use super::{FormatContext, ParsedRecord, PayloadParser};
use crate::sensor::payload::{RawRecord, RawTime, RawValue, Reject, json_error};

/// The `format = "json"` part of a `[[mqtt.topics]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFormat {
    /// JSON pointers (RFC 6901) to the parts of a reading.
    pub records_pointer: Option<String>,
    pub value_pointer: Option<String>,
    pub time_pointer: Option<String>,
    #[serde(default)]
    pub time_format: TimeFormat,
    pub unit_pointer: Option<String>,
    /// The unit when the payload names none.
    pub unit: Option<String>,
    pub name_pointer: Option<String>,
    pub sensor_pointer: Option<String>,
}

fn check_pointer(field: &str, pointer: &Option<String>) -> Result<(), FieldError> {
    match pointer {
        Some(p) if !p.is_empty() && !p.starts_with('/') => Err(FieldError::new(
            field,
            format!(
                "`{field}` must be a JSON pointer starting with `/`, like \"/data/co\", got `{p}`"
            ),
        )),
        _ => Ok(()),
    }
}

impl JsonFormat {
    fn pointers(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("records_pointer", &self.records_pointer),
            ("value_pointer", &self.value_pointer),
            ("time_pointer", &self.time_pointer),
            ("unit_pointer", &self.unit_pointer),
            ("name_pointer", &self.name_pointer),
            ("sensor_pointer", &self.sensor_pointer),
        ]
    }

    /// Each key on its own: pointers start with `/`, the unit is known.
    pub(super) fn check_keys(&self) -> Result<(), FieldError> {
        for (k, p) in self.pointers() {
            check_pointer(k, p)?;
        }
        if let Some(unit) = &self.unit
            && !crate::sensor::units::is_known_unit(unit)
        {
            return Err(FieldError::new("unit", format!("unknown unit `{unit}`")));
        }
        Ok(())
    }

    /// Whether any pointer is given.
    pub(super) fn has_pointers(&self) -> bool {
        self.pointers().iter().any(|(_, p)| p.is_some())
    }
}

impl Component<super::PayloadFormatFamily> for JsonFormat {
    const KIND: &'static str = "json";
    const EXAMPLE: &'static str = "value_pointer = \"/data/co\"\ntime_pointer = \"/ts\"\nunit_pointer = \"/data/unit\"\nsensor_pointer = \"/device\"";
    type Validated = JsonMapping;

    fn validate(self, cx: &FormatContext) -> Result<JsonMapping, FieldError> {
        self.check_keys()?;
        let Some(value) = self.value_pointer else {
            return Err(FieldError::new(
                "value_pointer",
                "`format = \"json\"` needs `value_pointer`, the JSON pointer to the value",
            ));
        };
        if cx.sensor_from == crate::sensor::SensorFrom::Payload && self.sensor_pointer.is_none() {
            return Err(FieldError::new(
                "sensor_pointer",
                "the topic does not name the sensor: give `sensor_pointer`",
            ));
        }
        Ok(JsonMapping {
            records: self.records_pointer,
            value,
            time: self.time_pointer,
            time_format: self.time_format,
            unit: self.unit_pointer,
            fixed_unit: self.unit,
            name: self.name_pointer,
            sensor: self.sensor_pointer,
        })
    }
}

impl PayloadParser for JsonMapping {
    fn parse<'p>(&self, payload: &'p [u8]) -> Result<Vec<ParsedRecord<'p>>, Reject> {
        Ok(parse_mapped(payload, self)?
            .into_iter()
            .map(|m| (m.sensor, m.record))
            .collect())
    }

    fn sample(&self) -> Vec<u8> {
        let mut item = Value::Null;
        if let Some(p) = &self.sensor {
            put(&mut item, p, Value::from("gas-07"));
        }
        if let Some(p) = &self.name {
            put(&mut item, p, Value::from("co"));
        }
        if let Some(p) = &self.unit {
            put(&mut item, p, Value::from("ppm"));
        }
        if let Some(p) = &self.time {
            let time = match self.time_format {
                TimeFormat::Rfc3339 => Value::from("2027-01-15T08:00:00Z"),
                TimeFormat::UnixMs => Value::from(1_800_000_000_000_i64),
                TimeFormat::Auto | TimeFormat::UnixS => Value::from(1_800_000_000_i64),
            };
            put(&mut item, p, time);
        }
        // The value last: a mapping whose pointers overlap still has its value.
        put(&mut item, &self.value, Value::from(12.5));
        let doc = match &self.records {
            None => item,
            Some(p) => {
                let mut doc = Value::Null;
                put(&mut doc, p, Value::Array(vec![item]));
                doc
            }
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// Sets `value` at `pointer` in `doc`, making objects on the way (serde_json reads an
/// object's `"0"` key for a pointer's `0`, so objects serve array indices too).
fn put(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    for token in pointer.split('/').skip(1) {
        let key = token.replace("~1", "/").replace("~0", "~");
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else {
            return;
        };
        at = map.entry(key).or_insert(Value::Null);
    }
    *at = value;
}

/// How a vendor's JSON time is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Numbers: seconds, or milliseconds when above 10^11; strings: RFC 3339.
    #[default]
    Auto,
    UnixS,
    UnixMs,
    Rfc3339,
}

/// Where a vendor's JSON keeps each part of a reading, as JSON pointers (RFC 6901).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonMapping {
    /// An array of readings to apply the other pointers to; absent: the payload is one.
    pub records: Option<String>,
    pub value: String,
    pub time: Option<String>,
    pub time_format: TimeFormat,
    /// Pointer to the unit string.
    pub unit: Option<String>,
    /// A fixed unit, when the payload names none.
    pub fixed_unit: Option<String>,
    /// Pointer to the reading's name (quantity, or `sensor/quantity`).
    pub name: Option<String>,
    /// Pointer to the sensor id, when the topic does not name the sensor.
    pub sensor: Option<String>,
}

/// A mapped record, with the sensor id the payload named (if its mapping has one).
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRecord {
    pub sensor: Option<String>,
    pub record: RawRecord<'static>,
}

fn number_or_numeric_string(v: &Value) -> Result<f64, Reject> {
    match v {
        Value::Number(n) => n.as_f64().ok_or(Reject::WrongType),
        // Vendors often quote numbers; "NaN" and "inf" parse, and are refused as not finite.
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| Reject::WrongType),
        _ => Err(Reject::WrongType),
    }
}

fn string_at(item: &Value, pointer: Option<&String>) -> Result<Option<String>, Reject> {
    match pointer.and_then(|p| item.pointer(p)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Reject::WrongType),
    }
}

fn mapped_time(v: &Value, format: TimeFormat) -> Result<RawTime, Reject> {
    let from_number = |n: f64| -> Result<RawTime, Reject> {
        if !n.is_finite() {
            return Err(Reject::NotFinite);
        }
        Ok(RawTime::Absolute(match format {
            TimeFormat::UnixMs => n / 1000.0,
            TimeFormat::Auto if n.abs() >= 1e11 => n / 1000.0,
            _ => n,
        }))
    };
    match (v, format) {
        (Value::String(s), TimeFormat::Auto | TimeFormat::Rfc3339) => {
            match chrono::DateTime::parse_from_rfc3339(s.trim()) {
                Ok(t) => Ok(RawTime::Absolute(t.timestamp_micros() as f64 / 1e6)),
                Err(_) if format == TimeFormat::Auto => {
                    from_number(s.trim().parse::<f64>().map_err(|_| Reject::WrongType)?)
                }
                Err(_) => Err(Reject::WrongType),
            }
        }
        (Value::Number(_), TimeFormat::Rfc3339) => Err(Reject::WrongType),
        (v, _) => from_number(number_or_numeric_string(v)?),
    }
}

fn mapped_record(item: &Value, map: &JsonMapping) -> Result<MappedRecord, Reject> {
    let value = match item.pointer(&map.value) {
        None | Some(Value::Null) => return Err(Reject::MissingValue),
        Some(Value::Bool(b)) => RawValue::Bool(*b),
        Some(v) => RawValue::Number(number_or_numeric_string(v)?),
    };
    let time = match map.time.as_ref().and_then(|p| item.pointer(p)) {
        None | Some(Value::Null) => None,
        Some(v) => Some(mapped_time(v, map.time_format)?),
    };
    let unit = string_at(item, map.unit.as_ref())?.or_else(|| map.fixed_unit.clone());
    Ok(MappedRecord {
        sensor: string_at(item, map.sensor.as_ref())?,
        record: RawRecord {
            name: string_at(item, map.name.as_ref())?.map(Cow::Owned),
            value,
            unit: unit.map(Cow::Owned),
            time,
        },
    })
}

/// Parses a vendor JSON payload with its mapping.
pub fn parse_mapped(payload: &[u8], map: &JsonMapping) -> Result<Vec<MappedRecord>, Reject> {
    let doc: Value = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    match &map.records {
        None => Ok(vec![mapped_record(&doc, map)?]),
        Some(pointer) => match doc.pointer(pointer) {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(|item| mapped_record(item, map)).collect()
            }
            Some(Value::Array(_)) | None | Some(Value::Null) => Err(Reject::MissingValue),
            Some(_) => Err(Reject::WrongType),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor() -> JsonMapping {
        JsonMapping {
            value: "/data/co".into(),
            time: Some("/ts".into()),
            unit: Some("/data/unit".into()),
            sensor: Some("/device".into()),
            ..JsonMapping::default()
        }
    }

    #[test]
    fn mapped_json_follows_its_pointers() {
        let r = parse_mapped(
            br#"{"device":"gas-07","ts":1700000000123,"data":{"co":"17.5","unit":"ppm"}}"#,
            &vendor(),
        )
        .unwrap();
        assert_eq!(r[0].sensor.as_deref(), Some("gas-07"));
        assert_eq!(r[0].record.value, RawValue::Number(17.5));
        assert_eq!(r[0].record.time, Some(RawTime::Absolute(1_700_000_000.123)));
        let r = parse_mapped(
            br#"{"device":"g","ts":"2026-11-27T05:00:00Z","data":{"co":3}}"#,
            &vendor(),
        )
        .unwrap();
        assert!(matches!(r[0].record.time, Some(RawTime::Absolute(t)) if t > 1.7e9));
    }

    #[test]
    fn mapped_json_failures_have_reasons() {
        let map = vendor();
        assert_eq!(
            parse_mapped(br#"{"data":{}}"#, &map),
            Err(Reject::MissingValue)
        );
        assert_eq!(
            parse_mapped(br#"{"data":{"co":"high"}}"#, &map),
            Err(Reject::WrongType)
        );
        assert_eq!(
            parse_mapped(br#"{"data":{"co":[1]}}"#, &map),
            Err(Reject::WrongType)
        );
        assert_eq!(
            parse_mapped(br#"{"ts":"soon","data":{"co":1}}"#, &map),
            Err(Reject::WrongType)
        );
        let nan = parse_mapped(br#"{"data":{"co":"NaN"}}"#, &map).unwrap();
        assert!(matches!(nan[0].record.value, RawValue::Number(v) if v.is_nan()));
        assert_eq!(parse_mapped(b"{", &map), Err(Reject::MalformedJson));
    }

    #[test]
    fn mapped_json_arrays_of_readings() {
        let map = JsonMapping {
            records: Some("/readings".into()),
            value: "/v".into(),
            name: Some("/q".into()),
            fixed_unit: Some("m".into()),
            ..JsonMapping::default()
        };
        let r = parse_mapped(
            br#"{"readings":[{"q":"level","v":1.5},{"q":"level","v":1.6}]}"#,
            &map,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].record.unit.as_deref(), Some("m"));
        assert_eq!(
            parse_mapped(br#"{"readings":[]}"#, &map),
            Err(Reject::MissingValue)
        );
        assert_eq!(
            parse_mapped(br#"{"readings":3}"#, &map),
            Err(Reject::WrongType)
        );
    }
}
