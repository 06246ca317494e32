//! From a message (topic and payload) to validated readings: which sensor, which quantity,
//! the value in its canonical unit, within range, at a believable time, not seen before.
//!
//! [`SensorIngest::ingest`] is pure apart from metrics: no I/O, no clock (the caller passes
//! the arrival time), so it is unit-tested, property-tested and fuzzed as it runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use skynet_core::{DeviceId, SensorReading};

use super::formats::PayloadParser;
use super::payload::{RawRecord, RawTime, RawValue, Reject};
use super::units::{SensorKind, convert};

/// A registered sensor, as validation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    pub id: DeviceId,
    pub kind: SensorKind,
    /// The record name its readings carry (after the sensor's own prefix).
    pub quantity: String,
    /// The unit of readings that name none; default: the kind's canonical unit.
    pub unit: Option<String>,
    /// The values a working sensor reports, in the canonical unit; default: the kind's
    /// physical range.
    pub range: (f64, f64),
}

impl SensorSpec {
    pub fn new(id: DeviceId, kind: SensorKind) -> Self {
        Self {
            id,
            kind,
            quantity: kind.default_quantity().to_string(),
            unit: None,
            range: kind.physical_range(),
        }
    }
}

/// Where the sensor id of a message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorFrom {
    /// The topic level the pattern's first `+` (or `#`) matches.
    Topic,
    /// The payload: SenML names (`gas-07/co`), or the mapping's `sensor_pointer`.
    Payload,
}

/// A family of sensors: the topics they publish on and how their payloads are written.
#[derive(Debug, Clone)]
pub struct TopicFamily {
    /// An MQTT topic filter (`skynet/sensors/+`).
    pub pattern: String,
    /// The validated payload format (a kind of
    /// [`PayloadFormatFamily`](super::formats::PayloadFormatFamily)).
    pub format: Arc<dyn PayloadParser>,
    pub sensor_from: SensorFrom,
}

/// What to do with readings of sensors the config does not list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownSensors {
    /// Count them (`reason="unknown_sensor"`) and dead-letter them.
    #[default]
    Reject,
    /// Register them as `unassigned` (no cell, no rules), up to [`MAX_UNASSIGNED`].
    Register,
}

/// At most this many unknown sensors are registered: a misbehaving publisher inventing ids
/// must not grow memory or metric labels without bound.
pub const MAX_UNASSIGNED: usize = 1_000;

/// Limits on what is believed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestLimits {
    pub max_payload_bytes: usize,
    /// How far ahead of the clock a reading's time may be (sensor clocks drift).
    pub max_future: chrono::Duration,
    /// How old a reading may be (a broker's queue after an outage holds old readings).
    pub max_age: chrono::Duration,
    pub unknown_sensors: UnknownSensors,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_future: chrono::Duration::seconds(30),
            max_age: chrono::Duration::hours(24),
            unknown_sensors: UnknownSensors::Reject,
        }
    }
}

/// How many of a sensor's latest reading times are remembered, so that a message the broker
/// delivers again (QoS 1 after a reconnect) is a `duplicate`, not `out_of_order`.
const RECENT_TIMES: usize = 16;

struct SensorEntry {
    spec: SensorSpec,
    quantity: Arc<str>,
    /// The latest accepted reading times, newest last.
    recent: std::collections::VecDeque<DateTime<Utc>>,
    readings: metrics::Counter,
    value: metrics::Gauge,
}

impl SensorEntry {
    fn new(spec: SensorSpec) -> Self {
        let label = spec.id.to_string();
        Self {
            quantity: Arc::from(spec.quantity.as_str()),
            recent: std::collections::VecDeque::with_capacity(RECENT_TIMES),
            readings: metrics::counter!("skynet_sensor_readings_total", "sensor" => label.clone()),
            value: metrics::gauge!("skynet_sensor_value", "sensor" => label),
            spec,
        }
    }
}

/// A rejected record (or payload), with its sensor when it was known.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reject,
    pub sensor: Option<DeviceId>,
}

/// What one message gave.
#[derive(Debug, Default)]
pub struct Ingested {
    pub readings: Vec<SensorReading>,
    pub rejected: Vec<Rejection>,
}

