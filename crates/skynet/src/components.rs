//! The one registry of component kinds, Vector style.
//!
//! Each kind's config type lives in its stage crate with its validation and `build()`; this
//! file only maps the `kind` a config names to that type. Adding a sink, rule or source kind
//! is its own module plus one line in [`registry`].

use std::fmt::Debug;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use skynet_core::{ConfigContext, DeviceId, FieldError, Watermark};
use skynet_detect::{
    CrowdConfig, DwellConfig, LineCrossingConfig, Rule, RuleConfig, RuleContext,
    StationaryObjectConfig, ZoneIntrusionConfig,
};
use skynet_emit::{
    EmitError, IncidentSink, JsonLinesSinkConfig, MqttSinkConfig, NatsSinkConfig, SinkConfig,
    StdoutSinkConfig, WebhookSinkConfig,
};
use skynet_ingest::{
    FrameDelivery, FrameSource, GstSourceConfig, IngestError, RetryPolicy, SourceConfig,
};

/// Every kind skynet knows.
pub fn registry() -> Registry {
    Registry::default()
        .with_source::<GstSourceConfig>()
        .with_rule::<ZoneIntrusionConfig>()
        .with_rule::<DwellConfig>()
        .with_rule::<LineCrossingConfig>()
        .with_rule::<CrowdConfig>()
        .with_rule::<StationaryObjectConfig>()
        .with_sink::<JsonLinesSinkConfig>()
        .with_sink::<StdoutSinkConfig>()
        .with_sink::<NatsSinkConfig>()
        .with_sink::<WebhookSinkConfig>()
        .with_sink::<MqttSinkConfig>()
}

/// Why a component's table was refused.
#[derive(Debug)]
pub enum ParseError {
    /// Wrong type, unknown key, missing key.
    Serde(toml::de::Error),
    /// The component's own validation.
    Field(FieldError),
}

/// A validated source config, whatever its kind.
pub trait SourceBuilder: Debug + Send + Sync {
    fn is_live(&self) -> bool;
    fn display_uri(&self) -> String;
    fn retry_policy(&self) -> RetryPolicy;
    fn watermark(&self) -> Watermark;
    fn build(
        &self,
        camera: DeviceId,
        delivery: &FrameDelivery,
    ) -> Result<Box<dyn FrameSource>, IngestError>;
}

impl<T: SourceConfig> SourceBuilder for T {
    fn is_live(&self) -> bool {
        SourceConfig::is_live(self)
    }
    fn display_uri(&self) -> String {
        SourceConfig::display_uri(self)
    }
    fn retry_policy(&self) -> RetryPolicy {
        SourceConfig::retry_policy(self)
    }
    fn watermark(&self) -> Watermark {
        SourceConfig::watermark(self)
    }
    fn build(
        &self,
        camera: DeviceId,
        delivery: &FrameDelivery,
    ) -> Result<Box<dyn FrameSource>, IngestError> {
        SourceConfig::build(self, camera, delivery)
    }
}

/// A validated rule config, whatever its kind.
pub trait RuleBuilder: Debug + Send + Sync {
    fn name(&self) -> &str;
    fn build(&self) -> Box<dyn Rule>;
}

impl<T: RuleConfig> RuleBuilder for T {
    fn name(&self) -> &str {
        RuleConfig::name(self)
    }
    fn build(&self) -> Box<dyn Rule> {
        RuleConfig::build(self)
    }
}

/// A validated sink config, whatever its kind.
pub trait SinkBuilder: Debug + Send + Sync {
    fn build(&self, name: &str) -> Result<Box<dyn IncidentSink>, EmitError>;
}

impl<T: SinkConfig> SinkBuilder for T {
    fn build(&self, name: &str) -> Result<Box<dyn IncidentSink>, EmitError> {
        SinkConfig::build(self, name)
    }
}

type SourceParser = fn(toml::Table, &ConfigContext) -> Result<Arc<dyn SourceBuilder>, ParseError>;
type RuleParser = fn(toml::Table, &RuleContext<'_>) -> Result<Arc<dyn RuleBuilder>, ParseError>;
type SinkParser = fn(toml::Table, &ConfigContext) -> Result<Arc<dyn SinkBuilder>, ParseError>;

#[derive(Default)]
pub struct Registry {
    sources: Vec<(&'static str, SourceParser)>,
    rules: Vec<(&'static str, RuleParser)>,
    sinks: Vec<(&'static str, SinkParser)>,
}

fn deserialize<T: DeserializeOwned>(table: toml::Table) -> Result<T, ParseError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(ParseError::Serde)
}

impl Registry {
    pub fn with_source<T: SourceConfig>(mut self) -> Self {
        self.sources.push((T::KIND, |table, cx| {
            let mut config: T = deserialize(table)?;
            config.validate(cx).map_err(ParseError::Field)?;
            Ok(Arc::new(config))
        }));
        self
    }

    pub fn with_rule<T: RuleConfig>(mut self) -> Self {
        self.rules.push((T::KIND, |table, cx| {
            let mut config: T = deserialize(table)?;
            config.validate(cx).map_err(ParseError::Field)?;
            Ok(Arc::new(config))
        }));
        self
    }

    pub fn with_sink<T: SinkConfig>(mut self) -> Self {
        self.sinks.push((T::KIND, |table, cx| {
            let mut config: T = deserialize(table)?;
            config.validate(cx).map_err(ParseError::Field)?;
            Ok(Arc::new(config))
        }));
        self
    }

    pub fn default_source_kind(&self) -> &'static str {
        self.sources.first().map_or("gstreamer", |(k, _)| k)
    }

    pub fn source(&self, kind: &str) -> Option<(&'static str, SourceParser)> {
        self.sources.iter().find(|(k, _)| *k == kind).copied()
    }

    pub fn rule(&self, kind: &str) -> Option<(&'static str, RuleParser)> {
        self.rules.iter().find(|(k, _)| *k == kind).copied()
    }

    pub fn sink(&self, kind: &str) -> Option<(&'static str, SinkParser)> {
        self.sinks.iter().find(|(k, _)| *k == kind).copied()
    }

    pub fn source_kinds(&self) -> Vec<&'static str> {
        self.sources.iter().map(|(k, _)| *k).collect()
    }

    pub fn rule_kinds(&self) -> Vec<&'static str> {
        self.rules.iter().map(|(k, _)| *k).collect()
    }

    pub fn sink_kinds(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|(k, _)| *k).collect()
    }
}
