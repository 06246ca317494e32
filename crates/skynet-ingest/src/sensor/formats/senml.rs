//! SenML JSON (RFC 8428), the default payload format: the payload names its own fields, so
//! the kind has no keys of its own.

use std::borrow::Cow;

use serde::Deserialize;
use skynet_core::{Component, FieldError};

use super::json::JsonFormat;
use super::{FormatContext, ParsedRecord, PayloadParser};
use crate::sensor::payload::{RawRecord, RawTime, RawValue, Reject, json_error};

/// The `format = "senml"` part of a `[[mqtt.topics]]` table.
///
/// SenML has no keys, but the table is read with the JSON format's keys: a table that gives
/// one is refused by name ("JSON pointers apply to `format = \"json\"` only"), not as an
/// unknown key, and `unit` and `time_format` are checked and accepted as they always were,
/// so configs written for the one flat topic table read as before.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct SenmlFormat {
    keys: JsonFormat,
}

/// The validated SenML format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenmlParser;

impl Component<super::PayloadFormatFamily> for SenmlFormat {
    const KIND: &'static str = "senml";
    const EXAMPLE: &'static str = "";
    type Validated = SenmlParser;

    fn validate(self, _cx: &FormatContext) -> Result<SenmlParser, FieldError> {
        // The same checks, in the same order, as the JSON keys get in a JSON table.
        self.keys.check_keys()?;
        if self.keys.has_pointers() {
            return Err(FieldError::new(
                "format",
                "JSON pointers apply to `format = \"json\"` only; SenML names its own fields",
            ));
        }
        Ok(SenmlParser)
    }
}

impl PayloadParser for SenmlParser {
    fn parse<'p>(&self, payload: &'p [u8]) -> Result<Vec<ParsedRecord<'p>>, Reject> {
        // SenML names its sensor in the record names, read by the ingest, not here.
        Ok(parse_senml(payload)?
            .into_iter()
            .map(|r| (None, r))
            .collect())
    }

    fn sample(&self) -> Vec<u8> {
        br#"[{"bn":"gas-07/","bt":1800000000,"bu":"ppm","n":"co","v":12.5},{"n":"co","t":1,"v":13}]"#
            .to_vec()
    }
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
}
