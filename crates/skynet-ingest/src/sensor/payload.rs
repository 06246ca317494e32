//! Payload parsers: SenML JSON (RFC 8428) and vendor JSON mapped with JSON pointers.
//!
//! Both turn a payload into [`RawRecord`]s: a name, a value, a unit and a time as the
//! payload gave them, base fields resolved. Nothing here trusts the payload: every failure
//! is a [`Reject`] with its reason, and no input panics (fuzzed by `fuzz/`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

/// Why a payload or one of its records was refused. The reason is the `reason` label of
/// `skynet_sensor_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Larger than `max_payload_bytes`.
    TooLarge,
    /// Not JSON (or not UTF-8).
    MalformedJson,
    /// JSON, but a field has the wrong type (a string where a number belongs).
    WrongType,
    /// No value in the record (or no record in the payload).
    MissingValue,
    /// NaN or infinity (a numeric string "NaN", or a sum that overflows).
    NotFinite,
    /// A unit that is unknown, or measures something else than the sensor's kind.
    UnknownUnit,
    /// Outside the physical range of the sensor's kind.
    OutOfRange,
    /// A time ahead of the clock by more than `max_future_s`.
    FutureTime,
    /// A time older than `max_age_s`.
    TooOld,
    /// The same sensor and time as a reading already accepted.
    Duplicate,
    /// Older than the sensor's last accepted reading.
    OutOfOrder,
    /// A sensor the registry does not know.
    UnknownSensor,
    /// A quantity the sensor does not measure (`gas-07/temperature` for a CO sensor).
    UnknownQuantity,
}

impl Reject {
    pub const ALL: [Reject; 13] = [
        Self::TooLarge,
        Self::MalformedJson,
        Self::WrongType,
        Self::MissingValue,
        Self::NotFinite,
        Self::UnknownUnit,
        Self::OutOfRange,
        Self::FutureTime,
        Self::TooOld,
        Self::Duplicate,
        Self::OutOfOrder,
        Self::UnknownSensor,
        Self::UnknownQuantity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::MalformedJson => "malformed_json",
            Self::WrongType => "wrong_type",
            Self::MissingValue => "missing_value",
            Self::NotFinite => "not_finite",
            Self::UnknownUnit => "unknown_unit",
            Self::OutOfRange => "out_of_range",
            Self::FutureTime => "future_time",
            Self::TooOld => "too_old",
            Self::Duplicate => "duplicate",
            Self::OutOfOrder => "out_of_order",
            Self::UnknownSensor => "unknown_sensor",
            Self::UnknownQuantity => "unknown_quantity",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record's value as the payload gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Number(f64),
    Bool(bool),
    /// A string value (SenML `vs`/`vd`), which no numeric sensor kind takes.
    Text,
}

/// A record's time as the payload gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawTime {
    /// Seconds since the Unix epoch.
    Absolute(f64),
    /// Seconds relative to the arrival (SenML times below 2^28, RFC 8428 section 4.5.3).
    Relative(f64),
}

/// One reading as the payload gave it, base fields resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord<'a> {
    /// The full name (SenML: base name + name).
    pub name: Option<Cow<'a, str>>,
    pub value: RawValue,
    pub unit: Option<Cow<'a, str>>,
    pub time: Option<RawTime>,
}

/// The SenML threshold below which a time is relative to now (RFC 8428: 2^28 s).
const SENML_RELATIVE_BELOW: f64 = 268_435_456.0;

#[derive(Deserialize)]
struct SenmlRecord<'a> {
    #[serde(borrow)]
    bn: Option<Cow<'a, str>>,
    bt: Option<f64>,
    #[serde(borrow)]
    bu: Option<Cow<'a, str>>,
    bv: Option<f64>,
    #[serde(borrow)]
    n: Option<Cow<'a, str>>,
    #[serde(borrow)]
    u: Option<Cow<'a, str>>,
    v: Option<f64>,
    #[serde(borrow)]
    vs: Option<Cow<'a, str>>,
    vb: Option<bool>,
    #[serde(borrow)]
    vd: Option<Cow<'a, str>>,
    s: Option<f64>,
    t: Option<f64>,
}

fn json_error(e: &serde_json::Error) -> Reject {
    match e.classify() {
        serde_json::error::Category::Data => Reject::WrongType,
        _ => Reject::MalformedJson,
    }
}

