//! The sensor payload parsers and validation, on any bytes: SenML (as a registered sensor's
//! topic, and as a topic that does not name the sensor) and vendor JSON through pointers.
//! Nothing may panic; every reading must be finite and within its sensor's range; every
//! record must come out as a reading or a rejection.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use skynet_core::DeviceId;
use skynet_ingest::sensor::{
    IngestLimits, JsonMapping, SenmlParser, SensorFrom, SensorIngest, SensorKind, SensorSpec,
    TimeFormat, TopicFamily, UnknownSensors, parse_mapped, parse_senml,
};

fn ingest() -> SensorIngest {
    let families = vec![
        TopicFamily {
            pattern: "s/+".into(),
            format: Arc::new(SenmlParser),
            sensor_from: SensorFrom::Topic,
        },
        TopicFamily {
            pattern: "gw".into(),
            format: Arc::new(SenmlParser),
            sensor_from: SensorFrom::Payload,
        },
        TopicFamily {
            pattern: "v/+".into(),
            format: Arc::new(JsonMapping {
                records: Some("/r".into()),
                value: "/v".into(),
                time: Some("/t".into()),
                time_format: TimeFormat::Auto,
                unit: Some("/u".into()),
                fixed_unit: None,
                name: Some("/n".into()),
                sensor: Some("/s".into()),
            }),
            sensor_from: SensorFrom::Topic,
        },
    ];
    let sensors = vec![
        SensorSpec::new(DeviceId::new("gas"), SensorKind::GasCo),
        SensorSpec::new(DeviceId::new("smoke"), SensorKind::Smoke),
        SensorSpec::new(DeviceId::new("river"), SensorKind::WaterLevel),
    ];
    SensorIngest::new(
        families,
        sensors,
        IngestLimits {
            unknown_sensors: UnknownSensors::Register,
            ..IngestLimits::default()
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_senml(data);
    let _ = parse_mapped(
        data,
        &JsonMapping {
            value: "/a/0/b".into(),
            time: Some("/t".into()),
            ..JsonMapping::default()
        },
    );
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let mut ingest = ingest();
    for topic in ["s/gas", "s/smoke", "gw", "v/river", "s/unknown", "elsewhere"] {
        let got = ingest.ingest(topic, data, now, Instant::now());
        for r in &got.readings {
            assert!(r.value.is_finite(), "{r:?}");
        }
        assert!(!got.readings.is_empty() || !got.rejected.is_empty());
    }
});