/// The sensor registry and validation of the sensor ingest stage.
pub struct SensorIngest {
    families: Vec<TopicFamily>,
    sensors: HashMap<String, SensorEntry>,
    limits: IngestLimits,
    unassigned: usize,
    rejected: Vec<metrics::Counter>,
    unknown: metrics::Counter,
}

impl SensorIngest {
    pub fn new(families: Vec<TopicFamily>, sensors: Vec<SensorSpec>, limits: IngestLimits) -> Self {
        Self {
            families,
            sensors: sensors
                .into_iter()
                .map(|s| (s.id.to_string(), SensorEntry::new(s)))
                .collect(),
            limits,
            unassigned: 0,
            rejected: Reject::ALL
                .iter()
                .map(|r| metrics::counter!("skynet_sensor_rejected_total", "reason" => r.as_str()))
                .collect(),
            unknown: metrics::counter!("skynet_sensor_unknown_total"),
        }
    }

    /// The topic filters to subscribe to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.families.iter().map(|f| f.pattern.as_str())
    }

    /// Validates one message. Every record is either a reading or a rejection (counted in
    /// `skynet_sensor_rejected_total{reason}`); accepted readings are counted in
    /// `skynet_sensor_readings_total{sensor}`.
    pub fn ingest(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        received_at: Instant,
    ) -> Ingested {
        let mut out = Ingested::default();
        if let Err(reason) = self.ingest_into(topic, payload, now, received_at, &mut out) {
            out.rejected.push(Rejection {
                reason,
                sensor: None,
            });
        }
        for r in &out.rejected {
            if let Some(i) = Reject::ALL.iter().position(|x| *x == r.reason) {
                self.rejected[i].increment(1);
            }
        }
        out
    }

    fn ingest_into(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        received_at: Instant,
        out: &mut Ingested,
    ) -> Result<(), Reject> {
        if payload.len() > self.limits.max_payload_bytes {
            return Err(Reject::TooLarge);
        }
        let (family, from_topic) = self
            .families
            .iter()
            .find_map(|f| topic_capture(&f.pattern, topic).map(|c| (f, c)))
            .ok_or(Reject::UnknownSensor)?;
        let topic_sensor = match family.sensor_from {
            SensorFrom::Topic => from_topic.map(str::to_string),
            SensorFrom::Payload => None,
        };
        let records = family.format.parse(payload)?;
        for (payload_sensor, record) in records {
            let sensor = topic_sensor.clone().or(payload_sensor).or_else(|| {
                record
                    .name
                    .as_deref()
                    .and_then(name_prefix)
                    .map(str::to_string)
            });
            match self.record(sensor.as_deref(), record, now, received_at) {
                Ok(reading) => out.readings.push(reading),
                Err((reason, sensor)) => out.rejected.push(Rejection { reason, sensor }),
            }
        }
        Ok(())
    }

    fn entry(&mut self, id: &str) -> Option<&mut SensorEntry> {
        if !self.sensors.contains_key(id) {
            let registrable = self.limits.unknown_sensors == UnknownSensors::Register
                && self.unassigned < MAX_UNASSIGNED
                && skynet_core::validate_id("sensor", id).is_ok();
            self.unknown.increment(1);
            if !registrable {
                return None;
            }
            self.unassigned += 1;
            tracing::info!(sensor = id, "unknown sensor registered as unassigned");
            let mut spec = SensorSpec::new(DeviceId::new(id), SensorKind::Unassigned);
            spec.quantity = String::new();
            self.sensors.insert(id.to_string(), SensorEntry::new(spec));
        }
        self.sensors.get_mut(id)
    }

    fn record(
        &mut self,
        sensor: Option<&str>,
        record: RawRecord<'_>,
        now: DateTime<Utc>,
        received_at: Instant,
    ) -> Result<SensorReading, (Reject, Option<DeviceId>)> {
        let limits = self.limits;
        let entry = sensor
            .and_then(|id| self.entry(id))
            .ok_or((Reject::UnknownSensor, None))?;
        let spec = &entry.spec;
        let fail = |reason: Reject| (reason, Some(spec.id.clone()));
        let quantity = record.name.as_deref().map(quantity_of).unwrap_or("");
        let unassigned = spec.kind == SensorKind::Unassigned;
        if !quantity.is_empty() && quantity != spec.quantity && !unassigned {
            return Err(fail(Reject::UnknownQuantity));
        }
        let value = match record.value {
            RawValue::Number(v) => v,
            RawValue::Bool(b) if spec.kind.takes_booleans() || unassigned => {
                if b {
                    100.0
                } else {
                    0.0
                }
            }
            RawValue::Bool(_) | RawValue::Text => return Err(fail(Reject::WrongType)),
        };
        if !value.is_finite() {
            return Err(fail(Reject::NotFinite));
        }
        let canonical = spec.kind.canonical_unit();
        let value = if unassigned {
            value
        } else {
            let unit: Cow<'_, str> = match (&record.unit, &spec.unit) {
                (Some(u), _) => Cow::Borrowed(u.as_ref()),
                (None, Some(u)) => Cow::Borrowed(u.as_str()),
                (None, None) => Cow::Borrowed(canonical),
            };
            convert(value, &unit, canonical).ok_or_else(|| fail(Reject::UnknownUnit))?
        };
        if !value.is_finite() {
            return Err(fail(Reject::NotFinite));
        }
        if value < spec.range.0 || value > spec.range.1 {
            return Err(fail(Reject::OutOfRange));
        }
        let at = match record.time {
            None => now,
            Some(RawTime::Relative(s)) => now + seconds(s).ok_or_else(|| fail(Reject::TooOld))?,
            Some(RawTime::Absolute(s)) => {
                let micros = s * 1e6;
                // Outside chrono's range (and far outside any believable time).
                if micros.abs() >= 8.0e18 {
                    return Err(fail(if s < 0.0 {
                        Reject::TooOld
                    } else {
                        Reject::FutureTime
                    }));
                }
                DateTime::<Utc>::from_timestamp_micros(micros as i64)
                    .ok_or_else(|| fail(Reject::TooOld))?
            }
        };
        if at > now + limits.max_future {
            return Err(fail(Reject::FutureTime));
        }
        if at < now - limits.max_age {
            return Err(fail(Reject::TooOld));
        }
        if entry.recent.contains(&at) {
            return Err(fail(Reject::Duplicate));
        }
        if entry.recent.back().is_some_and(|last| at < *last) {
            return Err(fail(Reject::OutOfOrder));
        }
        if entry.recent.len() == RECENT_TIMES {
            entry.recent.pop_front();
        }
        entry.recent.push_back(at);
        entry.readings.increment(1);
        entry.value.set(value);
        Ok(SensorReading {
            sensor: entry.spec.id.clone(),
            quantity: entry.quantity.clone(),
            value,
            unit: canonical,
            at,
            received_at,
        })
    }
}

