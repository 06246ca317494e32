//! What every payload format produces: [`RawRecord`]s (a name, a value, a unit and a time as
//! the payload gave them, base fields resolved), or a [`Reject`] with its reason. The formats
//! themselves are kinds of the payload format family (`formats/`). Nothing there trusts the
//! payload: every failure is a [`Reject`], and no input panics (fuzzed by `fuzz/`).

use std::borrow::Cow;

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

/// The reason for a payload serde_json refused: a field of the wrong type, or not JSON.
pub(crate) fn json_error(e: &serde_json::Error) -> Reject {
    match e.classify() {
        serde_json::error::Category::Data => Reject::WrongType,
        _ => Reject::MalformedJson,
    }
}
