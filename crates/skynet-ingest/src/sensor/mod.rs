//! Sensor ingest: MQTT feeds (SenML or mapped vendor JSON) into validated, unit-normalised
//! [`SensorReading`](skynet_core::SensorReading)s.
//!
//! ```text
//!  broker ─► MqttClient (tokio) ─► bounded queue ─► SensorIngest (registry, validation)
//!                 ▲                                   │ refused payloads
//!                 └──────── DeadLetters ◄─────────────┘
//! ```

mod broker;
mod ingest;
mod mqtt;
mod payload;
mod units;

pub use broker::{
    BrokerUrl, MqttConnection, MqttConnectionKeys, MqttError, check_client_id, check_topic,
};
pub use ingest::{
    IngestLimits, Ingested, MAX_UNASSIGNED, PayloadFormat, Rejection, SensorFrom, SensorIngest,
    SensorSpec, TopicFamily, UnknownSensors, topic_capture,
};
pub use mqtt::{
    DEFAULT_DEADLETTER_TOPIC, DeadLetters, MqttClient, MqttConfig, MqttMessage, MqttSettings,
    TopicSettings,
};
pub use payload::{
    JsonMapping, MappedRecord, RawRecord, RawTime, RawValue, Reject, TimeFormat, parse_mapped,
    parse_senml,
};
pub use units::{SensorKind, convert, is_known_unit};