/// Seconds as a chrono duration, when it is one (finite, within a century).
fn seconds(s: f64) -> Option<chrono::Duration> {
    (s.is_finite() && s.abs() < 3.2e9).then(|| chrono::Duration::microseconds((s * 1e6) as i64))
}

/// `co` of `gas-07/co`, `temp` of `urn:dev:ow:10e2:temp`, the whole of a name without a
/// separator.
fn quantity_of(name: &str) -> &str {
    name.rsplit(['/', ':']).next().unwrap_or(name)
}

/// `gas-07` of `gas-07/co`: the sensor a SenML name names, when the topic does not.
fn name_prefix(name: &str) -> Option<&str> {
    let cut = name.rfind(['/', ':'])?;
    name[..cut]
        .trim_end_matches(['/', ':'])
        .rsplit(['/', ':'])
        .next()
        .filter(|s| !s.is_empty())
}

/// Matches an MQTT topic against a filter; on a match, returns the level the filter's first
/// wildcard matched (`None` inside when it has none).
pub fn topic_capture<'t>(filter: &str, topic: &'t str) -> Option<Option<&'t str>> {
    let mut captured = None;
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        if part == "#" {
            let rest = levels.next();
            return Some(captured.or(rest));
        }
        let level = levels.next()?;
        match part {
            "+" => {
                if captured.is_none() {
                    captured = Some(level);
                }
            }
            exact if exact == level => {}
            _ => return None,
        }
    }
    levels.next().is_none().then_some(captured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::formats::{JsonMapping, SenmlParser};

    fn gas_ingest(unknown: UnknownSensors) -> SensorIngest {
        SensorIngest::new(
            vec![TopicFamily {
                pattern: "skynet/sensors/+".into(),
                format: Arc::new(SenmlParser),
                sensor_from: SensorFrom::Topic,
            }],
            vec![SensorSpec::new(DeviceId::new("gas-07"), SensorKind::GasCo)],
            IngestLimits {
                unknown_sensors: unknown,
                ..IngestLimits::default()
            },
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn reasons(i: &Ingested) -> Vec<&'static str> {
        i.rejected.iter().map(|r| r.reason.as_str()).collect()
    }

    #[test]
    fn topics_capture_their_first_wildcard() {
        assert_eq!(
            topic_capture("skynet/sensors/+", "skynet/sensors/gas-07"),
            Some(Some("gas-07"))
        );
        assert_eq!(
            topic_capture("skynet/sensors/+", "skynet/sensors/gas-07/x"),
            None
        );
        assert_eq!(topic_capture("a/#", "a/b/c"), Some(Some("b")));
        assert_eq!(topic_capture("a/+/x/+", "a/s1/x/s2"), Some(Some("s1")));
        assert_eq!(topic_capture("a/b", "a/b"), Some(None));
        assert_eq!(topic_capture("a/b", "a/c"), None);
    }

    #[test]
    fn the_city_gas_sensor_reads_in_ppm() {
        let mut ingest = gas_ingest(UnknownSensors::Reject);
        let payload = br#"[{"bn":"gas-07/","n":"co","u":"ppm","v":61.5}]"#;
        let got = ingest.ingest("skynet/sensors/gas-07", payload, now(), Instant::now());
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        let r = &got.readings[0];
        assert_eq!(
            (r.sensor.as_str(), &*r.quantity, r.value, r.unit),
            ("gas-07", "co", 61.5, "ppm")
        );
        assert_eq!(r.at, now());
        // ppb converts; a temperature unit on a gas sensor does not.
        let got = ingest.ingest(
            "skynet/sensors/gas-07",
            br#"[{"n":"gas-07/co","u":"ppb","v":3000,"t":1}]"#,
            now(),
            Instant::now(),
        );
        assert_eq!(got.readings[0].value, 3.0);
        let got = ingest.ingest(
            "skynet/sensors/gas-07",
            br#"[{"n":"co","u":"Cel","v":3}]"#,
            now(),
            Instant::now(),
        );
        assert_eq!(reasons(&got), vec!["unknown_unit"]);
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let mut ingest = gas_ingest(UnknownSensors::Reject);
        let t = now().timestamp();
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "malformed_json"),
            (r#"[{"n":"co","v":"5"}]"#.into(), "wrong_type"),
            (r#"[{"n":"co"}]"#.into(), "missing_value"),
            (r#"[{"n":"co","v":-3}]"#.into(), "out_of_range"),
            (r#"[{"n":"co","v":1e6}]"#.into(), "out_of_range"),
            (r#"[{"bv":1e308,"n":"co","v":1e308}]"#.into(), "not_finite"),
            (
                format!(r#"[{{"n":"co","v":5,"t":{}}}]"#, t + 3600),
                "future_time",
            ),
            (
                format!(r#"[{{"n":"co","v":5,"t":{}}}]"#, t - 90_000),
                "too_old",
            ),
            (r#"[{"n":"co","v":5,"u":"furlong"}]"#.into(), "unknown_unit"),
            (
                r#"[{"n":"gas-07/temperature","v":5}]"#.into(),
                "unknown_quantity",
            ),
            (r#"[{"n":"co","vb":true}]"#.into(), "wrong_type"),
            (r#"[{"n":"co","vs":"high"}]"#.into(), "wrong_type"),
            (r#"[{"n":"co","v":5,"t":1e300}]"#.to_string(), "future_time"),
        ];
        for (payload, reason) in cases {
            let got = ingest.ingest(
                "skynet/sensors/gas-07",
                payload.as_bytes(),
                now(),
                Instant::now(),
            );
            assert_eq!(reasons(&got), vec![reason], "{payload}");
            assert!(got.readings.is_empty());
        }
        let big = vec![b' '; 70_000];
        assert_eq!(
            reasons(&ingest.ingest("skynet/sensors/gas-07", &big, now(), Instant::now())),
            vec!["too_large"]
        );
        let got = ingest.ingest(
            "skynet/sensors/nobody",
            br#"[{"n":"co","v":1}]"#,
            now(),
            Instant::now(),
        );
        assert_eq!(reasons(&got), vec!["unknown_sensor"]);
    }

    #[test]
    fn duplicates_and_reordering_are_refused() {
        let mut ingest = gas_ingest(UnknownSensors::Reject);
        let t = now().timestamp();
        let at = |dt: i64| format!(r#"[{{"n":"co","v":5,"t":{}}}]"#, t + dt);
        let topic = "skynet/sensors/gas-07";
        assert!(
            ingest
                .ingest(topic, at(-10).as_bytes(), now(), Instant::now())
                .rejected
                .is_empty()
        );
        assert_eq!(
            reasons(&ingest.ingest(topic, at(-10).as_bytes(), now(), Instant::now())),
            vec!["duplicate"]
        );
        assert_eq!(
            reasons(&ingest.ingest(topic, at(-20).as_bytes(), now(), Instant::now())),
            vec!["out_of_order"]
        );
        assert!(
            ingest
                .ingest(topic, at(-5).as_bytes(), now(), Instant::now())
                .rejected
                .is_empty()
        );
        // A redelivery of an older message is a duplicate, not out of order.
        assert_eq!(
            reasons(&ingest.ingest(topic, at(-10).as_bytes(), now(), Instant::now())),
            vec!["duplicate"]
        );
    }

    #[test]
    fn a_pack_keeps_its_good_records() {
        let mut ingest = gas_ingest(UnknownSensors::Reject);
        let t = now().timestamp();
        let pack = format!(
            r#"[{{"bn":"gas-07/","bt":{t},"n":"co","v":1,"t":-3}},{{"n":"co","v":-9,"t":-2}},{{"n":"co","v":3,"t":-1}}]"#
        );
        let got = ingest.ingest(
            "skynet/sensors/gas-07",
            pack.as_bytes(),
            now(),
            Instant::now(),
        );
        assert_eq!(got.readings.len(), 2);
        assert_eq!(reasons(&got), vec!["out_of_range"]);
    }

    #[test]
    fn unknown_sensors_can_be_registered_unassigned() {
        let mut ingest = gas_ingest(UnknownSensors::Register);
        let got = ingest.ingest(
            "skynet/sensors/temp-99",
            br#"[{"n":"temp","u":"Cel","v":21.5}]"#,
            now(),
            Instant::now(),
        );
        assert_eq!(got.readings.len(), 1, "{:?}", got.rejected);
        assert_eq!(got.readings[0].sensor.as_str(), "temp-99");
        // An id that could not be a metric label is still refused.
        let got = ingest.ingest(
            "skynet/sensors/bad id",
            br#"[{"v":1}]"#,
            now(),
            Instant::now(),
        );
        assert_eq!(reasons(&got), vec!["unknown_sensor"]);
    }

    #[test]
    fn vendor_json_names_its_sensor_in_the_payload() {
        let mut ingest = SensorIngest::new(
            vec![TopicFamily {
                pattern: "vendor/acme/telemetry".into(),
                format: Arc::new(JsonMapping {
                    value: "/level_cm".into(),
                    sensor: Some("/dev".into()),
                    fixed_unit: Some("cm".into()),
                    time: Some("/ts".into()),
                    ..JsonMapping::default()
                }),
                sensor_from: SensorFrom::Payload,
            }],
            vec![SensorSpec::new(
                DeviceId::new("water-02"),
                SensorKind::WaterLevel,
            )],
            IngestLimits::default(),
        );
        let payload = format!(
            r#"{{"dev":"water-02","level_cm":235,"ts":{}}}"#,
            now().timestamp_millis()
        );
        let got = ingest.ingest(
            "vendor/acme/telemetry",
            payload.as_bytes(),
            now(),
            Instant::now(),
        );
        assert_eq!(got.readings[0].value, 2.35);
        assert_eq!(got.readings[0].unit, "m");
    }

    #[test]
    fn senml_names_the_sensor_when_the_topic_does_not() {
        assert_eq!(name_prefix("gas-07/co"), Some("gas-07"));
        assert_eq!(name_prefix("urn:dev:ow:10e2:temp"), Some("10e2"));
        assert_eq!(name_prefix("co"), None);
        assert_eq!(quantity_of("gas-07/co"), "co");
        assert_eq!(quantity_of("gas-07/"), "");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn check_outcome(got: &Ingested) {
            for r in &got.readings {
                assert!(
                    r.value.is_finite() && (0.0..=10_000.0).contains(&r.value),
                    "{r:?}"
                );
            }
            for r in &got.rejected {
                assert!(Reject::ALL.contains(&r.reason));
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            /// Any bytes at all: no panic, and every outcome is a reading or a reason.
            #[test]
            fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut ingest = gas_ingest(UnknownSensors::Register);
                let got = ingest.ingest("skynet/sensors/gas-07", &payload, now(), Instant::now());
                check_outcome(&got);
                prop_assert!(!got.readings.is_empty() || !got.rejected.is_empty());
            }

            /// A valid pack damaged anywhere (a byte changed, cut short, or text inserted).
            #[test]
            fn damaged_senml_is_refused_or_still_valid(
                value in -1e4f64..1e5,
                at in 0usize..200,
                byte in any::<u8>(),
                how in 0u8..3,
            ) {
                let valid = format!(r#"[{{"bn":"gas-07/","bt":{},"bu":"ppm","n":"co","v":{value}}},{{"n":"co","t":1,"v":{value}}}]"#, now().timestamp());
                let mut payload = valid.into_bytes();
                let at = at.min(payload.len() - 1);
                match how {
                    0 => payload[at] = byte,
                    1 => payload.truncate(at),
                    _ => payload.splice(at..at, [byte, b'"', b'{']).for_each(drop),
                }
                let mut ingest = gas_ingest(UnknownSensors::Reject);
                let got = ingest.ingest("skynet/sensors/gas-07", &payload, now(), Instant::now());
                check_outcome(&got);
            }

            /// Values of every size and sign, units of every kind, times anywhere: each is a
            /// reading exactly when it is valid, and otherwise refused with the right reason.
            #[test]
            fn each_record_gets_the_right_verdict(
                value in prop_oneof![-1e6f64..1e6, Just(f64::MAX), Just(-0.0)],
                unit in prop_oneof![Just("ppm"), Just("ppb"), Just("Cel"), Just("%RH"), Just("bogus")],
                dt in prop_oneof![-200_000i64..-86_401, -86_400i64..30, 31i64..1_000_000],
            ) {
                let mut ingest = gas_ingest(UnknownSensors::Reject);
                let payload = format!(r#"[{{"n":"co","u":"{unit}","v":{value:e},"bt":{}}}]"#, now().timestamp() + dt);
                let got = ingest.ingest("skynet/sensors/gas-07", payload.as_bytes(), now(), Instant::now());
                let ppm = match unit { "ppm" => Some(value), "ppb" => Some(value / 1000.0), _ => None };
                let expected = match ppm {
                    None => Some(Reject::UnknownUnit),
                    Some(v) if !(0.0..=10_000.0).contains(&v) => Some(Reject::OutOfRange),
                    Some(_) if dt > 30 => Some(Reject::FutureTime),
                    Some(_) if dt < -86_400 => Some(Reject::TooOld),
                    Some(_) => None,
                };
                match expected {
                    None => prop_assert_eq!(got.readings.len(), 1, "{:?}", got.rejected),
                    Some(reason) => prop_assert_eq!(got.rejected.iter().map(|r| r.reason).collect::<Vec<_>>(), vec![reason]),
                }
            }
        }
    }
}
