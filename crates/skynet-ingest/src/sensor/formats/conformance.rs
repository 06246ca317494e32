//! The suite every payload format kind passes, run on each registered kind's example table.
//!
//! A kind gets it by registering: the crate's tests run it over [`register`](super::register)'s
//! kinds, and a kind kept elsewhere (`examples/`) calls [`check_format_kind`] on itself. The
//! promises are the ones the sensor feed relies on:
//! - the example validates, whether the topic names the sensor or not, and the kind refuses
//!   keys it does not know;
//! - a well-formed payload (the parser's own [`sample`](super::PayloadParser::sample)) yields
//!   records;
//! - **nothing panics** on the fuzz seeds (`fuzz/corpus/sensor_payloads/`), on malformed
//!   bytes, or on any prefix or one-byte change of those and of the sample;
//! - **refusals are counted**: every refusal is a [`Reject`] of [`Reject::ALL`], the
//!   `reason` label of `skynet_sensor_rejected_total`.

use std::path::Path;

use skynet_core::{Kind, TableError};

use super::{FormatContext, PayloadFormatFamily, PayloadParser};
use crate::sensor::SensorFrom;
use crate::sensor::payload::Reject;

/// The fuzz target's seed payloads, when the source tree is at hand (an empty list in a
/// packaged crate).
pub fn fuzz_seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sensor_payloads");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Bytes no format reads: not JSON, not UTF-8, the wrong shape, too deep.
pub fn malformed_payloads() -> Vec<Vec<u8>> {
    let mut payloads: Vec<Vec<u8>> = [
        &b""[..],
        b" ",
        b"{",
        b"[",
        b"}",
        b"\xff\xfe\x00",
        b"null",
        b"42",
        b"-1e999",
        b"\"text\"",
        b"true",
        b"{}",
        b"[]",
        b"[{}]",
        b"[null]",
        b"{\"v\":{\"v\":[]}}",
        b"[{\"n\":\"co\",\"v\":\"NaN\"}]",
        b"{\"data\":{\"co\":1e999}}",
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    // Deeper than any parser should recurse.
    payloads.push([b'['; 10_000].to_vec());
    payloads.push(b"{\"a\":".repeat(5_000));
    payloads
}

fn check_parse(kind: &str, parser: &dyn PayloadParser, payload: &[u8]) {
    if let Err(reason) = parser.parse(payload) {
        assert!(
            Reject::ALL.contains(&reason),
            "payload format `{kind}` refused {:?} with `{reason}`, which is not counted",
            String::from_utf8_lossy(payload)
        );
    }
}

/// Runs the payload format suite on `kind`, panicking with what broke.
pub fn check_format_kind(kind: Kind<PayloadFormatFamily>) {
    let name = kind.name;
    let mut parsers = Vec::new();
    for sensor_from in [SensorFrom::Topic, SensorFrom::Payload] {
        let cx = FormatContext { sensor_from };
        match kind.parse_example(&cx) {
            Ok(parser) => parsers.push(parser),
            Err(e) => panic!(
                "payload format `{name}`: its example does not validate ({sensor_from:?}): {e}"
            ),
        }
        let mut unknown: toml::Table = toml::from_str(kind.example)
            .unwrap_or_else(|e| panic!("payload format `{name}`: its example is not TOML: {e}"));
        unknown.insert("no_such_key".into(), toml::Value::Integer(1));
        assert!(
            matches!((kind.parse)(unknown, &cx), Err(TableError::Serde(_))),
            "payload format `{name}` accepts a key it does not know"
        );
    }

    let mut inputs = fuzz_seeds();
    inputs.extend(malformed_payloads());
    for parser in &parsers {
        let sample = parser.sample();
        match parser.parse(&sample) {
            Ok(records) => assert!(
                !records.is_empty(),
                "payload format `{name}`: its sample yields no record"
            ),
            Err(reason) => panic!(
                "payload format `{name}` refuses its own sample {:?}: `{reason}`",
                String::from_utf8_lossy(&sample)
            ),
        }
        inputs.push(sample);
    }

    for parser in &parsers {
        for input in &inputs {
            check_parse(name, parser.as_ref(), input);
            // Cut short anywhere, and one byte changed anywhere (to a byte that matters to JSON).
            for cut in 0..input.len().min(512) {
                check_parse(name, parser.as_ref(), &input[..cut]);
                for byte in [b'"', b'{', b']', b'\\', 0xff] {
                    let mut damaged = input.clone();
                    damaged[cut] = byte;
                    check_parse(name, parser.as_ref(), &damaged);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use skynet_core::Registry;

    use super::*;

    #[test]
    fn every_registered_payload_format_passes_the_suite() {
        let mut registry = Registry::default();
        super::super::register(&mut registry);
        // SenML is the default `format`, so the first.
        assert_eq!(registry.names::<PayloadFormatFamily>()[0], "senml");
        for kind in registry.kinds::<PayloadFormatFamily>() {
            check_format_kind(*kind);
        }
    }

    #[test]
    fn the_fuzz_seeds_are_found() {
        assert!(!fuzz_seeds().is_empty());
    }
}
