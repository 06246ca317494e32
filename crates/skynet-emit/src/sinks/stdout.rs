//! The standard output sink.

use skynet_core::Component;
use skynet_core::{ConfigContext, FieldError};
use tokio::io::AsyncWriteExt;

use super::{BuildSink, IncidentSink, SinkBuildContext, SinkFamily, lines};
use crate::{EmitError, StoredEvent};

/// `kind = "stdout"`: no settings.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

impl Component<SinkFamily> for StdoutSinkConfig {
    const KIND: &'static str = "stdout";
    const EXAMPLE: &'static str = "";
    type Validated = Self;

    fn validate(self, _cx: &ConfigContext) -> Result<Self, FieldError> {
        Ok(self)
    }
}

impl BuildSink for StdoutSinkConfig {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        let name = cx.name;
        Ok(Box::new(StdoutSink::new(name)))
    }
}

/// Prints one CloudEvent per line on standard output.
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

#[async_trait::async_trait]
impl IncidentSink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        // tokio's stdout writes on a blocking-pool thread: a pipe nobody reads stalls this
        // task only, not a runtime worker and not the other sinks.
        let mut out = tokio::io::stdout();
        let buf = lines(batch);
        let result = match out.write_all(&buf).await {
            // The write only hands the bytes over; flush waits until they are written and
            // reports the error if they were not.
            Ok(()) => out.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|source| EmitError::SinkIo {
            sink: self.name.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn config_takes_no_settings_and_builds_a_sink() {
        assert_eq!(StdoutSinkConfig::KIND, "stdout");
        let config: StdoutSinkConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        let cx = ConfigContext::new(std::path::Path::new("skynet.toml"));
        let config = config.validate(&cx).unwrap();
        assert!(
            serde_json::from_value::<StdoutSinkConfig>(serde_json::json!({"path": "x"})).is_err()
        );
        let mut sink = config.build(&SinkBuildContext { name: "out" }).unwrap();
        assert_eq!(sink.name(), "out");
        // An empty batch writes nothing and still flushes.
        sink.deliver(&[]).await.unwrap();
    }
}
