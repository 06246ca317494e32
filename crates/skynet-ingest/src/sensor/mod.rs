//! Sensor ingest: MQTT feeds (SenML or mapped vendor JSON) into validated, unit-normalised
//! [`SensorReading`](skynet_core::SensorReading)s.
//!
//! ```text
//!  broker ─► MqttClient (tokio) ─► bounded queue ─► SensorIngest (registry, validation)
//!                 ▲                                   │ refused payloads
//!                 └──────── DeadLetters ◄─────────────┘
//! ```

pub mod formats;
mod ingest;
mod mqtt;
mod payload;
mod registration;
mod units;

// The connection code lives in skynet-mqtt (shared with the MQTT sink); re-exported here so
// the sensor feed's paths stay as they were.
pub use formats::{
    FormatContext, JsonFormat, JsonMapping, MappedRecord, ParsedRecord, PayloadFormatFamily,
    PayloadParser, SenmlFormat, SenmlParser, TimeFormat, parse_mapped, parse_senml,
};
pub use ingest::{
    IngestLimits, Ingested, MAX_UNASSIGNED, Rejection, SensorFrom, SensorIngest, SensorSpec,
    TopicFamily, UnknownSensors, topic_capture,
};
pub use mqtt::{
    AckSender, DEFAULT_DEADLETTER_TOPIC, DeadLetters, MqttClient, MqttConfig, MqttMessage,
    MqttSettings, PendingAck, ReadingAcks, TopicSettings,
};
pub use payload::{RawRecord, RawTime, RawValue, Reject};
pub use registration::{SensorSettings, ValidSensor};
pub use skynet_mqtt::{
    BrokerUrl, MqttConnection, MqttConnectionKeys, MqttError, check_client_id, check_topic,
};
pub use units::{SensorKind, convert, is_known_unit};