/// Parses a SenML JSON pack. A record with a bad field fails the whole pack (its base
/// fields could not be trusted for the records after it).
pub fn parse_senml(payload: &[u8]) -> Result<Vec<RawRecord<'_>>, Reject> {
    // A pack is an array; many devices send one record without it, taken as a pack of one.
    // (An untagged enum would hide the error's category, so try one form, then the other.)
    let records: Vec<SenmlRecord<'_>> = match serde_json::from_slice(payload) {
        Ok(records) => records,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            vec![serde_json::from_slice::<SenmlRecord<'_>>(payload).map_err(|e| json_error(&e))?]
        }
        Err(e) => return Err(json_error(&e)),
    };
    let mut out = Vec::with_capacity(records.len());
    let (mut base_name, mut base_time, mut base_unit, mut base_value) =
        (None::<Cow<'_, str>>, 0.0f64, None::<Cow<'_, str>>, 0.0f64);
    for r in records {
        let has_base = r.bn.is_some() || r.bt.is_some() || r.bu.is_some() || r.bv.is_some();
        if let Some(bn) = r.bn {
            base_name = Some(bn);
        }
        if let Some(bt) = r.bt {
            base_time = bt;
        }
        if let Some(bu) = r.bu {
            base_unit = Some(bu);
        }
        if let Some(bv) = r.bv {
            base_value = bv;
        }
        let value = match (r.v.or(r.s), r.vb, r.vs.is_some() || r.vd.is_some()) {
            (Some(v), None, false) => RawValue::Number(base_value + v),
            (None, Some(b), false) => RawValue::Bool(b),
            (None, None, true) => RawValue::Text,
            (None, None, false) => {
                // A record of base fields only sets them for the records after it.
                if has_base && r.n.is_none() {
                    continue;
                }
                return Err(Reject::MissingValue);
            }
            // More than one value in a record: RFC 8428 allows one.
            _ => return Err(Reject::WrongType),
        };
        let name = match (&base_name, r.n) {
            (Some(b), Some(n)) => Some(Cow::Owned(format!("{b}{n}"))),
            (Some(b), None) => Some(b.clone()),
            (None, n) => n,
        };
        let t = base_time + r.t.unwrap_or(0.0);
        let time = if !t.is_finite() {
            return Err(Reject::NotFinite);
        } else if r.t.is_none() && r.bt.is_none() && base_time == 0.0 {
            None
        } else if t.abs() < SENML_RELATIVE_BELOW {
            Some(RawTime::Relative(t))
        } else {
            Some(RawTime::Absolute(t))
        };
        out.push(RawRecord {
            name,
            value,
            unit: r.u.or_else(|| base_unit.clone()),
            time,
        });
    }
    if out.is_empty() {
        return Err(Reject::MissingValue);
    }
    Ok(out)
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

    #[test]
    fn senml_base_fields_resolve_as_rfc_8428_says() {
        let pack = br#"[{"bn":"gas-07/","bt":1.7e9,"bu":"ppm","n":"co","v":12.5},
                        {"n":"co","t":1,"v":13},
                        {"n":"co","t":2,"u":"ppb","v":14000}]"#;
        let r = parse_senml(pack).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].name.as_deref(), Some("gas-07/co"));
        assert_eq!(r[0].value, RawValue::Number(12.5));
        assert_eq!(r[0].unit.as_deref(), Some("ppm"));
        assert_eq!(r[0].time, Some(RawTime::Absolute(1.7e9)));
        assert_eq!(r[1].time, Some(RawTime::Absolute(1.7e9 + 1.0)));
        assert_eq!(r[2].unit.as_deref(), Some("ppb"));
    }

    #[test]
    fn senml_relative_times_strings_and_booleans() {
        let r = parse_senml(br#"[{"n":"a","t":-5,"v":1},{"n":"b","vb":true},{"n":"c","vs":"x"}]"#)
            .unwrap();
        assert_eq!(r[0].time, Some(RawTime::Relative(-5.0)));
        assert_eq!(r[1].time, None);
        assert_eq!(r[1].value, RawValue::Bool(true));
        assert_eq!(r[2].value, RawValue::Text);
        // One record without the array is a pack of one.
        assert_eq!(parse_senml(br#"{"n":"a","v":1}"#).unwrap().len(), 1);
    }

    #[test]
    fn senml_failures_have_reasons() {
        assert_eq!(
            parse_senml(b"[{\"n\":\"a\",\"v\":1"),
            Err(Reject::MalformedJson)
        );
        assert_eq!(parse_senml(b"\xff\xfe"), Err(Reject::MalformedJson));
        assert_eq!(
            parse_senml(br#"[{"n":"a","v":"12"}]"#),
            Err(Reject::WrongType)
        );
        assert_eq!(parse_senml(br#"[{"n":5,"v":1}]"#), Err(Reject::WrongType));
        assert_eq!(parse_senml(br#"[{"n":"a"}]"#), Err(Reject::MissingValue));
        assert_eq!(parse_senml(b"[]"), Err(Reject::MissingValue));
        assert_eq!(
            parse_senml(br#"[{"n":"a","v":1,"vb":true}]"#),
            Err(Reject::WrongType)
        );
        assert_eq!(
            parse_senml(br#"[{"bv":1e308,"n":"a","v":1e308}]"#).unwrap()[0].value,
            RawValue::Number(f64::INFINITY)
        );
        assert_eq!(parse_senml(b"42"), Err(Reject::WrongType));
        assert_eq!(
            parse_senml(br#"[{"n":"a","v":1e999}]"#),
            Err(Reject::MalformedJson)
        );
    }

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
